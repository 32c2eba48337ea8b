"""Running code in the browser: what it costs a page to download, to start a run, and in memory.

    .venv/bin/python bench/run_start.py            # 5 repetitions, medians
    .venv/bin/python bench/run_start.py --runs 9
    .venv/bin/python bench/run.py --only run_start # the same as a section of the report

One server (ours, ``bench/servers.py``: a loopback port, its own temporary ``DATA_DIR``); each
repetition launches a fresh headless Chromium (Debian's /usr/bin/chromium, so its HTTP cache is
cold) and opens a room page in Python, then another Chromium with a room page in JavaScript:

- download: the bytes of every ``/runner/`` response a page fetched to run Python (the Pyodide
  files, the worker and the case harness) and to run JavaScript (its worker and harness), as the
  browser received them (Playwright's ``responseBodySize``: compressed when the server
  compressed), beside their size once decoded. Chromium gives no body size for a worker's own
  script: that response's ``Content-Length`` stands in for it, or the decoded size when it has
  none (`FileDownload.measured` says which);
- first Python run: from the click on Run, as soon as the page can run, to ``45`` shown
  (``print(sum(range(10)))``): Pyodide's download and start are most of it;
- warm Python run: the same in the same page once the next worker is warm (the run panel starts
  one after every run);
- JavaScript run: the same in the JavaScript page, its worker warm;
- memory: the proportional set size (PSS) of all of Chromium's processes with one room page
  open, in a JavaScript room (no Pyodide) and in a Python room once Pyodide is loaded; the
  difference is Pyodide's share.

Every wait is bounded; the server and each browser are stopped on the way out, on error too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright
from playwright.sync_api import Error as PlaywrightError

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from servers import Kind

from api.runner_files import PYODIDE_DIR, PYODIDE_FILES, RUNNER_DIR

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAGE_TIMEOUT_MS = 30_000  # a page loading, going live, sending a language
RUN_TIMEOUT_MS = 120_000  # a worker warming (Pyodide's download and start) or a run finishing
RUNNER = "/runner/"
# The /runner/ files each language needs; every other one a page fetches belongs to the other.
JAVASCRIPT_FILES = ("worker_js.js", "harness.js")

# Clicks Run and resolves with the milliseconds until the newest run shows `expected`.
TIMED_RUN = """async ([expected, timeout]) => {
  const button = document.querySelector(".collab-run-button");
  const start = performance.now();
  button.click();
  return await new Promise((resolve, reject) => {
    const check = () => {
      const text = document.querySelector(".collab-run:last-child .collab-run-text");
      if (text && text.textContent.includes(expected)) resolve(performance.now() - start);
      else if (performance.now() - start > timeout) reject(new Error(`no ${expected} after ${timeout} ms`));
      else requestAnimationFrame(check);
    };
    check();
  });
}"""


@dataclass
class FileDownload:
    """One ``/runner/`` response as the browser received it."""

    name: str
    transferred: int  # body bytes on the wire (compressed when the server compressed)
    decoded: int  # body bytes once decoded
    encoding: str  # its Content-Encoding, "" for none
    measured: str  # where `transferred` comes from: "browser", "content-length" or "decoded"


@dataclass
class Repetition:
    """One fresh browser's measurements (milliseconds, KiB, bytes)."""

    first_ms: float
    warm_ms: float
    javascript_ms: float
    pss_python_kib: int
    pss_javascript_kib: int
    python_files: list[FileDownload] = field(default_factory=list)
    javascript_files: list[FileDownload] = field(default_factory=list)

    @property
    def python_bytes(self) -> int:
        return sum(f.transferred for f in self.python_files)

    @property
    def javascript_bytes(self) -> int:
        return sum(f.transferred for f in self.javascript_files)

    @property
    def pyodide_kib(self) -> int:
        return self.pss_python_kib - self.pss_javascript_kib


