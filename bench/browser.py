"""Browser clients: server memory per open room page, and edit latency measured in the pages.

    .venv/bin/python bench/browser.py                         # 10 then 30 pages, as `make bench`
    .venv/bin/python bench/browser.py --pages 2 --seconds 2   # a smoke run

Starts collab pad afresh (``bench/servers.py``: a loopback port, its own temporary ``DATA_DIR``)
and one headless Debian Chromium (``/usr/bin/chromium``, driven by Playwright; no browser is
ever downloaded), then opens N room pages in rooms of ``--room-size`` (5: an interview or a
pairing session with a few watchers). Seat k of every room is the same person, a browser
context of its own (its cookie, so its own name and colour) with a tab in each room, as
someone with several rooms open would have. The first ``--writers`` seats of a room type (one
by default), the others read.

* Memory: the server's RSS (``/proc/<pid>/status``) with one warm-up page open in a room of its
  own (the first page pays for imports, templates and caches), and again once all N pages are
  live (welcomed by their room) and have settled for a few seconds: the growth divided by N,
  so each page carries its share of its room. The RSS after typing is reported too.
* Latency: a typist inserts, at ``--rate`` edits a second (Poisson arrivals), a word
  ``t<page>.<seq>@<ms>`` through its CodeMirror view as typed text is (a Python comment, four
  words to a line: rooms start in Python, and text its parser cannot read would make every
  page pay for error recovery on each edit, which typing code does not). ``<ms>`` is read from
  the page's clock, ``performance.timeOrigin + performance.now()``, which every page on one
  machine shares: the spread between pages is measured and reported. Every page wraps its
  view's ``update``: once a remote change carrying another page's word has been applied to the
  editor (its DOM updated), it records ``now - ms``. It also records when the frame reached
  the editor, before it was parsed and applied: the part of the latency spent on the way. A
  word a reader had not received when the drain ends is lost, and infinitely late in the
  percentiles (nearest rank over every (word, reader) pair). A page that NiceGUI reloads
  meanwhile (its socket was gone longer than the reconnect timeout) has lost its counts: it is
  reported, with the reason the page logged, and left out of the latencies.

The server, the browser and this script share the machine: Chromium renders every page (with
``--disable-gpu``, in software), so the browser's CPU is reported next to the server's.
Everything stays on 127.0.0.1, every wait is bounded, and the server and the browser are
stopped on the way out, on error too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, ViewportSize, async_playwright
from playwright.async_api import Error as PlaywrightError

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from load_result import percentile
from servers import Kind

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT: ViewportSize = {"width": 1100, "height": 620}  # a laptop's browser window
# Pages being opened at once. Loading a page is CPU work in the browser (about a second of it
# here): two overlap the network round trips, more only slow each other down, or worse.
OPEN_CONCURRENCY = 2
PAGE_TIMEOUT_S = 60.0  # each step of opening a page (load, name, live) within this
RSS_SAMPLES = 5  # RSS is read this many times, 0.2 s apart, and the median kept


def _script(name: str) -> str:
    """The function in a file of bench/, its leading comment left out."""
    lines = (HERE / name).read_text().splitlines()
    return "\n".join(itertools.dropwhile(lambda line: line.startswith("//"), lines))


# Run in the pages (each file's first lines say how): the reader in every page once it is live,
# the writer in each typist's page.
READER = _script("browser_reader.js")
WRITER = _script("browser_writer.js")


@dataclass(frozen=True)
class BrowserLoad:
    """N room pages in rooms of ``room_size``; ``writers`` pages of each room type."""

    pages: int
    room_size: int = 5
    writers: int = 1  # typists per room; the other pages of the room read
    rate: float = 5.0  # edits a second per typist
    seconds: float = 10.0  # typing time
    settle_seconds: float = 3.0  # between the last page going live and the memory reading
    drain_seconds: float = 5.0  # longest wait for the last words after typing stops
    room_prefix: str = "browser"

    def rooms(self) -> list[list[int]]:
        """Page indices, room by room; the last room may be smaller."""
        return [
            list(range(start, min(start + self.room_size, self.pages)))
            for start in range(0, self.pages, self.room_size)
        ]

    def timeout(self) -> float:
        """A bound on the whole measurement, generous for a busy machine."""
        return 120 + 6 * self.pages + self.seconds + self.drain_seconds


@dataclass
class BrowserResult:
    """One set of pages' measurements, as printed and as written to the report."""

    pages: int
    rooms: int
    room_size: int
    writers: int  # per room
    rate: float
    seconds: float
    live_pages: int = 0
    reloaded_pages: int = 0  # pages that started again while measured: their counts are lost
    page_errors: int = 0  # uncaught errors in the pages' scripts
    open_seconds: float = 0.0  # from the first page opened to the last one live
    rss_before_mib: float = 0.0  # with one warm-up page open
    rss_after_mib: float = 0.0  # every page live and settled
    rss_typed_mib: float = 0.0  # after the typing
    edits: int = 0
    deliveries: int = 0
    undelivered: int = 0
    p50_ms: float = math.inf
    p95_ms: float = math.inf
    p99_ms: float = math.inf
    max_ms: float = math.inf
    transit_p50_ms: float = math.inf  # until the frame reached the reader's editor, not yet applied
    clock_spread_ms: float = 0.0  # how far apart the pages' clocks are, as far as can be seen
    server_cpu_percent: float = 0.0  # over the typing window (100% = one core)
    browser_cpu_percent: float = 0.0  # Chromium and its Playwright driver, every process
    machine_cpu_percent: float = 0.0  # every process on the machine
    error: str = ""  # why the measurement stopped early, if it did
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mib_per_page(self) -> float:
        return (self.rss_after_mib - self.rss_before_mib) / max(1, self.live_pages)

    @property
    def ok(self) -> bool:
        """Every page opened, stayed and received every word, with no script error."""
        return (
            not self.error
            and self.live_pages == self.pages
            and not self.reloaded_pages
            and not self.page_errors
            and not self.undelivered
            and self.deliveries > 0
        )

    @property
    def other_cpu_percent(self) -> float:
        """CPU that neither the server nor the browser used: other work on the machine."""
        if not self.machine_cpu_percent:
            return 0.0
        return max(0.0, self.machine_cpu_percent - self.server_cpu_percent - self.browser_cpu_percent)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mib_per_page"] = self.mib_per_page
        data["ok"] = self.ok
        data["other_cpu_percent"] = self.other_cpu_percent
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = None if math.isinf(value) else round(value, 3)
        return data


