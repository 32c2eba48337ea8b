// Runs question test cases for tests/test_questions_node.py, the way the page's workers do where
// it matters to the results:
//
// - Python runs through the workers' own program runner (RUNNER of ui/runner/python_runner.js:
//   the code compiled as main.py in a namespace of its own, then ui/runner/harness.py in another)
//   in Pyodide from vendor/pyodide. Unlike the page, one interpreter, loaded once, runs every
//   request (the page starts a fresh worker per run), and nothing is locked down (sandbox.js),
//   timed or capped.
// - JavaScript runs as the body of an async function, the function found as worker_js.js finds
//   it (a declaration, const/let, or a global property), then ui/runner/harness.js's runCases.
//   Unlike the page, console output is String(value) joined with spaces (not worker_js.js's
//   format), and a missing function is an error per case (the worker fails the whole run).
//
// Reads JSON lines on stdin, {"language": "python"|"javascript", "code", "function", "cases"},
// and answers each with one JSON line: {"results": [...], "output": "..."} (the list the worker
// sends in run_end, and what the code printed), or {"failed": "ErrorName: message"} when the code
// itself did not run (a syntax error, an exception at top level).

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const runnerDir = path.join(root, "ui", "runner");
const pyodideDir = path.join(root, "vendor", "pyodide", "node_modules", "pyodide");
const harnessSource = readFileSync(path.join(runnerDir, "harness.py"), "utf8");
const { runCases } = await import(pathToFileURL(path.join(runnerDir, "harness.js")).href);
const { RUNNER } = await import(pathToFileURL(path.join(runnerDir, "python_runner.js")).href);

const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
let output = [];
let errors = [];
let runner = null;

async function python() {
  if (runner === null) {
    const { loadPyodide } = await import(pathToFileURL(path.join(pyodideDir, "pyodide.mjs")).href);
    const pyodide = await loadPyodide({
      indexURL: pyodideDir + path.sep,
      stdout: (line) => output.push(line + "\n"),
      stderr: (line) => errors.push(line + "\n"),
    });
    runner = pyodide.runPython(RUNNER);
  }
  return runner;
}

async function runPython(request) {
  const run = await python();
  const outcome = await run(request.code, request.function, JSON.stringify(request.cases), harnessSource);
  const [status, json] = outcome.toJs();
  outcome.destroy();
  if (status !== "ok") {
    // The traceback's last line names the exception.
    const lines = errors.join("").trim().split("\n");
    throw { pythonError: lines.at(-1) || "the code did not run" };
  }
  return JSON.parse(json);
}

async function runJavaScript(request) {
  const name = request.function;
  const log = (...values) => output.push(values.map(String).join(" ") + "\n");
  const saved = { log: console.log, error: console.error, warn: console.warn, info: console.info };
  Object.assign(console, { log, error: log, warn: log, info: log });
  try {
    // worker_js.js's lookup: in scope for the return statement, else a global property.
    const lookup = `\nreturn (typeof ${name} !== "undefined") ? ${name} : globalThis[${JSON.stringify(name)}];`;
    const fn = await new AsyncFunction(`${request.code}${lookup}`)();
    return runCases(fn, request.cases, name);
  } finally {
    Object.assign(console, saved);
  }
}

function failure(error) {
  if (typeof error?.pythonError === "string") {
    return error.pythonError.slice(0, 2000);
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
  errors = [];
  let answer;
  try {
    const results = request.language === "python" ? await runPython(request) : await runJavaScript(request);
    answer = { results, output: output.join("") };
  } catch (error) {
    answer = { failed: failure(error), output: output.join("") };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
