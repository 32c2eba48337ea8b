"""The tables of the benchmark report, one function per section, and the cells they share.

Each function takes a run's `Results` and ``add``, which appends one line of Markdown; a section
with nothing measured says so or is left out. Nothing here measures: the numbers all come from
the results file.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
from load_result import Result
from plan import CAPACITY_P99_MS, PAGE_TARGET_MIB, SLOW_COMMIT_S, Series
from results import Results

Add = Callable[[str], None]
BASELINES = ("ours", "bare", "naive")  # the capacity tables' servers
VERSIONS = ("ours", "ours-fast-path-off", "previous")  # the comparison of our own versions
ISOLATED_NOTE = (
    "Ours runs here with `SQLITE_SYNCHRONOUS=normal`: every update is still committed to SQLite before "
    "anyone sees it, but the commit does not wait for the fsync, whose stalls on a slow disk would "
    "otherwise set the p99 of whichever runs they fall in and hide the one thing these runs differ in "
    "(see *Slow disks* under *Where the time goes*)."
)
RUN_START_HEADING = "## Running code in the browser"
RUN_START_ROWS = (
    ("First Python run, click to output (cold cache)", "first_ms", "ms"),
    ("Warm Python run, click to output", "warm_ms", "ms"),
    ("JavaScript run, click to output (warm worker)", "javascript_ms", "ms"),
    ("Chromium PSS, a Python room page with Pyodide loaded", "pss_python_kib", "KiB"),
    ("Chromium PSS, a JavaScript room page", "pss_javascript_kib", "KiB"),
    ("Pyodide's share (the difference)", "pyodide_kib", "KiB"),
)


# Cells


def ms(value: float) -> str:
    if math.isinf(value):
        return "lost"
    if math.isnan(value):
        return "–"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def ratio(value: float, base: float) -> str:
    if math.isinf(value) or math.isinf(base) or math.isnan(value) or math.isnan(base) or base <= 0:
        return "–"
    return f"{value / base:.2f}×"


def yes(value: bool) -> str:
    return "yes" if value else "**no**"


def find(results: list[Result], name: str, clients: int) -> Result | None:
    return next((r for r in results if r.name == name and r.clients == clients), None)


def capacity_of(results: list[Result], name: str) -> int:
    """The largest load this server handled, with every smaller one handled too."""
    best = 0
    for result in results:
        if result.name != name:
            continue
        if not result.ok:
            break
        best = result.clients
    return best


def cap(results: list[Result], name: str, steps: tuple[int, ...]) -> str:
    if not any(r.name == name for r in results):
        return "not run"
    value = capacity_of(results, name)
    if value == 0:
        return f"< {steps[0]}"
    return f"≥ {value}" if value == steps[-1] else str(value)


def cell(result: Result | None) -> str:
    if result is None:
        return "not run (over capacity at a smaller load)"
    p50, p99 = ms(result.p50_ms), ms(result.p99_ms)
    flags = []
    if result.dropped:
        flags.append(f"{result.dropped} dropped")
    if result.undelivered:
        flags.append(f"{result.undelivered} lost")
    if result.errors:
        flags.append(f"{result.errors} errors")
    mark = "" if result.ok else " ✗"
    return f"{p50} / {p99}{mark}" + (f" ({', '.join(flags)})" if flags else "")


def ratio_of_medians(large: list[Result], small: list[Result], name: str) -> float:
    """The median over the runs at one size against the median at the other. A slow fsync or a
    busy neighbour spoils single runs, on either side; a median of pairs' ratios needs both runs
    of a pair clean, a median of each side only most runs of that side."""
    value = statistics.median(getattr(r, name) for r in large)
    base = statistics.median(getattr(r, name) for r in small)
    return math.inf if math.isinf(value) or base <= 0 else float(value / base)


def _run(result: Result) -> str:
    label = str(result.extra.get("label", ""))
    return label.rsplit("run ", 1)[1] if "run " in label else "1"


def _slow_commits(result: Result | None) -> str:
    count = result.extra.get("store", {}).get("slow_commits", math.nan) if result is not None else math.nan
    return "–" if math.isnan(count) else f"{count:.0f}"


# Sections


def capacity(results: Results, add: Add) -> None:
    for series in results.plan.series:
        measured = results.capacity.get(series.name)
        if not measured:
            continue
        add(f"## Capacity: {series.name}")
        add("")
        add(f"p50 / p99 latency in ms; ✗ marks a load over capacity (p99 ≥ {CAPACITY_P99_MS:.0f} ms, a drop or a lost")
        add("edit). Ratios are p99 against bare at the same load. *Other work*: CPU used on the machine by")
        add("neither the server nor the load generator during the busiest of the three (100% = one core).")
        add("")
        add(
            "| Clients | Edits/s | ours (batch) | bare | naive | ours ÷ bare | naive ÷ bare "
            "| server CPU o / b / n | other work |"
        )
        add("|---:|---:|---|---|---|---:|---:|---|---:|")
        for clients in series.steps:
            ours, bare, naive = (find(measured, name, clients) for name in BASELINES)
            row = [r for r in (ours, bare, naive) if r is not None]
            if not row:
                continue
            cpu = " / ".join(f"{r.server_cpu_percent:.0f}%" if r else "–" for r in (ours, bare, naive))
            other = max(r.other_cpu_percent for r in row)
            add(
                f"| {clients} | {clients * series.rate:,.0f} | {cell(ours)} | {cell(bare)} | {cell(naive)} | "
                f"{ratio(ours.p99_ms, bare.p99_ms) if ours and bare else '–'} | "
                f"{ratio(naive.p99_ms, bare.p99_ms) if naive and bare else '–'} | {cpu} | {other:.0f}% |"
            )
        caps = {name: cap(measured, name, series.steps) for name in BASELINES}
        add("")
        add(
            f"Capacity (largest load with p99 < {CAPACITY_P99_MS:.0f} ms, no drop, nothing lost): "
            f"ours {caps['ours']}, bare {caps['bare']}, naive {caps['naive']} clients."
        )
        busy = [r for r in measured if r.client_cpu_max_percent >= 90]
        if busy:
            worst = max(busy, key=lambda r: r.client_cpu_max_percent)
            add(
                f"The load generator was near a full core in {len(busy)} of these loads (at most "
                f"{worst.client_cpu_max_percent:.0f}% in one client process, {worst.name}, {worst.clients} "
                "clients): there the client, not the server, may set the latency."
            )
        add("")


def versions(results: Results, add: Add) -> None:
    """This code beside itself with the fast path off and beside its previous version."""
    if not any(results.capacity.values()):
        return
    previous = results.previous
    add("## This code against its previous version, and the fast path off")
    add("")
    if previous is None:
        add("No previous version was compared in this run (`bench/run.py --previous REF` asks for one).")
    elif previous.error:
        add(f"The previous version, `{previous.ref}`, could not be run: {previous.error}. Its columns are empty.")
    else:
        add(
            f"*previous* is `{previous.ref}` ({previous.commit[:12]}: {previous.subject}), run from a copy of its "
            "tree (`git archive`) by the same interpreter and virtualenv, with the same settings and loads; "
            "at each step the servers ran one after the other, so that they share the machine's mood."
        )
    add("")
    add(
        "*fast path off* is this code with `FAST_PATH=false`: `/ws` without uvicorn's fast path, public ASGI only."
        + (
            ""
            if results.fast_path_setting
            else " This code has no `FAST_PATH` setting yet, so that series ran the same server as *ours*:"
            " their difference is this machine's noise."
        )
    )
    add("")
    add("p50 / p99 latency in ms, ✗ over capacity; ratios below 1 mean this code is faster or smaller.")
    add("")
    for series in results.plan.series:
        measured = results.capacity.get(series.name)
        if measured:
            _versions_table(series, measured, add)


def _versions_table(series: Series, measured: list[Result], add: Add) -> None:
    add(f"**{series.name[0].upper()}{series.name[1:]}.**")
    add("")
    add(
        "| Clients | ours | fast path off | previous | p50 ours ÷ previous | p99 ours ÷ previous "
        "| p99 off ÷ ours | server CPU o / f / p |"
    )
    add("|---:|---|---|---|---:|---:|---:|---|")
    for clients in series.steps:
        ours, off, previous = (find(measured, name, clients) for name in VERSIONS)
        if ours is None and off is None and previous is None:
            continue
        cpu = " / ".join(f"{r.server_cpu_percent:.0f}%" if r else "–" for r in (ours, off, previous))
        add(
            f"| {clients} | {cell(ours)} | {cell(off)} | {cell(previous)} | "
            f"{ratio(ours.p50_ms, previous.p50_ms) if ours and previous else '–'} | "
            f"{ratio(ours.p99_ms, previous.p99_ms) if ours and previous else '–'} | "
            f"{ratio(off.p99_ms, ours.p99_ms) if ours and off else '–'} | {cpu} |"
        )
    caps = {name: cap(measured, name, series.steps) for name in VERSIONS}
    ours_cap, previous_cap = capacity_of(measured, "ours"), capacity_of(measured, "previous")
    both = caps["previous"] != "not run" and ours_cap and previous_cap
    add("")
    add(
        f"Capacity: ours {caps['ours']}, fast path off {caps['ours-fast-path-off']}, previous {caps['previous']} "
        f"clients" + (f"; ours ÷ previous {ours_cap / previous_cap:.2f}×." if both else ".")
    )
    add("")


def per_connection(results: Results, add: Add) -> None:
    plan = results.plan
    series = plan.series[0]
    rows = [
        r for r in results.capacity.get(series.name, []) if r.clients == plan.target_clients and r.name in BASELINES
    ]
    if not rows:
        return
    add(f"## CPU and memory per connection ({plan.target_clients} clients, {series.name})")
    add("")
    add("| Server | Server CPU | CPU ms per client-second | RSS under load | RSS per client | Client CPU |")
    add("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        add(
            f"| {r.name} | {r.server_cpu_percent:.0f}% | {r.cpu_ms_per_client_second:.2f} | "
            f"{r.server_rss_mib:.0f} MiB | {r.rss_kib_per_client:.0f} KiB | {r.client_cpu_percent:.0f}% |"
        )
    add("")


def durability(results: Results, add: Add) -> None:
    add("## The cost of durability")
    add("")
    series = results.plan.series[0]
    stored = results.capacity.get(series.name, [])
    if not results.memory_store or not stored:
        add("Not measured in this run (the `durability` and `capacity` sections of `bench/run.py`).")
        add("")
        return
    add(
        f"Ours as it ships (every update committed to SQLite, `synchronous=FULL`, before anyone sees it) "
        f"beside ours with `STORE=memory` (nothing stored), {series.name}. *Commit* is the store's own "
        "latency for one group commit and *updates per commit* its batch size, from the server's "
        "`collab_store_commit_seconds` and `collab_store_commit_updates` after the load (p50 / p99 "
        f"interpolated in the histogram's buckets, as Prometheus does); *slow* counts commits longer than "
        f"{SLOW_COMMIT_S * 1000:.0f} ms, each of which held every room's edits while it lasted."
    )
    add("")
    add("| Clients | memory p50 / p99 | SQLite p50 / p99 | Commit p50 / p99 ms | Slow | Updates per commit |")
    add("|---:|---|---|---|---:|---:|")
    for memory in results.memory_store:
        sqlite = find(stored, "ours", memory.clients)
        stats = sqlite.extra.get("store", {}) if sqlite is not None else {}
        commit = f"{ms(stats['commit_p50_ms'])} / {ms(stats['commit_p99_ms'])}" if stats.get("commits") else "–"
        per_commit = f"{stats['updates_per_commit']:.1f}" if stats.get("commits") else "–"
        slow = _slow_commits(sqlite)
        add(f"| {memory.clients} | {cell(memory)} | {cell(sqlite)} | {commit} | {slow} | {per_commit} |")
    add("")
    memory_capacity = capacity_of(results.memory_store, "ours")
    sqlite_capacity = capacity_of(stored, "ours")
    share = f"{sqlite_capacity / memory_capacity:.2f}×" if memory_capacity else "–"
    add(
        f"Capacity (p99 under {CAPACITY_P99_MS:.0f} ms, nothing dropped or lost): {sqlite_capacity} clients "
        f"with SQLite, {memory_capacity} with memory: {share}."
    )
    add("")


def doc_size(results: Results, add: Add) -> None:
    if not results.doc_size:
        return
    rooms, clients = results.plan.doc_load
    add(f"## Document size ({rooms} rooms × {clients} clients at 5 edits/s)")
    add("")
    add("Bytes per keystroke: payload bytes every other member received for one edit, all together.")
    add(f"*Slow commits*: our store's commits that took longer than {SLOW_COMMIT_S * 1000:.0f} ms in that run. An")
    add("update is shown once committed, so one commit that waits on a slow fsync of this machine's disk")
    add("holds every room's edits meanwhile and can set the p99 of a whole run, at either size.")
    add("")
    add(ISOLATED_NOTE)
    add("")
    add("| Server | Document | Run | p50 / p99 ms | Bytes per keystroke | Slow commits | Server CPU | Other work |")
    add("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in results.doc_size:
        add(
            f"| {r.name} | {r.doc_chars:,} chars | {_run(r)} | {cell(r)} | {r.received_bytes_per_edit:,.0f} | "
            f"{_slow_commits(r)} | {r.server_cpu_percent:.0f}% | {r.other_cpu_percent:.0f}% |"
        )
    small, large = results.plan.doc_sizes
    notes = []
    for name in ("ours", "naive"):
        a = [r for r in results.doc_size if r.name == name and r.doc_chars == small]
        b = [r for r in results.doc_size if r.name == name and r.doc_chars == large]
        if a and b:
            p99 = ratio_of_medians(b, a, "p99_ms")
            size = ratio_of_medians(b, a, "received_bytes_per_edit")
            notes.append(f"{name}: p99 {p99:.2f}×, bytes per keystroke {size:.2f}×")
    add("")
    add(f"From {small:,} to {large:,} characters (median against median): " + "; ".join(notes) + ".")
    add("")


def slow(results: Results, add: Add) -> None:
    if not results.slow:
        return
    rooms, clients = results.plan.slow_load
    chars = results.plan.slow_doc_chars
    add(f"## Slow consumer ({rooms} rooms × {clients} clients, 4 typing at 5 edits/s, {chars:,} characters)")
    add("")
    add("The fifth member of each room either reads and never types (control) or stops reading when")
    add("the load starts (stalled). Latencies are those of the four others.")
    add("")
    add(ISOLATED_NOTE)
    add("")
    add("| Server | Fifth member | Run | p50 / p99 ms | Stalled clients dropped by the server | Other work |")
    add("|---|---|---:|---|---:|---:|")
    for r in results.slow:
        fifth = "stalled" if r.stalled else "reads"
        dropped = r.stalled_dropped if r.stalled else "–"
        add(f"| {r.name} | {fifth} | {_run(r)} | {cell(r)} | {dropped} | {r.other_cpu_percent:.0f}% |")
    add("")


def idle(results: Results, add: Add) -> None:
    if not results.idle:
        return
    add("## Memory per idle connection")
    add("")
    add("RSS growth of the server over idle joined connections (rooms of 5), after a warm-up.")
    add("")
    add("| Server | Connections | RSS before | RSS after | Per connection |")
    add("|---|---:|---:|---:|---:|")
    for row in results.idle:
        add(
            f"| {row['kind']} | {row['idle_connections']} | {row['rss_before_mib']} MiB | "
            f"{row['rss_after_mib']} MiB | {row['kib_per_connection']} KiB |"
        )
    add("")


def browser(results: Results, add: Add) -> None:
    add("## Browser clients")
    add("")
    if not results.browser:
        add("Not measured in this run. `make bench` includes it (the `browser` section of `bench/run.py`);")
        add("`.venv/bin/python bench/browser.py` alone prints it.")
        add("")
        return
    first = results.browser[0]
    add(
        f"Headless Chromium pages of the room editor, in rooms of {first.room_size}: in each room "
        f"{first.writers} page types {first.rate:g} edits a second for {first.seconds:g} s and the others read. "
        "Server memory: RSS growth over the open pages (live and settled, before typing) divided by "
        "their number. Latency: from the typist's edit to its arrival in each other page's editor, "
        "read from the pages' own clock, in ms; *on the way* is the part until the frame reached the "
        "reader's editor, before it was applied. Every page is rendered by one Chromium on the same two "
        "cores as the server (*CPU*: server / browser / other work, 100% = one core)."
    )
    add("")
    add(
        f"| Pages | Server RSS | Per page | < {PAGE_TARGET_MIB:g} MiB | p50 / p95 / p99 ms | On the way, p50 "
        "| Received (lost) | CPU s / b / o |"
    )
    add("|---:|---:|---:|---|---|---:|---:|---|")
    for r in results.browser:
        if r.live_pages == 0:
            add(f"| {r.pages} | failed: {r.error} | – | – | – | – | – | – |")
            continue
        latency = f"{ms(r.p50_ms)} / {ms(r.p95_ms)} / {ms(r.p99_ms)}"
        flags = [f"{r.reloaded_pages} pages reloaded"] if r.reloaded_pages else []
        if r.error:
            flags.append(f"stopped early: {r.error}")
        add(
            f"| {r.live_pages} | {r.rss_before_mib:.0f} → {r.rss_after_mib:.0f} MiB | {r.mib_per_page:.2f} MiB | "
            f"{yes(r.mib_per_page < PAGE_TARGET_MIB)} | {latency}"
            + (f" ({', '.join(flags)})" if flags else "")
            + f" | {ms(r.transit_p50_ms)} | {r.deliveries} ({r.undelivered}) | "
            f"{r.server_cpu_percent:.0f}% / {r.browser_cpu_percent:.0f}% / {r.other_cpu_percent:.0f}% |"
        )
    add("")
    spread = max(r.clock_spread_ms for r in results.browser)
    add(
        f"The pages' clocks agreed within {spread:.2f} ms. RSS after the typing: "
        + ", ".join(f"{r.rss_typed_mib:.0f} MiB with {r.live_pages} pages" for r in results.browser)
        + "."
    )
    add("")


def run_start(results: Results, add: Add) -> None:
    """Running code in the browser. The section states its own command and date: it may be
    measured apart from the rest of the report and spliced into it (``bench/report.py --splice``)."""
    add(RUN_START_HEADING)
    add("")
    result = results.run_start
    if result is None:
        add("Not measured in this run. `make bench` includes it (the `run_start` section of `bench/run.py`);")
        add("`.venv/bin/python bench/run_start.py` alone prints it.")
        add("")
        return
    load = ", ".join(f"{value:.2f}" for value in results.load_average)
    count = len(result.repetitions)
    add(
        f"Measured by {results.command} on {results.started:%Y-%m-%d %H:%M} UTC (load average {load}): "
        f"{count} fresh headless Chromiums, each opening a room page in Python and then, in a second "
        "Chromium, one in JavaScript, against one server of ours on loopback. Medians over the "
        "repetitions, with their range; ratios are of the medians. The machine is shared: read the "
        "medians and ratios rather than single runs."
    )
    add("")
    if result.error:
        add(f"**Stopped early** after {count} of {result.runs} repetitions: {result.error}")
        add("")
    if not result.repetitions:
        return
    add("**Download.** Every `/runner/` response the page fetched to run the language, as the browser")
    add("received it (compressed when the server compressed) and decoded.")
    add("")
    add("| To run | Files | As transferred | Uncompressed | Transferred ÷ uncompressed |")
    add("|---|---:|---:|---:|---:|")
    first = result.repetitions[0]
    for language, files in (("Python", first.python_files), ("JavaScript", first.javascript_files)):
        key = "python" if language == "Python" else "javascript"
        sent = statistics.median(sum(f.transferred for f in getattr(r, f"{key}_files")) for r in result.repetitions)
        whole = statistics.median(sum(f.decoded for f in getattr(r, f"{key}_files")) for r in result.repetitions)
        add(f"| {language} | {len(files)} | {_bytes(sent)} | {_bytes(whole)} | {ratio(sent, whole)} |")
    add("")
    listed = "; ".join(
        f"{f.name} {_bytes(f.transferred)}"
        + (f" ({f.encoding} of {_bytes(f.decoded)})" if f.encoding else "")
        + ("" if f.measured == "browser" else f" [{f.measured}]")
        for f in first.python_files + first.javascript_files
    )
    add(
        f"Files of the first repetition, as transferred: {listed}. Chromium counts no body for a "
        "worker's own script: [content-length] marks a size read from that header instead, [decoded] "
        "one with no header, counted decoded."
    )
    add("")
    add(f"| Measure | Median | Range over {count} runs |")
    add("|---|---:|---:|")
    for label, key, unit in RUN_START_ROWS:
        low, high = result.extent(key)
        if unit == "ms":
            add(f"| {label} | {_ms(result.median(key))} ms | {_ms(low)}–{_ms(high)} ms |")
        else:
            add(f"| {label} | {result.median(key) / 1024:,.0f} MiB | {low / 1024:,.0f}–{high / 1024:,.0f} MiB |")
    add("")
    first_ms, warm_ms, javascript_ms = (result.median(k) for k in ("first_ms", "warm_ms", "javascript_ms"))
    add(
        f"First ÷ warm Python run: {ratio(first_ms, warm_ms)}; warm Python ÷ JavaScript run: "
        f"{ratio(warm_ms, javascript_ms)}. Pyodide's share is the median of each repetition's difference. "
        "PSS splits the pages Chromium's code shares with every other Chromium running on the machine "
        "at the time, so both pages' PSS, and their difference, move with other work: quote the medians."
    )
    add("")


def _bytes(value: float) -> str:
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.2f} MiB"
    return f"{value / 1024:.1f} KiB"


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