def _rss_mib(pid: int) -> float:
    values = []
    for index in range(RSS_SAMPLES):
        if index:
            time.sleep(0.2)
        values.append(servers.proc_stats(pid).rss_kib / 1024)
    return statistics.median(values)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError, KeyError):  # gone meanwhile
            seconds[pid] = servers.proc_stats(pid).cpu_seconds
    return seconds


def _left(deadline: float) -> float:
    """Milliseconds to a monotonic deadline, for Playwright (never 0, which means no limit)."""
    return max(100.0, (deadline - time.monotonic()) * 1000)


async def _evaluate(page: Page, expression: str, arg: Any = None) -> Any:
    """``page.evaluate``, or None when the page navigated away meanwhile (it reloaded)."""
    try:
        return await page.evaluate(expression, arg)
    except PlaywrightError:
        return None


class Session:
    """One browser, its people (browser contexts) and the pages they opened."""

    def __init__(self, browser: Browser, http: str) -> None:
        self.browser = browser
        self.http = http
        self.people: dict[str, BrowserContext] = {}
        self.errors: list[str] = []
        self.reloads: list[str] = []  # why NiceGUI reloaded a page, as it logs it
        self.started = time.monotonic()

    def _console(self, where: str, message: ConsoleMessage) -> None:
        if message.text.startswith(("reloading because", "connection timed out")):
            self.reloads.append(f"{time.monotonic() - self.started:.0f} s, {where}: {message.text}")

    async def open(self, room: str, person: str) -> Page:
        """A page of this person's browser in this room, once its editor is live."""
        context = self.people.get(person)
        asks_name = context is None
        if context is None:
            context = await self.browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
            self.people[person] = context
        page = await context.new_page()
        where = f"{person} in {room}"
        page.on("pageerror", lambda error: self.errors.append(f"{where}: {error}"))
        page.on("console", lambda message: self._console(where, message))
        await page.goto(f"{self.http}/room/{room}")
        if asks_name:  # a browser with no stored name is asked for one first
            await page.locator(".collab-name-input input").fill(person)
            await page.locator(".collab-save-name").click()
        await page.wait_for_function("window.collabEditor && window.collabEditor.live")
        return page

    async def close(self) -> None:
        for context in self.people.values():
            with contextlib.suppress(PlaywrightError):
                await context.close()


