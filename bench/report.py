"""Render a benchmark run's results file into ``docs/benchmarks.md``, without measuring.

    .venv/bin/python bench/report.py RESULTS.json                        # rewrites docs/benchmarks.md
    .venv/bin/python bench/report.py RESULTS.json --output /tmp/benchmarks.md
    .venv/bin/python bench/report.py RESULTS.json --splice    # only its run_start and cluster sections

``bench/run.py`` measures, saves the results file and calls `write`. The report keeps the part
of the file it replaces that is written by hand, between `NOTES_BEGIN` and `NOTES_END` (what
profiling found, which no run re-measures), and puts it back in the same place; a new file takes
those notes from ``docs/benchmarks.md``. How each number is measured comes from the template
``bench/method.md``, filled with the run's plan.

A run of sections that stand on their own (`SPLICEABLE`: their tables feed no target and say
which command measured them, and when) can be spliced into an existing report instead
(`splice`): their blocks and raw lines are replaced or added, and every other section keeps the
numbers of the run that wrote it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from string import Template

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import abuse_report
import cluster_report
import report_tables as tables
from load_result import Result
from plan import CAPACITY_P99_MS, PAGE_TARGET_MIB, Plan, Series
from report_tables import BASELINES, Add, cap, capacity_of, find, ms, ratio_of_medians, yes
from results import Results
from sections import FAR_OVER, QUIET_BUDGET_S, QUIET_CORES, QUIET_WAIT_S

ROOT = Path(__file__).resolve().parent.parent
# The sections a run may splice into an existing report (`splice`), and their headings.
SPLICEABLE = {"run_start": tables.RUN_START_HEADING, "cluster": cluster_report.HEADING}
DOC = ROOT / "docs" / "benchmarks.md"
METHOD = Path(__file__).resolve().parent / "method.md"
NOTES_BEGIN = "<!-- notes: written by hand; make bench keeps this part as it is -->"
NOTES_END = "<!-- end of notes -->"


def notes(text: str) -> str | None:
    """The hand-written part of a report, markers included; None when it has none."""
    start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
    if start < 0 or end < start:
        return None
    return text[start : end + len(NOTES_END)]


def kept_notes(output: Path) -> str:
    """The notes of the file about to be replaced, else those of ``docs/benchmarks.md``."""
    for path in (output, DOC):
        if path.exists() and (found := notes(path.read_text())) is not None:
            return found
    return f"{NOTES_BEGIN}\n\n{NOTES_END}"


def render(results: Results, hand_written: str = f"{NOTES_BEGIN}\n\n{NOTES_END}") -> str:
    lines: list[str] = []
    add = lines.append
    _this_run(results, add)
    targets(results, add)
    tables.capacity(results, add)
    tables.versions(results, add)
    tables.per_connection(results, add)
    tables.durability(results, add)
    tables.doc_size(results, add)
    tables.slow(results, add)
    tables.idle(results, add)
    tables.browser(results, add)
    tables.run_start(results, add)
    abuse_report.render(results.abuse, add)
    cluster_report.render(results.cluster, add, results.command)
    add(hand_written)
    add("")
    add(method(results.plan))
    _raw(results, add)
    return "\n".join(lines)


def write(results: Results, output: Path) -> None:
    output.write_text(render(results, kept_notes(output)))


def splice(results: Results, output: Path) -> None:
    """Put this run's sections into the report at ``output``, keeping every other section as it is."""
    others = [name for name in results.sections if name not in SPLICEABLE]
    if others:
        raise ValueError(f"sections {', '.join(others)} cannot be spliced: only {', '.join(SPLICEABLE)} can")
    text = output.read_text()
    fresh = render(results, kept_notes(output))
    for name in results.sections:
        text = _spliced_block(text, fresh, SPLICEABLE[name])
    if results.run_start is not None:
        text = _spliced_raw(text, _run_start_line(results), '"section": "run_start"')
    if results.cluster is not None:
        text = _spliced_raw(text, json.dumps(results.cluster.to_json()), '"section": "cluster"')
    output.write_text(text)


def _block(text: str, heading: str) -> tuple[int, int] | None:
    """Where the section under ``heading`` starts and ends: at the next heading or the notes."""
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return None
    start += 1
    ends = [i for i in (text.find("\n## ", start + 1), text.find(f"\n{NOTES_BEGIN}", start)) if i >= 0]
    return start, (min(ends) + 1 if ends else len(text))


def _spliced_block(text: str, fresh: str, heading: str) -> str:
    """``text`` with the section under ``heading`` taken from ``fresh``: in its place, or else
    before the heading that follows it in ``fresh``, or else before the notes."""
    where = _block(fresh, heading)
    if where is None:
        raise ValueError(f"the rendered report has no section {heading!r}")
    block = fresh[where[0] : where[1]]
    if (old := _block(text, heading)) is not None:
        return text[: old[0]] + block + text[old[1] :]
    following = fresh[where[1] :].split("\n", 1)[0]
    at = text.find(f"\n{following}\n") + 1 if following.startswith("## ") else 0
    if at <= 0:
        at = text.find(NOTES_BEGIN)
    if at < 0:
        raise ValueError(f"no place for {heading!r}: the report has neither {following!r} nor the notes")
    return text[:at] + block + text[at:]


