"""Smoke tests of the benchmark tools: the load generator drives every kind of server, the
browser benchmark drives real pages, a previous version runs from git, and the report renders
from saved results. Tiny bounded loads of a second or two, and no assertion about speed."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import abuse
import abuse_report
import browser
import cluster
import cluster_report
import cluster_result
import cluster_services
import previous
import prometheus
import push_cost
import report
import run_start
import sections
import servers
from browser import BrowserLoad, BrowserResult
from cluster_result import RecoveryRun
from load import Load, Result, format_result, idle_memory, run_load
from plan import QUICK, Series
from results import Results
from run_start import FileDownload, Repetition, RunStartResult
from servers import Kind

STARTED = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(Kind))
def test_load_generator_measures_every_kind_of_server(kind: Kind) -> None:
    with servers.running(kind) as server:
        load = Load(kind, server.port, rooms=2, clients=3, rate=5.0, seconds=1.5, drain_seconds=3.0, room_prefix="t")
        result = run_load(load, server.pid)

    assert 6 == result.connected
    assert 0 == result.connect_failures
    assert 0 == result.errors
    assert 0 == result.dropped
    assert result.edits > 0
    assert result.deliveries > 0
    assert result.server_cpu_percent >= 0
    assert "latency p50/p95/p99" in format_result(result)


@pytest.mark.slow
def test_stalled_client_and_preloaded_document() -> None:
    with servers.running(Kind.OURS) as server:
        load = Load(
            Kind.OURS,
            server.port,
            rooms=1,
            clients=3,
            rate=5.0,
            seconds=1.0,
            doc_chars=5_000,
            stalled=1,
            drain_seconds=2.0,
            room_prefix="t",
        )
        result = run_load(load, server.pid)

    assert 3 == result.connected
    assert 0 == result.errors
    # Only the two typists measure: the stalled client never counts as a receiver.
    assert result.deliveries + result.undelivered <= result.edits


@pytest.mark.slow
def test_idle_memory_reports_growth_per_connection() -> None:
    with servers.running(Kind.BARE) as server:
        row = idle_memory(Kind.BARE, server.port, server.pid, 10)

    assert "bare" == row["kind"]
    assert 10 == row["idle_connections"]
    assert isinstance(row["kib_per_connection"], float)


@pytest.mark.slow
def test_browser_pages_report_server_memory_and_the_latency_read_in_the_pages() -> None:
    if shutil.which(browser.CHROMIUM) is None:
        pytest.fail(f"{browser.CHROMIUM} is missing: run `make system` (Debian packages chromium and chromium-driver)")
    load = BrowserLoad(2, seconds=2.0, settle_seconds=0.5, drain_seconds=5.0, room_prefix="t")

    result = browser.run_browser(load)

    assert "" == result.error
    assert 2 == result.live_pages
    assert 0 == result.reloaded_pages
    assert 0 == result.page_errors
    assert result.edits > 0
    # One typist and one reader: the reader saw every word, once.
    assert result.edits == result.deliveries
    assert 0 == result.undelivered
    assert 0 < result.p50_ms <= result.p99_ms < math.inf
    assert result.transit_p50_ms <= result.p99_ms
    assert 0 < result.rss_before_mib
    assert 0 < result.rss_after_mib
    assert result.ok
    assert "latency p50/p95/p99" in browser.format_result(result)


@pytest.mark.slow
def test_run_start_measures_the_download_and_the_runs_in_a_fresh_browser() -> None:
    if shutil.which(run_start.CHROMIUM) is None:
        pytest.fail(f"{run_start.CHROMIUM} is missing: run `make system` (Debian packages chromium, chromium-driver)")

    result = run_start.run(1)

    assert "" == result.error
    [repetition] = result.repetitions
    assert {"pyodide.asm.wasm", "worker_python.js"} <= {f.name for f in repetition.python_files}
    assert ["worker_js.js", "harness.js"] == [f.name for f in repetition.javascript_files]
    assert all(0 < f.transferred and 0 < f.decoded for f in repetition.python_files + repetition.javascript_files)
    assert 0 < repetition.warm_ms < repetition.first_ms
    assert 0 < repetition.javascript_ms
    assert 0 < repetition.pss_javascript_kib < repetition.pss_python_kib
    assert "first Python run" in run_start.format_result(result)


def _run_start() -> RunStartResult:
    def repetition(first: float, warm: float, python_kib: int) -> Repetition:
        return Repetition(
            first_ms=first,
            warm_ms=warm,
            javascript_ms=10.0,
            pss_python_kib=python_kib,
            pss_javascript_kib=400 * 1024,
            python_files=[
                FileDownload("pyodide.asm.wasm", 3 * 1024 * 1024, 9 * 1024 * 1024, "gzip", "browser"),
                FileDownload("worker_python.js", 2048, 7168, "gzip", "content-length"),
            ],
            javascript_files=[FileDownload("worker_js.js", 7168, 7168, "", "content-length")],
        )

    return RunStartResult(
        runs=3,
        repetitions=[
            repetition(6000.0, 25.0, 500 * 1024),
            repetition(8000.0, 20.0, 510 * 1024),
            repetition(5000.0, 30.0, 490 * 1024),
        ],
    )


def _browser(pages: int, mib_per_page: float) -> BrowserResult:
    result = BrowserResult(pages=pages, rooms=pages // 5, room_size=5, writers=1, rate=5.0, seconds=15.0)
    result.live_pages = pages
    result.rss_before_mib = 80.0
    result.rss_after_mib = 80.0 + pages * mib_per_page
    result.rss_typed_mib = result.rss_after_mib + 0.5
    result.edits, result.deliveries = 150, 600
    result.p50_ms, result.p95_ms, result.p99_ms, result.transit_p50_ms = 20.0, 60.0, 90.0, 12.0
    return result


def _result(kind: Kind, clients: int, p99: float, server: str = "", **fields: float) -> Result:
    result = Result(
        kind=kind.value,
        rooms=clients // 5,
        clients_per_room=5,
        clients=clients,
        rate=5.0,
        seconds=1.0,
        doc_chars=0,
        stalled=0,
        silent=0,
        batch=kind is Kind.OURS,
        procs=1,
        connected=clients,
        p50_ms=p99 / 3,
        p95_ms=p99 / 2,
        p99_ms=p99,
        max_ms=p99 * 2,
        server=server,
    )
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def _measured() -> Results:
    """Results of every section, as a run would have saved them."""
    results = Results(QUICK, STARTED, sections=["capacity", "durability"], previous=previous.Previous("b2ae081"))
    results.previous.commit, results.previous.subject = "b2ae081" + "0" * 33, "An earlier change"
    small, large = QUICK.series
    results.capacity[small.name] = [
        _result(Kind.OURS, 10, 5.0),
        _result(Kind.OURS, 20, 30.0),
        _result(Kind.BARE, 10, 2.0),
        _result(Kind.BARE, 20, 3.0),
        _result(Kind.NAIVE, 10, 8.0),
        _result(Kind.NAIVE, 20, 150.0),
        _result(Kind.OURS, 10, 6.0, "ours-fast-path-off"),
        _result(Kind.OURS, 20, 45.0, "ours-fast-path-off"),
        _result(Kind.OURS, 10, 10.0, "previous"),
        _result(Kind.OURS, 20, 120.0, "previous"),
    ]
    results.capacity[large.name] = [_result(Kind.OURS, 20, 9.0), _result(Kind.BARE, 20, 12.0)]
    results.target_runs = [_result(Kind.OURS, 10, p99) for p99 in (20.0, 40.0, 60.0)]
    results.doc_size = [
        _result(Kind.OURS, 10, 10.0, doc_chars=1_000, received_bytes_per_edit=600.0),
        _result(Kind.OURS, 10, 11.0, doc_chars=20_000, received_bytes_per_edit=620.0),
        _result(Kind.NAIVE, 10, 10.0, doc_chars=1_000, received_bytes_per_edit=4_000.0),
        _result(Kind.NAIVE, 10, 90.0, doc_chars=20_000, received_bytes_per_edit=80_000.0),
    ]
    results.slow = [
        _result(Kind.OURS, 10, 10.0, silent=1),
        _result(Kind.OURS, 10, 11.0, stalled=1),
        _result(Kind.NAIVE, 10, 10.0, silent=1),
        _result(Kind.NAIVE, 10, float("inf"), stalled=1, undelivered=40),
    ]
    results.idle = [
        {
            "kind": "ours",
            "idle_connections": 20,
            "rss_before_mib": 70.0,
            "rss_after_mib": 71.0,
            "kib_per_connection": 51.2,
        }
    ]
    results.browser = [_browser(10, 0.75), _browser(30, 0.5)]
    results.capacity[small.name][0].extra["store"] = {
        "commits": 100.0,
        "commit_p50_ms": 1.5,
        "commit_p99_ms": 4.0,
        "slow_commits": 3.0,
        "updates_per_commit": 2.5,
    }
    results.memory_store = [_result(Kind.OURS, 10, 4.0), _result(Kind.OURS, 20, 120.0)]
    results.run_start = _run_start()

    return results


def test_report_renders_every_section_and_checks_the_targets() -> None:
    small, large = QUICK.series

    text = report.render(_measured())

    for heading in (
        "## Targets",
        f"## Capacity: {small.name}",
        f"## Capacity: {large.name}",
        "## Document size",
        "## Slow consumer",
        "## Memory per idle connection",
        "## The cost of durability",
        "## Browser clients",
        "## Running code in the browser",
        "## How it is measured",
    ):
        assert heading in text
    assert "| p99 < 50 ms at 10 clients (rooms of 5 at 5 edits/s) | median 40 ms (runs: 20 (other work 0%)" in text
    assert "ours ≥ 20, bare ≥ 20, naive 10 clients | yes |" in text
    assert "+10%; 1 runs each, no fsync wait) | yes |" in text
    assert "| < 100 KiB per idle raw connection | 51 KiB | yes |" in text
    assert "| < 1 MiB per open browser room page | 0.75 MiB with 10 pages, 0.50 MiB with 30 pages | yes |" in text
    assert "| 30 | 80 → 95 MiB | 0.50 MiB | yes | 20 / 60 / 90 | 12 | 600 (0) |" in text
    assert "lost" in text
    assert "| 1.5 / 4.0 | 3 | 2.5 |" in text
    assert "20 clients with SQLite, 10 with memory: 2.00×." in text


def test_report_gives_the_medians_of_running_code_their_range_and_ratios() -> None:
    text = report.render(_measured())

    assert "| Python | 2 | 3.00 MiB | 9.01 MiB | 0.33× |" in text
    assert "| JavaScript | 1 | 7.0 KiB | 7.0 KiB | 1.00× |" in text
    assert "worker_python.js 2.0 KiB (gzip of 7.0 KiB) [content-length]" in text
    assert "| First Python run, click to output (cold cache) | 6,000 ms | 5,000–8,000 ms |" in text
    assert "| Warm Python run, click to output | 25 ms | 20–30 ms |" in text
    assert "| Pyodide's share (the difference) | 100 MiB | 90–110 MiB |" in text
    assert "First ÷ warm Python run: 240.00×; warm Python ÷ JavaScript run: 2.50×." in text
    assert '{"section": "run_start", "command": "`make bench`", "runs": 3,' in text


def test_a_run_without_the_running_code_section_says_so() -> None:
    text = report.render(Results(QUICK, STARTED))

    assert "## Running code in the browser\n\nNot measured in this run." in text


def test_results_saved_before_the_running_code_section_still_load(tmp_path: Path) -> None:
    data = Results(QUICK, STARTED).to_json()
    del data["run_start"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))

    assert Results.load(path).run_start is None


def test_a_spliced_section_replaces_its_own_block_and_keeps_every_other(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    earlier = _measured()
    earlier.run_start = None
    report.write(earlier, output)
    before = output.read_text()
    later = Results(QUICK, STARTED, command="`bench/run.py --only run_start --splice`", sections=["run_start"])
    later.run_start = _run_start()

    report.splice(later, output)
    report.splice(later, output)  # a second time replaces, rather than adds

    text = output.read_text()
    assert 1 == text.count("## Running code in the browser")
    assert "Measured by `bench/run.py --only run_start --splice` on 2026-01-02 03:04 UTC" in text
    assert "Not measured in this run. `make bench` includes it (the `run_start`" not in text
    assert text.index("## Running code in the browser") < text.index("## Abuse")
    assert 1 == text.count('{"section": "run_start"')
    # Everything else as the earlier run wrote it.
    block = report._block(text, "## Running code in the browser")
    old = report._block(before, "## Running code in the browser")
    assert block is not None and old is not None
    raw = '\n{"section": "run_start"'
    assert before[: old[0]] + before[old[1] :] == (text[: block[0]] + text[block[1] :]).replace(
        raw + text.split(raw)[1].split("\n")[0], ""
    )


def test_a_report_written_before_the_section_existed_gains_it_before_the_abuse_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    report.write(_measured(), output)
    text = output.read_text()
    where = report._block(text, "## Running code in the browser")
    assert where is not None
    output.write_text(text[: where[0]] + text[where[1] :])
    later = Results(QUICK, STARTED, sections=["run_start"])
    later.run_start = _run_start()

    report.splice(later, output)

    spliced = output.read_text()
    assert spliced.index("## Browser clients") < spliced.index("## Running code in the browser")
    assert spliced.index("## Running code in the browser") < spliced.index("## Abuse")


def test_only_sections_that_stand_alone_can_be_spliced(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    report.write(_measured(), output)

    with pytest.raises(ValueError, match="sections browser cannot be spliced: only run_start, cluster can"):
        report.splice(Results(QUICK, STARTED, sections=["browser", "run_start"]), output)


def test_report_puts_this_code_beside_its_previous_version_and_the_fast_path_off() -> None:
    text = report.render(_measured())

    assert "## This code against its previous version, and the fast path off" in text
    assert "*previous* is `b2ae081` (b2ae08100000: An earlier change)" in text
    # p50 and p99 of ours against previous, and of the fast path off against ours.
    assert "| 10 | 1.7 / 5.0 | 2.0 / 6.0 | 3.3 / 10 | 0.50× | 0.50× | 1.20× |" in text
    assert "| 20 | 10 / 30 | 15 / 45 | 40 / 120 ✗ | 0.25× | 0.25× | 1.50× |" in text
    assert "Capacity: ours ≥ 20, fast path off ≥ 20, previous 10 clients; ours ÷ previous 2.00×." in text
    assert "This code has no `FAST_PATH` setting yet" in text


def test_a_previous_version_that_could_not_be_run_is_reported() -> None:
    results = _measured()
    assert results.previous is not None
    results.previous.error = "`nope` is not a commit of this repository"

    text = report.render(results)

    assert "The previous version, `b2ae081`, could not be run: `nope` is not a commit" in text
    assert "previous not run clients." in text


def test_a_report_renders_again_from_the_saved_results(tmp_path: Path) -> None:
    results = _measured()
    results.abuse = _abuse_result()
    path = tmp_path / "results.json"

    results.save(path)

    assert report.render(results) == report.render(Results.load(path))


def test_the_report_keeps_its_hand_written_notes(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    notes = f"{report.NOTES_BEGIN}\n\nProfiled by hand.\n\n{report.NOTES_END}"
    output.write_text(f"# An older report\n\n{notes}\n\nold numbers\n")

    report.write(Results(QUICK, STARTED), output)

    text = output.read_text()
    assert 1 == text.count("Profiled by hand.")
    assert "old numbers" not in text
    assert text.index("## Abuse") < text.index("Profiled by hand.") < text.index("## How it is measured")


def test_a_new_report_takes_the_notes_of_the_benchmarks_page(tmp_path: Path) -> None:
    text = report.render(Results(QUICK, STARTED), report.kept_notes(tmp_path / "new.md"))

    assert report.notes(report.DOC.read_text()) in text


def test_a_ref_that_is_no_commit_is_an_error_not_an_exception() -> None:
    with previous.extracted("no-such-ref-anywhere") as version:
        assert version.root is None
        assert "`no-such-ref-anywhere` is not a commit of this repository" == version.error


def test_the_previous_version_is_extracted_from_git_and_removed_after() -> None:
    with previous.extracted("HEAD") as version:
        assert "" == version.error
        assert version.root is not None
        root = version.root
        assert (root / "app.py").is_file()
        assert 40 == len(version.commit)

    assert not root.exists()


@pytest.mark.slow
def test_capacity_runs_the_same_load_on_every_contender_the_previous_version_included() -> None:
    plan = dataclasses.replace(QUICK, seconds=1.0, series=(Series("rooms of 2", 2, 5.0, (4,)),))
    results = Results(plan, STARTED)
    with previous.extracted("HEAD") as version:
        assert version.root is not None
        results.previous = version
        contenders = {
            servers.OURS.name: servers.OURS,
            servers.FAST_PATH_OFF.name: servers.FAST_PATH_OFF,
            sections.PREVIOUS: servers.Contender(sections.PREVIOUS, Kind.OURS, root=version.root),
            servers.BARE.name: servers.BARE,
        }
        sections.capacity(sections.Bench(results, contenders))

    measured = results.capacity["rooms of 2"]
    assert ["ours", "ours-fast-path-off", "previous", "bare"] == [r.name for r in measured]
    assert all(4 == r.connected and r.deliveries > 0 for r in measured)
    assert "" == version.error


def test_histogram_quantiles_are_interpolated_as_prometheus_does() -> None:
    text = "\n".join(
        [
            'collab_store_commit_seconds_bucket{le="0.001"} 50.0',
            'collab_store_commit_seconds_bucket{le="0.002"} 90.0',
            'collab_store_commit_seconds_bucket{le="0.005"} 100.0',
            'collab_store_commit_seconds_bucket{le="+Inf"} 100.0',
            "collab_store_commit_seconds_count 100.0",
            "collab_store_commit_seconds_sum 0.12",
        ]
    )
    buckets, total, count = prometheus.histogram(text, "collab_store_commit_seconds")
    assert (0.12, 100.0) == (total, count)
    assert math.isclose(0.001, prometheus.quantile(0.5, buckets))
    assert math.isclose(0.002 + 0.003 * 0.9, prometheus.quantile(0.99, buckets))
    assert math.isnan(prometheus.quantile(0.5, []))
    assert 10.0 == 100.0 - prometheus.count_up_to(buckets, 0.002)  # commits slower than 2 ms
    assert math.isnan(prometheus.count_up_to(buckets, 0.05))  # not a bound of these buckets


def test_a_browser_set_that_failed_is_reported_and_fails_the_memory_target() -> None:
    results = Results(QUICK, STARTED)
    failed = BrowserResult(pages=30, rooms=6, room_size=5, writers=1, rate=5.0, seconds=15.0)
    failed.error = "TimeoutError: Page.wait_for_function: Timeout 60000ms exceeded."
    results.browser = [_browser(10, 0.75), failed]

    text = report.render(results)

    assert "not measured with 30 pages (TimeoutError: Page.wait_for_function" in text
    assert "| 30 | failed: TimeoutError" in text
    assert "per open browser room page | 0.75 MiB with 10 pages, not measured" in text
    assert text.split("per open browser room page")[1].split("\n")[0].endswith("| **no** |")


def test_a_run_without_the_browser_section_says_so() -> None:
    text = report.render(Results(QUICK, STARTED))

    assert "| < 1 MiB per open browser room page | not measured in this run | – |" in text
    assert "## Browser clients\n\nNot measured in this run." in text


class CountingTransport(push_cost.InstantTransport):
    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[str, int]] = []

    def write(self, message: str) -> None:
        super().write(message)
        decoded = json.loads(message)
        for item in decoded if isinstance(decoded, list) else [decoded]:
            if item["type"] == "update":
                # Others learn an update's author by user_id only.
                self.updates.append((item["user_id"], item["seq"]))


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_push_cost_applies_every_push_and_delivers_it_to_every_member(store: str, tmp_path: Path) -> None:
    from rooms.store.memory import MemoryStore
    from rooms.store.sqlite import SqliteStore

    backend = MemoryStore() if store == "memory" else SqliteStore(tmp_path / "rooms.sqlite3")
    transports: list[push_cost.InstantTransport] = []
    seconds = await push_cost.run(2, 3, 60, backend, transports, CountingTransport)

    assert seconds > 0
    # Every push applied (none refused as stale or malformed), and seen by its room's three
    # members, its author's confirmation included.
    received = [t.updates for t in transports if isinstance(t, CountingTransport)]
    assert [30] * 6 == [len(updates) for updates in received]
    assert all(len(set(updates)) == 30 for updates in received)


# The abuse section: the costliest frames and a flood (bench/abuse.py)

SMOKE_ABUSE = abuse.AbusePlan(
    repeats=1, history=110, doc_chars=3_000, writers=2, rooms=1, clients=2, seconds=1.0, pairs=1
)


@pytest.mark.slow
def test_abuse_measures_every_costly_frame_and_the_flood() -> None:
    result = abuse.run(SMOKE_ABUSE, quick=True)

    # Where the oldest version gets a snapshot, the hello with the largest catch-up follows it.
    frames = [cost.frame for cost in result.frames if cost.frame != "hello, the largest catch-up"]
    assert [
        "push",
        "push, one version too far behind",
        "full-text code_change",
        "full-text code_change",
        "full-text code_change",
        "hello",
        "GET /api/rooms/{id}",
        "GET /api/rooms/{id}/history?limit=1000",
    ] == frames
    assert all(len(cost.cpu_ms) == 1 and cost.cpu_ms[0] > 0 and cost.reply for cost in result.frames)
    assert result.history_versions > int(result.limits["lag"])
    assert 1 == len(result.baseline) == len(result.flooded) == len(result.floods)
    assert result.baseline[0].latencies_ms
    assert result.floods[0].sent > 0

    lines: list[str] = []
    abuse_report.render(result, lines.append)
    text = "\n".join(lines)
    assert text.startswith("## Abuse")
    assert "| Frame | Shape | Server CPU ms | Wall ms | Reply | Reply bytes | ≤ 25 ms |" in text
    assert "p99 with the flood against without (medians)" in text
    assert 2 == len(abuse_report.target_rows(result))
    json.dumps(result.to_json())


def _abuse_result() -> abuse.AbuseResult:
    result = abuse.AbuseResult(abuse.limits_of(abuse.Settings.model_construct()), history_versions=2001)
    result.frames = [
        abuse.FrameCost("push", "1,000 parts", cpu_ms=[30.0, 20.0, 24.0], wall_ms=[25.0], reply="update"),
        abuse.FrameCost("hello", "resuming", cpu_ms=[5.0], wall_ms=[6.0], reply="welcome"),
    ]
    result.baseline = [abuse.Typing("without-1", 2, 5, 5.0, 8.0, latencies_ms=[1.0] * 98 + [10.0] * 2)]
    result.flooded = [abuse.Typing("with-1", 2, 5, 5.0, 8.0, latencies_ms=[2.0] * 98 + [40.0] * 2)]
    result.floods = [abuse.Flood(seconds=8.0, sent=30, applied=20, refused={"rate_limited": 10}, lag=100)]
    return result


def test_report_renders_the_abuse_section_and_its_targets() -> None:
    results = Results(QUICK, STARTED)
    results.abuse = _abuse_result()

    text = report.render(results)

    assert "## Abuse" in text
    assert "| No client frame costs over 25 ms of server CPU (default limits) | worst: push, 24 ms | yes |" in text
    assert "| median 40 ms (without the flood 10 ms, 4.00×) | yes |" in text
    assert "| push | 1,000 parts | 24 (30, 20, 24) | 25 | update |" in text
    assert "| 1 | 1.0 / 10 | 2.0 / 40 | 20 / 10 (rate_limited 10) in 8 s |" in text
    assert '"section": "abuse"' in text


def test_a_run_without_the_abuse_section_says_so() -> None:
    text = report.render(Results(QUICK, STARTED))
    assert "## Abuse\n\nNot run in this invocation" in text
    assert "server CPU (default limits)" not in text


def test_abuse_changes_have_the_most_parts_and_keep_the_length() -> None:
    changes = abuse.push_changes(3_000, 1_000, 1_000)
    assert len(changes) in (999, 1_000)
    covered = sum(part if isinstance(part, int) else part[0] for part in changes)
    added = sum(len(part[1]) for part in changes if not isinstance(part, int))
    removed = sum(part[0] for part in changes if not isinstance(part, int))
    assert (3_000, 0) == (covered, added - removed)
    with pytest.raises(ValueError, match="too short"):
        abuse.push_changes(1_500, 1_000, 1_000)


# Several processes (bench/cluster.py)

CLUSTER_METRICS = "\n".join(
    [
        "collab_rooms 3.0",
        "collab_members 15.0",
        'collab_store_commit_seconds_bucket{le="0.001"} 40.0',
        'collab_store_commit_seconds_bucket{le="0.01"} 100.0',
        'collab_store_commit_seconds_bucket{le="+Inf"} 100.0',
        "collab_store_commit_seconds_count 100.0",
        "collab_store_commit_seconds_sum 0.3",
        'collab_store_commit_updates_bucket{le="+Inf"} 100.0',
        "collab_store_commit_updates_count 100.0",
        "collab_store_commit_updates_sum 250.0",
        "collab_commit_conflicts_total 2.0",
        "collab_catch_ups_total 1.0",
        "collab_stream_errors_total 1.0",
        'collab_stream_appends_total{result="ok"} 240.0',
        'collab_stream_appends_total{result="error"} 3.0',
        "collab_stream_appends_created 1.7e9",
    ]
)


def test_cluster_metrics_are_summed_over_their_labels() -> None:
    assert 243.0 == cluster_result.metric_total(CLUSTER_METRICS, "collab_stream_appends_total")
    assert 3.0 == cluster_result.metric_total(CLUSTER_METRICS, "collab_stream_appends_total", 'result="error"')
    assert 3.0 == cluster_result.metric_total(CLUSTER_METRICS, "collab_rooms")  # not collab_rooms_something
    assert 0.0 == cluster_result.metric_total(CLUSTER_METRICS, "collab_connections")


def test_a_process_sample_reads_its_rooms_commits_and_cluster_counters() -> None:
    log = "\n".join(
        [
            '{"event": "catch_up_failed", "level": "warning", "room_id": "a"}',
            '{"event": "catch_up_failed", "level": "warning", "room_id": "b"}',
            '{"event": "room_caught_up", "level": "info"}',
            '{"event": "stream_update_refused", "level": "error"}',
            "Traceback (most recent call last):",
            "",
        ]
    )

    sample = cluster_result.process_sample(1.5, CLUSTER_METRICS, CLUSTER_METRICS, log)

    assert (1.5, 3, 15) == (sample.cpu_seconds, sample.rooms, sample.members)
    assert (250.0, 100.0) == (sample.updates, sample.commits)
    assert math.isclose(0.001 + 0.009 * (50 - 40) / 60, sample.commit_p50_ms / 1000)
    assert (2.0, 1.0, 4.0) == (sample.conflicts, sample.catch_ups, sample.stream_errors)
    assert {"catch_up_failed": 2, "stream_update_refused": 1, "unparsed": 1} == sample.log_events


def _cluster_load(
    part: str, processes: int, clients: int, p99: float, rooms: list[int], store: str = "postgres"
) -> cluster_result.ClusterLoad:
    result = _result(Kind.OURS, clients, p99, "1 process" if processes == 1 else f"{processes} processes")
    result.edits = clients * 5
    result.machine_cpu_percent = 150.0
    result.server_cpu_percent = 80.0
    result.client_cpu_percent = 30.0
    result.extra["label"] = f"cluster, {part}, {processes} processes, {clients} clients"
    cpu = 0.8 * (1 + (processes - 1) / 4)  # every process together: more CPU per edit with more processes
    samples = [
        cluster_result.ProcessSample(cpu_seconds=cpu / processes, rooms=n, members=n * 5, updates=10.0, commits=5.0)
        for n in rooms
    ]
    for sample in samples:
        sample.commit_p50_ms, sample.commit_p99_ms = (4.0, 12.0) if store == "postgres" else (1.0, 3.0)
    return cluster_result.ClusterLoad(
        part, processes, store, result, samples, haproxy_cpu_seconds=0.1, services_cpu_seconds=0.2
    )


def _cluster() -> cluster_result.ClusterResult:
    small, large = cluster_result.QUICK.series
    out = cluster_result.ClusterResult(cluster_result.QUICK, measured="2026-01-02 03:04", load_average=(1.0, 2.0, 3.0))
    out.software, out.settings = "PostgreSQL 15.20, Redis 7.0.15, HAProxy 2.6.12", {"CLUSTER_HEAD_CHECK_SECONDS": "2"}
    out.loads = [
        _cluster_load(small.name, 1, 20, 10.0, [4]),
        _cluster_load(small.name, 2, 20, 8.0, [2, 2]),
        _cluster_load(small.name, 3, 20, 150.0, [2, 1, 1]),
        _cluster_load(large.name, 1, 20, 12.0, [2]),
        _cluster_load(large.name, 3, 20, 9.0, [1, 0, 1]),
    ]
    out.stores = [
        _cluster_load("store", 1, 20, 30.0, [4], "postgres"),
        _cluster_load("store", 1, 20, 10.0, [4], "sqlite"),
    ]
    out.recoveries = [
        RecoveryRun([4, 1, 1], reconnected_s=0.2, recovered_s=0.5, typed=40, agreed=True),
        RecoveryRun([4, 1, 1], reconnected_s=0.4, recovered_s=0.9, typed=40, agreed=True, log_events={"x": 2}),
        RecoveryRun([4, 1, 1], typed=12, lost=1, error="every client back: not within 30 s: 5 of 6 clients live"),
    ]
    return out


def test_report_renders_the_cluster_section() -> None:
    results = Results(QUICK, STARTED, command="`bench/run.py --only cluster`", sections=["cluster"])
    results.cluster = _cluster()

    text = report.render(results)

    section = text.split(f"\n{cluster_report.HEADING}\n")[1].split("<!-- notes")[0]
    assert (
        "Measured by `bench/run.py --only cluster` on 2026-01-02 03:04 UTC (load average 1.00, 2.00, 3.00;" in section
    )
    # Per process: rooms (members) and CPU; all processes' CPU per edit typed (1 s / 100 edits).
    assert (
        "| 20 | 100 | 2 | 2.7 / 8.0 | 2 (10) / 2 (10) | 50% / 50% | 10 | 4.0 / 12 | 10% | 20% | 30% | 10% |" in section
    )
    assert "against 1 process, at 20 clients: 2 processes 1.25×, 3 processes 1.50×." in section
    assert "| 20 | 100 | 3 | 50 / 150 ✗ | 2 (10) / 1 (5) / 1 (5) |" in section
    assert "1 process ≥ 20, 2 processes ≥ 20, 3 processes < 20 clients." in section
    assert "1 process ≥ 20, 2 processes not run, 3 processes ≥ 20 clients." in section
    assert "all the members of each room were on one process" in section
    assert "| postgres | 1 | 10 / 30 | 4.0 / 12 | 2.0 | 80% | 8.0 | 20% | 10% |" in section
    assert "PostgreSQL ÷ SQLite (medians of 1 and 1 runs): commit p50 4.00×, commit p99 4.00×" in section
    assert "clients' p99 3.00×" in section
    assert "| 1 | 0.20 s | 0.50 s | 40 | 0 | 0 | yes |" in section
    assert (
        "| 3 | failed: every client back: not within 30 s: 5 of 6 clients live | – | 12 | 1 | 0 | **no** |" in section
    )
    assert "Median over 2 runs: all back in 0.30 s, recovered in 0.70 s." in section
    assert "Warnings and errors the surviving processes logged, by event: `x` ×2." in section
    assert '{"section": "cluster"' in text


def test_a_room_held_by_several_processes_is_reported() -> None:
    out = _cluster()
    out.loads = [_cluster_load(out.plan.series[0].name, 2, 20, 8.0, [4, 1])]  # 5 rooms held, 4 in the load
    lines: list[str] = []

    cluster_report.render(out, lines.append, "`x`")

    assert "in 1 loads a room was held by several processes (cluster, rooms of 5" in "\n".join(lines)


def test_a_cluster_section_without_its_services_says_why() -> None:
    out = cluster_result.ClusterResult(
        cluster_result.FULL, measured="2026-01-02 03:04", skipped="haproxy is not installed"
    )
    lines: list[str] = []

    cluster_report.render(out, lines.append, "`make bench`")
    cluster_report.render(None, lines.append, "`make bench`")

    text = "\n".join(lines)
    assert "**Not measured** by `make bench` on 2026-01-02 03:04 UTC: haproxy is not installed." in text
    assert "Not measured in this run. `make bench` includes it (the `cluster` section" in text


def test_cluster_results_render_again_from_the_saved_file(tmp_path: Path) -> None:
    results = Results(QUICK, STARTED, sections=["cluster"])
    results.cluster = _cluster()
    results.cluster.stores[0].per_process[0].commit_p50_ms = math.nan  # a process that committed nothing
    path = tmp_path / "results.json"

    results.save(path)

    assert "NaN" not in path.read_text()
    again = Results.load(path)
    assert again.cluster is not None and math.isnan(again.cluster.stores[0].per_process[0].commit_p50_ms)
    assert report.render(results) == report.render(again)


def test_the_cluster_section_is_spliced_before_the_notes_and_replaced_after(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    report.write(_measured(), output)
    text = output.read_text()
    where = report._block(text, cluster_report.HEADING)
    assert where is not None
    before = text[: where[0]] + text[where[1] :]  # a report written before the section existed
    output.write_text(before)
    later = Results(QUICK, STARTED, command="`bench/run.py --only cluster --splice`", sections=["cluster"])
    later.cluster = _cluster()

    report.splice(later, output)
    report.splice(later, output)

    text = output.read_text()
    assert 1 == text.count(cluster_report.HEADING)
    assert text.index("## Abuse") < text.index(cluster_report.HEADING) < text.index(report.NOTES_BEGIN)
    assert 1 == text.count('{"section": "cluster"')
    assert text.startswith(before.split(report.NOTES_BEGIN)[0])


@pytest.mark.slow
def test_the_cluster_section_measures_scaling_stores_and_recovery() -> None:
    if reason := cluster_services.unavailable():
        pytest.skip(f"the cluster section cannot run here: {reason}")
    plan = dataclasses.replace(
        cluster.QUICK,
        seconds=1.0,
        series=(Series("rooms of 2", 2, 5.0, (4,)),),
        processes=(1, 3),
        store_load=(1, 3),
        recovery_placement=(2, 1, 1),
    )

    out = cluster.run(plan)

    assert [] == out.failures
    assert [1, 3] == [load.processes for load in out.loads]
    assert all(4 == load.result.connected and load.result.deliveries > 0 for load in out.loads)
    assert all(not load.rooms_split and 0 <= load.haproxy_cpu_seconds for load in out.loads)
    assert [2, 2] == [sum(sample.rooms for sample in load.per_process) for load in out.loads]
    assert ["postgres", "sqlite"] == [load.store for load in out.stores]
    assert all(load.per_process[0].commits > 0 for load in out.stores)
    [recovery] = out.recoveries
    assert ("", True, 0, 0) == (recovery.error, recovery.agreed, recovery.lost, recovery.doubled)
    assert 0 < recovery.reconnected_s <= recovery.recovered_s