@dataclass
class RunStartResult:
    """The repetitions of one measurement; `error` says why it stopped early, if it did."""

    runs: int  # repetitions asked for
    repetitions: list[Repetition] = field(default_factory=list)
    error: str = ""

    def median(self, name: str) -> float:
        """The median of a `Repetition` attribute over the repetitions; NaN with none."""
        values = [float(getattr(r, name)) for r in self.repetitions]
        return statistics.median(values) if values else math.nan

    def extent(self, name: str) -> tuple[float, float]:
        values = [float(getattr(r, name)) for r in self.repetitions]
        return (min(values), max(values)) if values else (math.nan, math.nan)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunStartResult:
        repetitions = []
        for values in data["repetitions"]:
            files = {name: [FileDownload(**f) for f in values[name]] for name in ("python_files", "javascript_files")}
            repetitions.append(Repetition(**{**values, **files}))
        return cls(runs=data["runs"], repetitions=repetitions, error=data["error"])


def pss_kib(pid: int) -> int:
    """The proportional set size of one process, in KiB; 0 once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))


def chromium_pss() -> int:
    """PSS of every Chromium process this script started (one browser is open at a time), in KiB.

    Only descendants count: other work on a shared machine runs Chromiums of its own.
    """
    return sum(pss_kib(pid) for pid in _descendants(os.getpid()) if _is_chromium(pid))


def _descendants(root: int) -> list[int]:
    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = [int(child) for child in (task / "children").read_text().split()]
                found.extend(children)
                pending.extend(children)
        except OSError:  # gone meanwhile
            continue
    return found


def _is_chromium(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("chromium")
    except OSError:
        return False


def _served_size(name: str) -> int:
    """The size of the file served as ``name``: its decoded size."""
    folder = PYODIDE_DIR if name in PYODIDE_FILES else RUNNER_DIR
    return (folder / name).stat().st_size


def open_room(browser: Browser, http: str, language: str) -> tuple[Page, list[Request]]:
    """A room page in ``language``, able to run; and the requests it finishes, as they finish."""
    context: BrowserContext = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    finished: list[Request] = []
    # A worker's requests are the page's too: the context sees them all.
    context.on("requestfinished", lambda request: finished.append(request))
    page = context.new_page()
    page.goto(f"{http}/room/bench-{uuid.uuid4().hex[:10]}")
    page.locator(".collab-name-input input").fill("Bench")
    page.locator(".collab-save-name").click()
    page.wait_for_function("window.collabEditor && window.collabEditor.live")
    if language != "python":
        page.evaluate("(language) => window.collabEditor.send({type: 'language', language})", language)
    page.wait_for_function(
        "(language) => window.collabRuns && window.collabRuns.state.mayRun"
        " && window.collabRuns.state.language === language",
        arg=language,
    )
    return page, finished


def set_code(page: Page, code: str) -> None:
    page.evaluate("(code) => window.collabEditor.setText(code)", code)
    page.wait_for_function("() => window.collabEditor.pending === null && window.collabEditor.inflight === null")


def timed_run(page: Page, expected: str) -> float:
    return float(page.evaluate(TIMED_RUN, [expected, RUN_TIMEOUT_MS]))


def wait_warm(page: Page, language: str) -> None:
    """Until the run panel's next worker has said it is ready."""
    page.wait_for_function(
        "(language) => { const spare = window.collabRuns.spares[language]; return spare && spare.ready; }",
        arg=language,
        timeout=RUN_TIMEOUT_MS,
    )