def _spliced_raw(text: str, line: str, marker: str) -> str:
    """``text`` with ``line`` in place of its raw line holding ``marker``, or last among them."""
    start = text.find("\n## Raw results\n")
    end = text.find("\n```\n\n</details>", start)
    if start < 0 or end < 0:
        return text
    lines = [kept for kept in text[start:end].split("\n") if marker not in kept]
    return text[:start] + "\n".join([*lines, line]) + text[end:]


def _run_start_line(results: Results) -> str:
    assert results.run_start is not None
    return json.dumps({"section": "run_start", "command": results.command, **results.run_start.to_json()})


def method(plan: Plan) -> str:
    """*How it is measured*: the template filled with this plan's numbers."""
    first = plan.series[0]
    small, large = plan.doc_sizes
    return Template(METHOD.read_text()).substitute(
        capacity_p99=f"{CAPACITY_P99_MS:.0f}",
        far_over=f"{CAPACITY_P99_MS * FAR_OVER:.0f}",
        procs_from=f"{plan.procs_from:,}",
        doc_repeats=plan.doc_repeats,
        small=f"{small:,}",
        large=f"{large:,}",
        idle=f"{plan.idle_connections:,}",
        room_size=first.room_size,
        pages=", then ".join(str(pages) for pages in plan.browser_pages),
    )


def _this_run(results: Results, add: Add) -> None:
    plan = results.plan
    add("# Benchmarks")
    add("")
    add("This file is written by `make bench` (`.venv/bin/python bench/run.py`); do not edit it by hand, but for")
    add("the notes between the `notes` markers, which it keeps. It measures collab pad against two baselines and")
    add("against its own previous version on loopback, one server at a time, with the same loads, and checks the")
    add("targets the server must reach. How each number is measured is at the end.")
    add("")
    add("## This run")
    add("")
    add(f"* Command: {results.command}; sections: {', '.join(results.sections) or 'none'}.")
    for failure in results.failures:
        add(f"* **Not measured**: {failure}")
    add(
        f"* Date: {results.started:%Y-%m-%d %H:%M} UTC; the whole run took {results.duration_s / 60:.1f} minutes, "
        f"{results.quiet_waited_s:.0f} s of it waiting for other work to calm down before a load."
    )
    if results.machine:
        add(f"* Machine: {results.machine['machine']}")
        add(f"* Software: {results.machine['software']}")
    load_avg = ", ".join(f"{value:.2f}" for value in results.load_average)
    add(f"* Load average before the run: {load_avg}. The machine is shared: other work ran at the same")
    add("  time (its CPU is in every table), so read ratios between servers measured side by side, and")
    add(f"  medians, rather than single numbers. Before each load the run waits (up to {QUIET_WAIT_S:.0f} s a load,")
    add(f"  {QUIET_BUDGET_S:.0f} s in all) while other work takes more than {QUIET_CORES:g} of a core.")
    env = " ".join(f"{name}={value}" for name, value in results.ours_env.items())
    add(f"* collab pad ran as `{env} python app.py` (every other setting at its default, the rate limit")
    add("  of 60 messages a second per connection included: the loads type 2 to 5 edits a second).")
    add(f"* Each load: clients type for {plan.seconds:g} s after all have joined; latencies are from the author's edit")
    add("  to each other member's receipt, in milliseconds, as p50 / p99.")
    add("")


def _raw(results: Results, add: Add) -> None:
    add("## Raw results")
    add("")
    add("<details><summary>One JSON line per load, as printed by the run</summary>")
    add("")
    add("```")
    for result in results.loads():
        data = result.to_json()
        data.pop("extra", None)
        data["label"] = result.extra.get("label")
        add(json.dumps(data))
    for row in results.idle:
        add(json.dumps(row))
    for browser_result in results.browser:
        add(json.dumps(browser_result.to_json()))
    if results.run_start is not None:
        add(_run_start_line(results))
    if results.abuse is not None:
        add(json.dumps(results.abuse.to_json()))
    if results.cluster is not None:
        add(json.dumps(results.cluster.to_json()))
    add("```")
    add("")
    add("</details>")
    add("")


