// Runs question test cases the way the page's workers do, for tests/test_questions_node.py.
//
// Reads JSON lines on stdin, {"language": "python"|"javascript", "code", "function", "cases"},
// and answers each with one JSON line: {"results": [...], "output": "..."} (the list the worker
// sends in run_end, and what the code printed), or {"failed": "ErrorName: message"} when the code
// itself did not run (a syntax error, an exception at top level). Python runs in Pyodide, loaded
// once from vendor/pyodide, through ui/runner/harness.py; JavaScript through ui/runner/harness.js.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const pyodideDir = path.join(root, "vendor", "pyodide", "node_modules", "pyodide");
const harnessSource = readFileSync(path.join(root, "ui", "runner", "harness.py"), "utf8");
const { runCases } = await import(pathToFileURL(path.join(root, "ui", "runner", "harness.js")).href);

let output = [];
let pyodide = null;

async function python() {
  if (pyodide === null) {
    const { loadPyodide } = await import(pathToFileURL(path.join(pyodideDir, "pyodide.mjs")).href);
    pyodide = await loadPyodide({
      indexURL: pyodideDir + path.sep,
      stdout: (line) => output.push(line + "\n"),
      stderr: (line) => output.push(line + "\n"),
    });
  }
  return pyodide;
}

async function runPython(request) {
  const py = await python();
  // The code runs as a script in a namespace of its own; the harness adds only run_cases to it.
  const namespace = py.globals.get("dict")();
  try {
    namespace.set("__name__", "__main__");
    py.runPython(request.code, { globals: namespace, filename: "<candidate>" });
    py.runPython(harnessSource, { globals: namespace, filename: "<harness>" });
    const run = namespace.get("run_cases");
    try {
      return JSON.parse(run(namespace, request.function, JSON.stringify(request.cases)));
    } finally {
      run.destroy();
    }
  } finally {
    namespace.destroy();
  }
}

function runJavaScript(request) {
  const name = request.function;
  const log = (...values) => output.push(values.map(String).join(" ") + "\n");
  const saved = { log: console.log, error: console.error, warn: console.warn, info: console.info };
  Object.assign(console, { log, error: log, warn: log, info: log });
  try {
    // A top-level function declaration in the code is in scope for the return statement.
    const fn = new Function(`${request.code}\nreturn typeof ${name} === "function" ? ${name} : undefined;`)();
    return runCases(fn, request.cases, name);
  } finally {
    Object.assign(console, saved);
  }
}

function failure(error) {
  if (error?.type && error?.message) {
    // A PythonError's message is the whole traceback; its last line names the exception.
    return error.message.trim().split("\n").at(-1).slice(0, 2000);
  }
  const text = error?.name && error?.message ? `${error.name}: ${error.message}` : String(error);
  return text.slice(0, 2000);
}

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) {
    continue;
  }
  const request = JSON.parse(line);
  output = [];
  let answer;
  try {
    const results = request.language === "python" ? await runPython(request) : runJavaScript(request);
    answer = { results, output: output.join("") };
  } catch (error) {
    answer = { failed: failure(error), output: output.join("") };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
