// Runs a question's test cases against the candidate's function, inside the JavaScript worker.
//
// The worker evaluates the candidate's code, takes the function the question names (it reports
// a missing one itself) and calls runCases(fn, cases): `cases` is the `cases` list of the room's
// run_cases message; `name`, for the error when `fn` is not a function, defaults to "the
// function" (tests/node/run_cases.mjs passes the question's). The
// answer has, per case in order, {actual: value} or {error: "ErrorName: message"}; the room
// judges it (rooms/questions.py). Whatever the function logs goes to the console as usual.
// ui/runner/harness.py is its Python twin: keep the two in step.

const MAX_ERROR_CHARS = 500; // rooms.questions.MAX_ERROR_CHARS
const MAX_RESULT_CHARS = 10000; // rooms.questions.MAX_RESULT_CHARS

// What in `value` JSON cannot carry faithfully (JSON.stringify would drop it, turn it into null
// or into {}), or null when nothing.
function notJson(value, ancestors) {
  if (value === null || typeof value === "string" || typeof value === "boolean") {
    return null;
  }
  if (typeof value === "number") {
    return Number.isFinite(value) ? null : String(value);
  }
  if (typeof value !== "object") {
    return typeof value; // undefined, function, symbol, bigint
  }
  if (ancestors.includes(value)) {
    return "a value that contains itself";
  }
  const prototype = Object.getPrototypeOf(value);
  let children;
  if (Array.isArray(value)) {
    children = Array.from(value); // holes become undefined, and are reported as such
  } else if (prototype === Object.prototype || prototype === null) {
    children = Object.values(value);
  } else {
    return value.constructor?.name || "object"; // Map, Set, Date, a class instance, a Promise
  }
  ancestors.push(value);
  for (const child of children) {
    const found = notJson(child, ancestors);
    if (found !== null) {
      return found;
    }
  }
  ancestors.pop();
  return null;
}

function describe(error) {
  let message;
  try {
    if (error !== null && typeof error === "object" && typeof error.name === "string") {
      message = error.message ? `${error.name}: ${error.message}` : error.name;
    } else {
      message = `Uncaught ${typeof error}: ${String(error)}`; // throw "text", throw 42
    }
  } catch {
    message = "Uncaught exception"; // a getter or toString that throws
  }
  return message.slice(0, MAX_ERROR_CHARS);
}

function runCase(fn, testCase) {
  let returned;
  try {
    returned = fn(...structuredClone(testCase.args));
  } catch (error) {
    return { error: describe(error) };
  }
  let text;
  try {
    const bad = notJson(returned, []);
    if (bad !== null) {
      return { error: `TypeError: result is not JSON: ${bad}` };
    }
    text = JSON.stringify(returned);
  } catch (error) {
    // Nested deeper than the stack, or a getter that throws.
    return { error: `TypeError: result is not JSON: ${describe(error)}`.slice(0, MAX_ERROR_CHARS) };
  }
  if (text.length > MAX_RESULT_CHARS) {
    return { error: `RangeError: result is too large: ${text.length} characters of JSON (at most ${MAX_RESULT_CHARS})` };
  }
  return { actual: JSON.parse(text) };
}

export function runCases(fn, cases, name = "the function") {
  if (typeof fn !== "function") {
    return cases.map(() => ({ error: `ReferenceError: no function named ${name}` }));
  }
  return cases.map((testCase) => runCase(fn, testCase));
}