async def _measure(load: BrowserLoad, server: servers.Server, result: BrowserResult) -> None:
    rooms = load.rooms()
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        session = Session(browser, f"http://127.0.0.1:{server.port}")
        try:
            await session.open(f"{load.room_prefix}-warm", "warm-up")
            await asyncio.sleep(1.0)
            result.rss_before_mib = await asyncio.to_thread(_rss_mib, server.pid)
            pages = await _open(load, session, rooms, result)
            await asyncio.sleep(load.settle_seconds)
            result.rss_after_mib = await asyncio.to_thread(_rss_mib, server.pid)

            offsets = [await _evaluate(page, READER, [index]) for index, page in enumerate(pages)]
            seen = [float(offset) for offset in offsets if offset is not None]
            result.clock_spread_ms = max(seen) - min(seen) if seen else 0.0
            typists = {index for members in rooms if len(members) > 1 for index in members[: load.writers]}
            await _type(load, result, server, pages, typists)
            await _collect(load, result, rooms, pages, typists)
            result.rss_typed_mib = await asyncio.to_thread(_rss_mib, server.pid)
        finally:
            result.page_errors = len(session.errors)
            if session.errors:
                result.extra["page_errors"] = session.errors[:5]
            if session.reloads:
                result.extra["reloads"] = session.reloads[:5]
                result.extra["reload_count"] = len(session.reloads)
            await session.close()
            with contextlib.suppress(PlaywrightError):  # already gone if it crashed
                await browser.close()


async def _open(load: BrowserLoad, session: Session, rooms: list[list[int]], result: BrowserResult) -> list[Page]:
    """Open every room's pages, a few at a time; the first room's store each person's name.

    A page that fails to open stops the others (a task group cancels them).
    """
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_page(room: int, seat: int) -> Page:
        async with gate:
            return await session.open(f"{load.room_prefix}-{room}", f"person {seat + 1}")

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        first = [group.create_task(open_page(0, seat)) for seat in range(len(rooms[0]))]
    async with asyncio.TaskGroup() as group:
        rest = [
            group.create_task(open_page(number, seat))
            for number, members in enumerate(rooms[1:], 1)
            for seat in range(len(members))
        ]
    result.open_seconds = time.monotonic() - started
    result.live_pages = len(first) + len(rest)
    return [task.result() for task in (*first, *rest)]


async def _type(
    load: BrowserLoad, result: BrowserResult, server: servers.Server, pages: list[Page], typists: set[int]
) -> None:
    """Start every typist at once; read the CPU time of the server and the browser meanwhile."""
    browser_pids = [pid for pid in _descendants(os.getpid()) if pid != server.pid]
    before = _cpu_seconds([server.pid, *browser_pids])
    machine = servers.machine_busy_seconds()
    started = time.monotonic()
    for index in sorted(typists):
        await _evaluate(pages[index], WRITER, [index, load.rate, load.seconds])
    await asyncio.sleep(load.seconds)
    elapsed = time.monotonic() - started
    after = _cpu_seconds([server.pid, *browser_pids])
    result.machine_cpu_percent = (servers.machine_busy_seconds() - machine) / elapsed * 100
    result.server_cpu_percent = (after[server.pid] - before[server.pid]) / elapsed * 100
    browser_seconds = sum(after[pid] - before[pid] for pid in browser_pids if pid in before and pid in after)
    result.browser_cpu_percent = browser_seconds / elapsed * 100


async def _collect(
    load: BrowserLoad, result: BrowserResult, rooms: list[list[int]], pages: list[Page], typists: set[int]
) -> None:
    """Wait (up to the drain time) until every reader has every word of its room, then read them.

    A page that reloaded meanwhile (its editor started again) has lost what it counted: it is
    counted in ``reloaded_pages`` and left out of the latencies.
    """
    deadline = time.monotonic() + load.drain_seconds + 10  # a busy page's timers run late
    for index in typists:
        with contextlib.suppress(PlaywrightError):  # late or reloaded: the counts below tell
            await pages[index].wait_for_function(
                "!window.bench || window.bench.typing === false", timeout=_left(deadline)
            )
    sent = {index: int(await _evaluate(pages[index], "window.bench ? window.bench.sent : 0") or 0) for index in typists}
    expected = [0] * len(pages)
    for members in rooms:
        for index in members:
            expected[index] = sum(sent[other] for other in members if other in typists and other != index)
    deadline = time.monotonic() + load.drain_seconds
    samples: list[float] = []
    arrivals: list[float] = []
    for index, page in enumerate(pages):
        with contextlib.suppress(PlaywrightError):  # the counts below tell what never arrived
            await page.wait_for_function(
                "([n]) => !window.bench || window.bench.samples.length >= n",
                arg=[expected[index]],
                timeout=_left(deadline),
            )
        seen = await _evaluate(page, "window.bench && [window.bench.samples, window.bench.arrivals]")
        if not seen:
            result.reloaded_pages += 1
            continue
        samples.extend(float(value) for value in seen[0])
        arrivals.extend(float(value) for value in seen[1])
        result.undelivered += max(0, expected[index] - len(seen[0]))
    result.edits = sum(sent.values())
    result.deliveries = len(samples)
    everything = sorted(samples) + [math.inf] * result.undelivered
    result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = (
        percentile(everything, q) for q in (0.5, 0.95, 0.99, 1.0)
    )
    result.transit_p50_ms = percentile(sorted(arrivals), 0.5)


