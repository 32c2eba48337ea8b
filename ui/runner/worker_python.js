// Runs one Python program in Pyodide, in a module worker of its own (ui/collab_runs.js starts it).
//
// Page -> worker: {type: "init", indexURL, harnessURL}: load Pyodide from this app (indexURL is
// /runner/pyodide/<version>/, api/runner_files.py) and the case harness, then take network and
// storage away, then post {type: "ready"}. {type: "run", code, stdin, maxOutputChars, cases?:
// {function, cases}}: run the code once, posting {type: "output", stream, text} as it prints and
// {type: "truncated"} when it printed more than maxOutputChars (nothing more is posted), then
// {type: "done", status: "ok" | "error", results?}. A worker runs one program: the page starts a
// fresh one for the next, so nothing of one run (globals, patched modules) reaches the next.
//
// Nothing may leave the worker but its messages to the page: before any user code runs, every
// way to the network or to storage is removed from the global scope and its prototypes
// (sandbox.js), and package loading is refused (nothing may reach a CDN). The worker's own
// Content-Security-Policy stands behind that: scripts and connections to the server's /runner/
// folder only (not the rest of this origin), WebAssembly but no eval (api/runner_files.py).

import { RUNNER } from "./python_runner.js";
import { lockDown, outputBudget } from "./sandbox.js";

let pyodide = null;
let runner = null;
let harness = null;
let ready = null;

function post(message) {
  self.postMessage(message);
}

// A stream's bytes as text, posted as they are written (RUNNER's streams write through: partial
// lines too, a prompt, print(end="")); a character split across two writes is kept until its end
// arrives.
function writer(stream, emit) {
  const decoder = new TextDecoder();
  return {
    isatty: true,
    write(buffer) {
      const text = decoder.decode(buffer, { stream: true });
      if (text) emit(stream, text);
      return buffer.length;
    },
  };
}

function reader(text) {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  return {
    read(buffer) {
      const size = Math.min(buffer.length, bytes.length - at);
      buffer.set(bytes.subarray(at, at + size));
      at += size;
      return size; // 0: end of input
    },
  };
}

function refuse() {
  throw new Error("packages cannot be loaded here: only the standard library is available");
}

async function init({ indexURL, harnessURL }) {
  const { loadPyodide } = await import(new URL("pyodide.mjs", new URL(indexURL, self.location.href)).href);
  pyodide = await loadPyodide({ indexURL, packages: [], env: { HOME: "/home/pyodide" } });
  try {
    const response = await fetch(harnessURL);
    if (response.ok) harness = await response.text();
  } catch {
    harness = null; // runs of code work without it; tests report the problem
  }
  runner = pyodide.runPython(RUNNER);
  for (const name of ["loadPackage", "loadPackagesFromImports", "mountNativeFS", "mountNodeFS"])
    if (name in pyodide) pyodide[name] = refuse;
  lockDown();
  post({ type: "ready" });
}

async function run({ code, stdin, maxOutputChars, cases }) {
  await ready;
  const emit = outputBudget(post, maxOutputChars);
  pyodide.setStdout(writer("stdout", emit));
  pyodide.setStderr(writer("stderr", emit));
  pyodide.setStdin(reader(stdin || ""));
  let status = "error";
  let results = null;
  try {
    if (cases && harness === null) throw new Error("the test harness could not be loaded");
    // undefined, not null: Pyodide turns null into jsnull, undefined into None.
    const outcome = await runner(code, cases?.function ?? undefined, JSON.stringify(cases?.cases ?? []), harness ?? "");
    const [state, json] = outcome.toJs();
    outcome.destroy();
    status = state;
    if (json !== null && json !== undefined) results = JSON.parse(json);
  } catch (error) {
    emit("stderr", `${error?.message ?? error}\n`);
  }
  post(results === null ? { type: "done", status } : { type: "done", status, results });
}

self.onmessage = (event) => {
  const message = event.data || {};
  if (message.type === "init" && ready === null) {
    ready = init(message).catch((error) => {
      post({ type: "failed", message: `Python could not start: ${error?.message ?? error}` });
      throw error; // a run waiting for it ends "error"
    });
    ready.catch(() => {}); // told to the page above: not an uncaught error besides
  } else if (message.type === "run") {
    run(message).catch((error) => post({ type: "done", status: "error", error: String(error?.message ?? error) }));
  }
};