def targets(results: Results, add: Add) -> None:
    plan = results.plan
    add("## Targets")
    add("")
    add("| Target | Measured | Holds |")
    add("|---|---|---|")
    first = plan.series[0]
    for series in plan.series:
        measured = results.capacity.get(series.name, [])
        ours, bare, naive = (capacity_of(measured, name) for name in BASELINES)
        if not measured:
            continue
        holds = ours >= 0.7 * bare and ours >= naive
        caps = (
            f"ours {cap(measured, 'ours', series.steps)}, bare {cap(measured, 'bare', series.steps)}, "
            f"naive {cap(measured, 'naive', series.steps)} clients"
        )
        add(f"| Capacity ≥ 0.7× bare and ≥ naive ({series.name}) | {caps} | {yes(holds)} |")
        if series.room_size >= 50:
            _beat_bare(measured, series, add)
    if results.target_runs:
        p99s = [r.p99_ms for r in results.target_runs]
        median = statistics.median(p99s)
        runs = ", ".join(f"{ms(r.p99_ms)} (other work {r.other_cpu_percent:.0f}%)" for r in results.target_runs)
        add(
            f"| p99 < 50 ms at {plan.target_clients} clients ({first.name}) | median {ms(median)} ms "
            f"(runs: {runs}) | {yes(median < 50)} |"
        )
    small, large = plan.doc_sizes
    ours_small = [r for r in results.doc_size if r.name == "ours" and r.doc_chars == small]
    ours_large = [r for r in results.doc_size if r.name == "ours" and r.doc_chars == large]
    if ours_small and ours_large:
        p99 = ratio_of_medians(ours_large, ours_small, "p99_ms")
        p50 = ratio_of_medians(ours_large, ours_small, "p50_ms")
        size = ratio_of_medians(ours_large, ours_small, "received_bytes_per_edit")
        add(
            f"| Latency and bytes per keystroke at {large:,} chars within 1.2× of {small:,} | "
            f"p99 {p99:.2f}×, p50 {p50:.2f}×, bytes {size:.2f}× (medians of {len(ours_small)} runs each; "
            "no fsync wait, see below) | "
            f"{yes(p99 <= 1.2 and size <= 1.2)} |"
        )
    controls = [r for r in results.slow if r.name == "ours" and not r.stalled]
    stalls = [r for r in results.slow if r.name == "ours" and r.stalled]
    if controls and stalls:
        control = statistics.median(r.p99_ms for r in controls)
        stalled = statistics.median(r.p99_ms for r in stalls)
        change = stalled / control - 1 if control > 0 and not math.isinf(stalled) else math.inf
        # A stalled reader can only raise the others' latency by holding them up; once its
        # socket is full it takes no more writes, so their p99 may as well fall.
        add(
            f"| A stalled client raises the others' p99 by < 20% | median {ms(control)} → "
            f"{ms(stalled)} ms ({change:+.0%}; {len(stalls)} runs each, no fsync wait) | {yes(change < 0.2)} |"
        )
    ours_idle = [row for row in results.idle if row["kind"] == "ours"]
    if ours_idle:
        kib = ours_idle[0]["kib_per_connection"]
        add(f"| < 100 KiB per idle raw connection | {kib:.0f} KiB | {yes(kib < 100)} |")
    if results.browser:
        # Complete: every page of the set opened and the server's RSS was read with them open.
        complete = [r for r in results.browser if r.live_pages == r.pages and r.rss_after_mib > 0]
        cells = [f"{r.mib_per_page:.2f} MiB with {r.pages} pages" for r in complete]
        cells += [
            f"not measured with {r.pages} pages ({r.error or 'pages missing'})"
            for r in results.browser
            if r not in complete
        ]
        holds = len(complete) == len(results.browser) and all(r.mib_per_page < PAGE_TARGET_MIB for r in complete)
        add(f"| < {PAGE_TARGET_MIB:g} MiB per open browser room page | {', '.join(cells)} | {yes(holds)} |")
    else:
        add(f"| < {PAGE_TARGET_MIB:g} MiB per open browser room page | not measured in this run | – |")
    for row in abuse_report.target_rows(results.abuse):
        add(row)
    add("")


def _beat_bare(results: list[Result], series: Series, add: Add) -> None:
    pairs = []
    for clients in series.steps:
        ours = find(results, "ours", clients)
        bare = find(results, "bare", clients)
        if ours is not None and bare is not None:
            pairs.append((clients, ours, bare))
    if not pairs:
        return
    # Compare where it matters: the largest load both were measured at.
    clients, ours, bare = pairs[-1]
    beats = (ours.ok and not bare.ok) or (ours.ok == bare.ok and ours.p99_ms < bare.p99_ms)
    add(
        f"| Beat bare in rooms of {series.room_size} by coalescing (largest common load, {clients} clients) | "
        f"p99 ours {ms(ours.p99_ms)} ms, bare {ms(bare.p99_ms)} ms; frames/s ours "
        f"{ours.frames_out_per_s:,.0f}, bare {bare.frames_out_per_s:,.0f} | {yes(beats)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results file written by bench/run.py")
    parser.add_argument("--output", type=Path, default=DOC, help=f"report to write (default {DOC.relative_to(ROOT)})")
    parser.add_argument(
        "--splice",
        action="store_true",
        help=f"keep the report's other sections, put in only this run's ({', '.join(SPLICEABLE)})",
    )
    args = parser.parse_args()
    results = Results.load(args.results)
    if args.splice:
        splice(results, args.output)
    else:
        write(results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
