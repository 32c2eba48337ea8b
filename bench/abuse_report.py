"""The *Abuse* section of the benchmark report, from what ``bench/abuse.py`` measured.

`target_rows` gives the rows of the report's *Targets* table, `render` the section itself; both
take an `abuse.AbuseResult` (or None: not measured in this run) and measure nothing.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
from abuse import FLOOD_TARGET_MS, FRAME_TARGET_MS, AbuseResult, Typing


def _ms(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return "–"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def _median(results: list[Typing], name: str) -> float:
    values: list[float] = [getattr(result, name) for result in results]
    return statistics.median(values) if values else math.nan


def target_rows(result: AbuseResult | None) -> list[str]:
    """Rows of the report's *Targets* table."""
    if result is None:
        return []
    rows = []
    worst = result.worst
    if worst is not None:
        rows.append(
            f"| No client frame costs over {FRAME_TARGET_MS:g} ms of server CPU (default limits) | worst: "
            f"{worst.frame}, {_ms(worst.median_ms)} ms | {_yes(worst.median_ms <= FRAME_TARGET_MS)} |"
        )
    if result.flooded:
        with_flood, without = _median(result.flooded, "p99_ms"), _median(result.baseline, "p99_ms")
        rows.append(
            f"| p99 < {FLOOD_TARGET_MS:g} ms in ordinary rooms while one client floods costly pushes | median "
            f"{_ms(with_flood)} ms (without the flood {_ms(without)} ms, {with_flood / without:.2f}×) | "
            f"{_yes(with_flood < FLOOD_TARGET_MS)} |"
        )
    return rows


def render(result: AbuseResult | None, add: Callable[[str], None]) -> None:
    """The report's *Abuse* section."""
    add("## Abuse")
    add("")
    if result is None:
        add("Not run in this invocation (`bench/run.py --only abuse` runs it alone).")
        add("")
        return
    limits = result.limits
    first = result.baseline[0] if result.baseline else Typing("", 0, 0, 0.0, 0.0)
    add(
        "What one client can make the server do at the default limits "
        f"(`MAX_CHANGE_PARTS={limits['max_change_parts']}`, "
        f"`MAX_REBASE_VERSIONS={limits['max_rebase_versions']}`, `MAX_REBASE_STEPS={limits['max_rebase_steps']}`, "
        f"`HISTORY_LIMIT={limits['history_limit']}`, `MAX_DOCUMENT_CHARS={limits['max_document_chars']}`, "
        f"`RATE_LIMIT_PER_SECOND={limits['rate_limit_per_second']:g}`), on a server of its own"
        + (f", measured {result.measured} UTC." if result.measured else ".")
        + (" *Quick run: a small history and document, not the worst case.*" if result.quick else "")
    )
    add("")
    add(
        "**The costliest frame of each kind.** Server CPU for one frame, every thread, from sending it to its "
        "reply (and the server going quiet after), median of the runs in brackets; *wall* is the client's wait "
        f"for the reply. Target: at most {FRAME_TARGET_MS:g} ms each."
    )
    add("")
    add("| Frame | Shape | Server CPU ms | Wall ms | Reply | Reply bytes | ≤ 25 ms |")
    add("|---|---|---:|---:|---|---:|---|")
    for cost in result.frames:
        runs = ", ".join(_ms(value) for value in cost.cpu_ms)
        add(
            f"| {cost.frame} | {cost.shape} | {_ms(cost.median_ms)} ({runs}) "
            f"| {_ms(statistics.median(cost.wall_ms))} | "
            f"{cost.reply} | {cost.reply_bytes:,} | {_yes(cost.median_ms <= FRAME_TARGET_MS)} |"
        )
    add("")
    add(
        f"**An ordinary room under a flood.** {first.rooms} rooms of {first.clients} typists, each typing "
        f"{first.rate:g} characters a second for {first.seconds:g} s (Poisson times, one push in flight as the "
        "editor does; latency from a push to the update the server makes of it), without and "
        "then with one connection (from another loopback address, into a room of its own) pushing the costliest "
        f"push above, {limits['lag']} versions behind, one in flight, as often as its rate limit allows. Latency "
        f"in ms, p50 / p99; target: p99 under {FLOOD_TARGET_MS:g} ms with the flood. *Other work*: CPU used on "
        "the machine by neither the server nor these clients, in the busier run of the pair (100% = one core)."
    )
    add("")
    add(
        "| Run | Without the flood | With the flood | Flood pushes applied / refused (by code) "
        "| Server CPU without / with | Clients' CPU without / with | Other work |"
    )
    add("|---:|---|---|---|---|---|---:|")
    for index, (without, flooded, record) in enumerate(
        zip(result.baseline, result.flooded, result.floods, strict=False)
    ):
        refused = sum(record.refused.values())
        codes = ", ".join(f"{code} {count}" for code, count in sorted(record.refused.items()))
        add(
            f"| {index + 1} | {_ms(without.p50_ms)} / {_ms(without.p99_ms)} "
            f"| {_ms(flooded.p50_ms)} / {_ms(flooded.p99_ms)} "
            f"| {record.applied} / {refused}{f' ({codes})' if codes else ''} in {record.seconds:.0f} s "
            f"| {without.server_cpu_percent:.0f}% / {flooded.server_cpu_percent:.0f}% "
            f"| {without.client_cpu_percent:.0f}% / {flooded.client_cpu_percent:.0f}% "
            f"| {max(without.other_cpu_percent, flooded.other_cpu_percent):.0f}% |"
        )
    if result.flooded and result.baseline:
        with_flood, without_flood = _median(result.flooded, "p99_ms"), _median(result.baseline, "p99_ms")
        add("")
        add(
            f"p99 with the flood against without (medians): {_ms(with_flood)} / {_ms(without_flood)} ms = "
            f"{with_flood / without_flood:.2f}×."
        )
    add("")
    add(
        "How: the server's CPU time is the sum over its threads of `/proc/<pid>/task/*/schedstat` (nanoseconds; "
        "`/proc/<pid>/stat` counts 10 ms ticks), read when the server has been idle for 5 ms before the frame and "
        "again once the reply has arrived and it has been idle for 5 ms. The history is filled first by writers "
        f"in regions of their own ({result.history_versions} versions of pushes of "
        f"{limits['max_change_parts']} parts, in a document of 80% of the size limit); a push of as many parts "
        "is then as far behind as the server accepts over such updates (tried from what `MAX_REBASE_STEPS` "
        f"allows downwards: {limits['lag']} versions; the row after it is one version further and must be "
        "refused). The *largest catch-up* hello resumes from the oldest version whose catch-up the server still "
        "sends as updates rather than a snapshot (found by bisection). The full-text `code_change` alternates between "
        "two texts of the size limit, and only the change to the second is measured. "
        "`.venv/bin/python bench/abuse.py` runs this section alone."
    )
    add("")
