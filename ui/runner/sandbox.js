// What keeps a run's code inside its worker, shared by worker_python.js and worker_js.js: the
// network and storage taken away before any of the code runs, and a cap on what it may print.
// Served from /runner/ (api/runner_files.py) like the workers, which import it.

export const DEFAULT_MAX_OUTPUT_CHARS = 20000; // rooms/settings.py's MAX_RUN_OUTPUT_CHARS default

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

// Takes every way to the network or to storage away from the worker's global scope (and its
// prototypes); throws when one is still reachable. The worker's Content-Security-Policy, scoped
// to the server's /runner/ folder, stands behind this.
export function lockDown(scope = self) {
  const navigatorClean = !scope.navigator || removeAll(scope.navigator, BLOCKED_NAVIGATOR);
  if (!removeAll(scope, BLOCKED) || !navigatorClean) throw new Error("the network could not be switched off");
}

// `emit(stream, text)` posts what a run printed as {type: "output", stream, text}, up to
// `maxChars` characters in all; past them, the part that fits, then {type: "truncated"} once, and
// nothing more.
export function outputBudget(post, maxChars) {
  let left = Number.isSafeInteger(maxChars) && maxChars >= 0 ? maxChars : DEFAULT_MAX_OUTPUT_CHARS;
  let cut = false;
  return (stream, text) => {
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
  };
}
