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
// way to the network or to storage is removed from the global scope and its prototypes, and
// package loading is refused (nothing may reach a CDN). The worker's own Content-Security-Policy
// (connect-src 'self', no eval) stands behind that.

const BLOCKED = [
  "fetch", "XMLHttpRequest", "WebSocket", "WebSocketStream", "EventSource", "importScripts", "indexedDB",
  "caches", "BroadcastChannel", "Worker", "SharedWorker", "WebTransport", "RTCPeerConnection",
  "RTCDataChannel", "FileSystemHandle", "FileSystemDirectoryHandle", "FileSystemFileHandle",
  "FileSystemSyncAccessHandle", "CacheStorage", "IDBFactory", "cookieStore",
];
const BLOCKED_NAVIGATOR = ["storage", "storageBuckets", "serviceWorker", "locks"];

// Every object on the way from `target` up its prototype chain loses `names`; true when none is
// reachable any more.
function removeAll(target, names) {
  for (const name of names) {
    for (let object = target; object; object = Object.getPrototypeOf(object)) {
      if (!Object.prototype.hasOwnProperty.call(object, name)) continue;
      if (!Reflect.deleteProperty(object, name)) {
        try {
          Object.defineProperty(object, name, { value: undefined, writable: false, configurable: false });
        } catch {
          // checked below
        }
      }
    }
  }
  return names.every((name) => target[name] === undefined);
}

export function lockDown() {
  const navigatorClean = !self.navigator || removeAll(self.navigator, BLOCKED_NAVIGATOR);
  if (!removeAll(self, BLOCKED) || !navigatorClean) throw new Error("the network could not be switched off");
}

// The program, compiled as main.py; a traceback shows its frames only. Top-level await works.
const RUNNER = `
import ast, inspect, json, sys, traceback

def _user_frames(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename != "main.py":
        tb = tb.tb_next
    return tb

async def run(code, function, cases_json, harness):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        compiled = compile(code, "main.py", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, namespace)
        if inspect.iscoroutine(result):
            await result
    except SystemExit as exit:
        if exit.code not in (None, 0):
            if not isinstance(exit.code, int):
                print(exit.code, file=sys.stderr)
            return ["error", None]
    except BaseException as error:
        traceback.print_exception(type(error), error, _user_frames(error.__traceback__))
        return ["error", None]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if not function:
        return ["ok", None]
    scope = {"__name__": "collab_harness"}
    exec(compile(harness, "harness.py", "exec"), scope)
    try:
        return ["ok", scope["run_cases"](namespace, function, cases_json)]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
run
`;

let pyodide = null;
let runner = null;
let harness = null;
let ready = null;

function post(message) {
  self.postMessage(message);
}

// A stream's bytes as text, posted as it comes: partial lines too (a prompt, print(end="")), and
// a character split across two writes is kept until its end arrives.
function writer(stream, budget) {
  const decoder = new TextDecoder();
  return {
    isatty: true, // line-buffered: each line shows as soon as it is printed
    write(buffer) {
      const text = decoder.decode(buffer, { stream: true });
      if (text) budget.spend(stream, text);
      return buffer.length;
    },
  };
}

function outputBudget(maxChars) {
  let left = maxChars;
  let cut = false;
  return {
    spend(stream, text) {
      if (cut) return;
      if (text.length > left) {
        if (left > 0) post({ type: "output", stream, text: text.slice(0, left) });
        cut = true;
        left = 0;
        post({ type: "truncated" });
        return;
      }
      left -= text.length;
      post({ type: "output", stream, text });
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
  const budget = outputBudget(Number.isSafeInteger(maxOutputChars) ? maxOutputChars : 20000);
  pyodide.setStdout(writer("stdout", budget));
  pyodide.setStderr(writer("stderr", budget));
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
    budget.spend("stderr", `${error?.message ?? error}\n`);
  }
  post(results === null ? { type: "done", status } : { type: "done", status, results });
}

self.onmessage = (event) => {
  const message = event.data || {};
  if (message.type === "init" && ready === null) {
    ready = init(message).catch((error) => {
      post({ type: "failed", message: `Python could not start: ${error?.message ?? error}` });
      throw error;
    });
  } else if (message.type === "run") {
    run(message).catch((error) => post({ type: "done", status: "error", error: String(error?.message ?? error) }));
  }
};