def downloads(requests: list[Request], wanted: str) -> list[FileDownload]:
    """The ``/runner/`` files of ``wanted`` ("python" or "javascript") among these requests."""
    files = []
    seen: set[str] = set()
    for request in requests:
        name = request.url.rsplit("/", 1)[1]
        if RUNNER not in request.url or (name in JAVASCRIPT_FILES) != (wanted == "javascript"):
            continue
        # Every worker the panel starts (one per run) fetches the files again, from the cache
        # once the first has them: only the first fetch of each, in this fresh browser, counts.
        if request.url in seen:
            continue
        seen.add(request.url)
        response = request.response()
        if response is None:
            continue
        headers = response.all_headers()
        try:
            decoded = len(response.body())
        except PlaywrightError:  # not kept (a body streamed into WebAssembly, say): the file itself
            decoded = _served_size(name)
        transferred, measured = request.sizes()["responseBodySize"], "browser"
        if transferred <= 0 < decoded:  # a worker's own script: Chromium counts no body for it
            length = headers.get("content-length")
            transferred, measured = (int(length), "content-length") if length else (decoded, "decoded")
        files.append(FileDownload(name, transferred, decoded, headers.get("content-encoding", ""), measured))
    return sorted(files, key=lambda f: -f.decoded)


def one_repetition(http: str) -> Repetition:
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page, requests = open_room(chromium, http, "python")
            set_code(page, "print(sum(range(10)))")
            first = timed_run(page, "45")
            wait_warm(page, "python")
            set_code(page, "print(sum(range(10)) * 2)")
            warm = timed_run(page, "90")
            wait_warm(page, "python")
            time.sleep(1)  # let the heap settle after the run (a measurement pause, not a wait)
            with_pyodide = chromium_pss()
            python_files = downloads(requests, "python")
        finally:
            chromium.close()
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page, requests = open_room(chromium, http, "javascript")
            wait_warm(page, "javascript")
            # Only the JavaScript worker: a Python one warmed before the language changed goes.
            page.evaluate("() => { window.collabRuns.spares.python?.worker.terminate(); }")
            set_code(page, "console.log([...Array(10).keys()].reduce((a, b) => a + b))")
            javascript = timed_run(page, "45")
            wait_warm(page, "javascript")
            time.sleep(1)
            without = chromium_pss()
            javascript_files = downloads(requests, "javascript")
        finally:
            chromium.close()
    return Repetition(first, warm, javascript, with_pyodide, without, python_files, javascript_files)


def run(runs: int) -> RunStartResult:
    """Start the server, measure ``runs`` repetitions against it, stop it.

    A repetition that fails ends the measurement with the reason in ``error``, keeping those
    measured before it: one bad page must not sink a whole benchmark run.
    """
    result = RunStartResult(runs)
    with servers.running(Kind.OURS) as server:
        try:
            for _ in range(runs):
                result.repetitions.append(one_repetition(f"http://127.0.0.1:{server.port}"))
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.error = f"{type(exc).__name__}: {message}"[:300]
    return result


def format_result(result: RunStartResult) -> str:
    """A human-readable block: medians, with the range over the repetitions."""

    def row(name: str, key: str, scale: float, unit: str, digits: int = 0) -> tuple[str, str]:
        low, high = result.extent(key)
        median = f"{result.median(key) / scale:,.{digits}f} {unit}"
        return name, f"{median} ({low / scale:,.{digits}f}–{high / scale:,.{digits}f})"

    mib = 1024 * 1024
    rows = [
        ("repetitions", f"{len(result.repetitions)} of {result.runs}"),
        row("download, Python", "python_bytes", mib, "MiB", 2),
        row("download, JavaScript", "javascript_bytes", 1024, "KiB", 1),
        row("first Python run", "first_ms", 1, "ms"),
        row("warm Python run", "warm_ms", 1, "ms"),
        row("JavaScript run", "javascript_ms", 1, "ms"),
        row("PSS, Python page", "pss_python_kib", 1024, "MiB"),
        row("PSS, JavaScript page", "pss_javascript_kib", 1024, "MiB"),
        row("Pyodide's share", "pyodide_kib", 1024, "MiB"),
    ]
    if result.error:
        rows.append(("stopped early", result.error))
    return "\n".join(f"{name:>22}  {value}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="repetitions (medians are reported)")
    options = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {options.runs} repetitions", flush=True)
    result = run(options.runs)
    print(format_result(result))
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
