// Runs one JavaScript program in a module worker of its own (ui/collab_runs.js starts it); the
// same messages as worker_python.js: {type: "init", harnessURL} -> {type: "ready"};
// {type: "run", code, maxOutputChars, cases?: {function, cases}} -> {type: "output", stream,
// text}..., maybe {type: "truncated"}, then {type: "done", status: "ok" | "error", results?}.
//
// The code runs as the body of an async function, so top-level `await` works; console.log,
// info and debug go to stdout, warn and error to stderr, objects formatted readably. For tests,
// the function is the one the code declares under the question's name (a function declaration,
// `const name = ...`, or a property of globalThis), handed to harness.js's runCases.
//
// Before the code runs, every way to the network or to storage is removed from the global
// scope and its prototypes (sandbox.js); the worker's Content-Security-Policy stands behind that:
// no connect-src at all, scripts from the server's /runner/ folder only, not the rest of this
// origin (api/runner_files.py).

import { lockDown, outputBudget } from "./sandbox.js";

const MAX_DEPTH = 4;
const MAX_ITEMS = 100;

// A value as console.log shows it: strings as they are at the top level, quoted inside objects.
export function format(value, depth = 0, seen = new Set()) {
  if (typeof value === "string") return depth === 0 ? value : JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "symbol") return value.toString();
  if (typeof value === "function") return `[Function: ${value.name || "(anonymous)"}]`;
  if (value === null || typeof value !== "object") return String(value);
  if (value instanceof Error) return value.stack || `${value.name}: ${value.message}`;
  if (seen.has(value)) return "[Circular]";
  if (depth >= MAX_DEPTH) return Array.isArray(value) ? "[Array]" : "[Object]";
  seen.add(value);
  try {
    const inner = (item) => format(item, depth + 1, seen);
    if (Array.isArray(value)) {
      const items = value.slice(0, MAX_ITEMS).map(inner);
      if (value.length > MAX_ITEMS) items.push(`... ${value.length - MAX_ITEMS} more items`);
      return `[ ${items.join(", ")} ]`.replace("[  ]", "[]");
    }
    if (value instanceof Map)
      return `Map(${value.size}) { ${[...value].slice(0, MAX_ITEMS).map(([k, v]) => `${inner(k)} => ${inner(v)}`).join(", ")} }`;
    if (value instanceof Set) return `Set(${value.size}) { ${[...value].slice(0, MAX_ITEMS).map(inner).join(", ")} }`;
    if (value instanceof Date) return value.toISOString();
    if (value instanceof RegExp) return String(value);
    const entries = Object.entries(value).slice(0, MAX_ITEMS);
    const key = (k) => (/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k));
    const name = value.constructor && value.constructor !== Object ? `${value.constructor.name} ` : "";
    if (entries.length === 0) return `${name}{}`;
    return `${name}{ ${entries.map(([k, v]) => `${key(k)}: ${inner(v)}`).join(", ")} }`;
  } finally {
    seen.delete(value);
  }
}

// An error thrown by the code, with the frames of the code only (lines as in the editor: the
// function made of it starts two lines earlier).
function describe(error) {
  if (!(error instanceof Error)) return format(error);
  const frames = String(error.stack || "")
    .split("\n")
    .map((line) => line.replace(/\(eval at .*?, <anonymous>:(\d+):(\d+)\)/, (_, row, column) => `(main.js:${row - 2}:${column})`))
    .filter((line) => line.includes("main.js:"))
    .map((line) => line.replace(/at eval \((main\.js:\d+:\d+)\)/, "at $1"));
  return [`${error.name}: ${error.message}`, ...frames].join("\n");
}

// The function the tests call: `function name`, `const/let name =` (not on globalThis) or a
// global property, looked up by name from inside the code's own scope.
function finder(name) {
  if (!/^[A-Za-z_$][\w$]*$/.test(name)) return "";
  return `\nreturn (typeof ${name} !== "undefined") ? ${name} : globalThis[${JSON.stringify(name)}];`;
}

const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
const post = self.postMessage.bind(self);
let runCases = null;
let ready = null;

async function init({ harnessURL }) {
  try {
    ({ runCases } = await import(harnessURL));
  } catch {
    runCases = null; // runs of code work without it; tests report the problem
  }
  lockDown();
  post({ type: "ready" });
}

async function run({ code, maxOutputChars, cases }) {
  await ready;
  const emit = outputBudget(post, maxOutputChars);
  const line = (stream) => (...args) => emit(stream, `${args.map((arg) => format(arg)).join(" ")}\n`);
  for (const name of ["log", "info", "debug"]) console[name] = line("stdout");
  for (const name of ["warn", "error"]) console[name] = line("stderr");
  let status = "ok";
  let results = null;
  try {
    const body = cases ? `${code}${finder(cases.function)}` : code;
    const fn = await new AsyncFunction(body)();
    if (cases) {
      if (runCases === null) throw new Error("the test harness could not be loaded");
      if (typeof fn !== "function") throw new Error(`no function named ${cases.function} was defined`);
      results = await runCases(fn, cases.cases);
    }
  } catch (error) {
    status = "error";
    emit("stderr", `Uncaught ${describe(error)}\n`);
  }
  post(results === null ? { type: "done", status } : { type: "done", status, results });
}

self.onmessage = (event) => {
  const message = event.data || {};
  if (message.type === "init" && ready === null) {
    ready = init(message).catch((error) => {
      post({ type: "failed", message: `JavaScript could not start: ${error?.message ?? error}` });
      throw error; // a run waiting for it ends "error"
    });
    ready.catch(() => {}); // told to the page above: not an uncaught error besides
  } else if (message.type === "run") {
    run(message).catch((error) => post({ type: "done", status: "error", error: String(error?.message ?? error) }));
  }
};