def run_browser(load: BrowserLoad) -> BrowserResult:
    """Start the server, measure one set of pages against it, and stop both, within a bound.

    A measurement that fails (a page that never goes live, the bound reached) returns what it
    measured so far, with the reason in ``error``: one bad set must not sink a whole run.
    """
    result = BrowserResult(
        pages=load.pages,
        rooms=len(load.rooms()),
        room_size=load.room_size,
        writers=load.writers,
        rate=load.rate,
        seconds=load.seconds,
    )
    with servers.running(Kind.OURS) as server:
        try:
            asyncio.run(asyncio.wait_for(_measure(load, server, result), load.timeout()))
        except Exception as exc:
            while isinstance(exc, ExceptionGroup):  # from the task group: say what went wrong
                exc = exc.exceptions[0]
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.error = f"{type(exc).__name__}: {message}"[:300]
    return result


def format_result(result: BrowserResult) -> str:
    """A human-readable block for one set of pages."""

    def ms(value: float) -> str:
        return "never" if math.isinf(value) else f"{value:.1f} ms"

    rows = [
        ("pages", f"{result.live_pages} of {result.pages} live, {result.rooms} room(s) of at most {result.room_size}"),
        ("opened in", f"{result.open_seconds:.1f} s"),
        ("server RSS", f"{result.rss_before_mib:.1f} MiB, {result.rss_after_mib:.1f} MiB with the pages open"),
        ("per page", f"{result.mib_per_page:.2f} MiB"),
        ("after typing", f"{result.rss_typed_mib:.1f} MiB"),
        ("typing", f"{result.writers} a room, {result.rate:g} edits/s, {result.seconds:g} s"),
        ("edits", str(result.edits)),
        ("deliveries", f"{result.deliveries} ({result.undelivered} lost)"),
        ("latency p50/p95/p99", f"{ms(result.p50_ms)} / {ms(result.p95_ms)} / {ms(result.p99_ms)}"),
        ("latency max", ms(result.max_ms)),
        ("of which on the way", f"p50 {ms(result.transit_p50_ms)} (until the reader's editor had the frame)"),
        ("clock spread", f"{result.clock_spread_ms:.2f} ms between pages"),
        ("page errors / reloads", f"{result.page_errors} / {result.reloaded_pages}"),
        ("server CPU", f"{result.server_cpu_percent:.0f}%"),
        ("browser CPU", f"{result.browser_cpu_percent:.0f}%"),
        ("other work's CPU", f"{result.other_cpu_percent:.0f}% (100% = one core)"),
        ("every word delivered", "yes" if result.ok else "no"),
    ]
    if result.error:
        rows.append(("stopped early", result.error))
    return "\n".join(f"{name:>22}  {value}" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[10, 30], help="room pages to open, one run each")
    parser.add_argument("--room-size", type=int, default=BrowserLoad.room_size, help="pages per room")
    parser.add_argument("--writers", type=int, default=BrowserLoad.writers, help="typing pages per room")
    parser.add_argument("--rate", type=float, default=BrowserLoad.rate, help="edits a second per typing page")
    parser.add_argument("--seconds", type=float, default=BrowserLoad.seconds, help="typing time")
    args = parser.parse_args(argv)
    for pages in args.pages:
        load = BrowserLoad(pages, room_size=args.room_size, writers=args.writers, rate=args.rate, seconds=args.seconds)
        result = run_browser(load)
        print(f"\n== {pages} browser pages\n{format_result(result)}", flush=True)
        print(json.dumps(result.to_json()), flush=True)


if __name__ == "__main__":
    main()
