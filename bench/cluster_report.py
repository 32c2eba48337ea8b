"""The *Several processes* section of the benchmark report, from what ``bench/cluster.py`` measured.

`render` takes a `cluster.ClusterResult` (or None: not measured in this run) and the command that
measured it, and measures nothing. The section says which command measured it and when, so that
``bench/run.py --only cluster --splice`` can put it into a report written by another run.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
from cluster_result import ClusterLoad, ClusterResult, RecoveryRun, median_seconds
from plan import CAPACITY_P99_MS, Series
from report_tables import cap, cell, ms, ratio

HEADING = "## Several processes"
Add = Callable[[str], None]


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def _percent(seconds: float, load: ClusterLoad) -> str:
    return "–" if math.isnan(seconds) else f"{seconds / load.result.seconds:.0%}"


def _spread(load: ClusterLoad) -> str:
    return " / ".join(f"{s.rooms} ({s.members})" for s in load.per_process)


def _cpu(load: ClusterLoad) -> str:
    return " / ".join(_percent(s.cpu_seconds, load) for s in load.per_process)


def _other(load: ClusterLoad) -> str:
    """CPU neither the processes, HAProxy, PostgreSQL, Redis nor the load generator used."""
    r = load.result
    proxy = 0.0 if math.isnan(load.haproxy_cpu_seconds) else load.haproxy_cpu_seconds
    others = r.machine_cpu_percent - r.server_cpu_percent - r.client_cpu_percent
    others -= (proxy + load.services_cpu_seconds) / r.seconds * 100
    return f"{max(0.0, others):.0f}%"


def render(result: ClusterResult | None, add: Add, command: str) -> None:
    add(HEADING)
    add("")
    if result is None:
        add("Not measured in this run. `make bench` includes it (the `cluster` section of `bench/run.py`);")
        add("`.venv/bin/python bench/cluster.py` alone prints it.")
        add("")
        return
    load_average = ", ".join(f"{value:.2f}" for value in result.load_average)
    if result.skipped:
        add(f"**Not measured** by {command} on {result.measured} UTC: {result.skipped}.")
        add("")
        return
    settings = ", ".join(f"`{name}={value}`" for name, value in result.settings.items())
    add(
        f"Measured by {command} on {result.measured} UTC (load average {load_average}; {result.software}). "
        f"Ours on one, two and three processes sharing rooms: `STORE=postgres`, `REDIS_URL`, and otherwise "
        f"the settings of the sections above ({settings} at their defaults). Each load has a database of "
        "its own, freshly created, a Redis database flushed before it, and processes started for it. "
        "The clients connect to HAProxy (Debian's package) running the shipped `deploy/haproxy/haproxy.cfg`, "
        "which sends each `/ws/{room}` to a process by a consistent hash of the path; with fewer than "
        "three processes the configuration's other servers are down, as its health checks see them. "
        f"The machine's {os.cpu_count()} cores are shared by everything: the load generator, HAProxy, "
        "PostgreSQL, Redis and the processes. Hence the CPU columns (100% = one core, over the typing "
        "window): where the cores run out, the CPU time each process spends per edit still shows what "
        "another machine's cores would buy."
    )
    add("")
    for failure in result.failures:
        add(f"* **Not measured**: {failure}")
    if result.failures:
        add("")
    for series in result.plan.series:
        loads = [load for load in result.loads if load.part == series.name]
        if loads:
            _scaling(series, loads, result.plan.processes, add)
    if result.loads:
        _spread_and_counters(result.loads, add)
    if result.stores:
        _stores(result.stores, add)
    if result.recoveries:
        _recoveries(result.recoveries, add)


def _commit(load: ClusterLoad) -> str:
    """The slowest committing process's commit latency, p50 / p99."""
    committing = [sample for sample in load.per_process if sample.commits]
    if not committing:
        return "–"
    return f"{ms(max(s.commit_p50_ms for s in committing))} / {ms(max(s.commit_p99_ms for s in committing))}"


def _scaling(series: Series, loads: list[ClusterLoad], counts: Sequence[int], add: Add) -> None:
    add(f"**{series.name[0].upper()}{series.name[1:]}.** p50 / p99 latency from an edit to each other member, in ms;")
    add(
        f"✗ over capacity (p99 ≥ {CAPACITY_P99_MS:.0f} ms, a drop or a lost edit). *Rooms (members)* and *CPU* "
        "are per process; *CPU ms per edit* is the CPU time of every process together for one edit typed; *Commit* "
        "is the store's latency for one group commit, p50 / p99 in ms, of the slowest process (its "
        "`collab_store_commit_seconds`); *PG + Redis* is every PostgreSQL and Redis process of the machine."
    )
    add("")
    add(
        "| Clients | Edits/s | Processes | p50 / p99 | Rooms (members) | CPU | CPU ms per edit | Commit | HAProxy "
        "| PG + Redis | Clients' CPU | Other work |"
    )
    add("|---:|---:|---:|---|---|---|---:|---|---:|---:|---:|---:|")
    for load in sorted(loads, key=lambda load: (load.result.clients, load.processes)):
        r = load.result
        add(
            f"| {r.clients} | {r.clients * series.rate:,.0f} | {load.processes} | {cell(r)} | {_spread(load)} | "
            f"{_cpu(load)} | {ms(load.ms_per_edit)} | {_commit(load)} | {_percent(load.haproxy_cpu_seconds, load)} | "
            f"{_percent(load.services_cpu_seconds, load)} | {r.client_cpu_percent:.0f}% | {_other(load)} |"
        )
    add("")
    by_count = {count: [load.result for load in loads if load.processes == count] for count in counts}
    caps = ", ".join(
        f"{_processes(count)} {cap(results, _processes(count), series.steps)}" for count, results in by_count.items()
    )
    add(f"Capacity (largest load with p99 < {CAPACITY_P99_MS:.0f} ms, no drop, nothing lost): {caps} clients.")
    if line := _cpu_against_one(loads, counts):
        add(line)
    add("")


def _cpu_against_one(loads: list[ClusterLoad], counts: Sequence[int]) -> str:
    """The CPU per edit of more processes against one, at the largest load every count ran."""
    measured = {(load.result.clients, load.processes) for load in loads}
    common = [clients for clients, _ in sorted(measured) if all((clients, count) in measured for count in counts)]
    if not common or len(counts) < 2:
        return ""
    clients = common[-1]
    at = {load.processes: load for load in loads if load.result.clients == clients}
    base = at[counts[0]].ms_per_edit
    cells = ", ".join(f"{_processes(count)} {ratio(at[count].ms_per_edit, base)}" for count in counts[1:])
    return f"CPU per edit of every process together, against {_processes(counts[0])}, at {clients} clients: {cells}."


def _spread_and_counters(loads: list[ClusterLoad], add: Add) -> None:
    split = [load for load in loads if load.rooms_split]
    shared = [load for load in loads if load.processes > 1]
    if not split:
        add(
            f"How a room's clients were spread: in every load on several processes ({len(shared)}), the rooms "
            "the processes held while the clients typed add up to the rooms of the load, so all the members "
            "of each room were on one process. HAProxy's hash on the room id does that: more processes spread "
            "the rooms, not a room; a room's fan-out stays within its process, and only its commits go to "
            "PostgreSQL and its updates onto its Redis stream."
        )
    else:
        where = "; ".join(f"{load.result.extra.get('label', '')}: {_spread(load)}" for load in split)
        add(f"How a room's clients were spread: in {len(split)} loads a room was held by several processes ({where}).")
    add("")
    samples = [sample for load in loads for sample in load.per_process]
    conflicts, catch_ups = sum(s.conflicts for s in samples), sum(s.catch_ups for s in samples)
    errors = sum(s.stream_errors for s in samples)
    add(
        f"Over every load: {conflicts:.0f} commits lost the race to another process and were made again, "
        f"{catch_ups:.0f} gaps were filled from the database, {errors:.0f} Redis errors or failed appends. "
        + _events(sample.log_events for sample in samples)
    )
    add("")


def _events(counts: Iterable[dict[str, int]], who: str = "The processes") -> str:
    found: dict[str, int] = {}
    for events in counts:
        for event, count in events.items():
            found[event] = found.get(event, 0) + count
    if not found:
        return f"{who} logged no warning or error."
    listed = ", ".join(f"`{event}` ×{count}" for event, count in sorted(found.items(), key=lambda item: -item[1]))
    return f"Warnings and errors {who.lower()} logged, by event: {listed}."


def _stores(loads: list[ClusterLoad], add: Add) -> None:
    first = loads[0].result
    add(
        f"**PostgreSQL against SQLite.** One process, connected to directly, no Redis: {first.rooms} rooms × "
        f"{first.clients_per_room} clients at {first.rate:g} edits/s for {first.seconds:g} s, with each store at "
        "its defaults (both wait for the disk: SQLite `synchronous=FULL`, PostgreSQL `synchronous_commit=on`), "
        "the two alternating. *Commit*: the store's latency for one group commit "
        "(`collab_store_commit_seconds`, interpolated in its buckets as Prometheus does)."
    )
    add("")
    add(
        "| Store | Run | p50 / p99 ms | Commit p50 / p99 ms | Updates per commit | Server CPU | CPU ms per edit "
        "| PG + Redis | Other work |"
    )
    add("|---|---:|---|---|---:|---:|---:|---:|---:|")
    runs: dict[str, int] = {}
    for load in loads:
        runs[load.store] = runs.get(load.store, 0) + 1
        sample = load.per_process[0]
        per_commit = f"{sample.updates / sample.commits:.1f}" if sample.commits else "–"
        add(
            f"| {load.store} | {runs[load.store]} | {cell(load.result)} | {ms(sample.commit_p50_ms)} / "
            f"{ms(sample.commit_p99_ms)} | {per_commit} | {load.result.server_cpu_percent:.0f}% | "
            f"{ms(load.ms_per_edit)} | {_percent(load.services_cpu_seconds, load)} | {_other(load)} |"
        )
    add("")
    postgres = [load for load in loads if load.store == "postgres"]
    sqlite = [load for load in loads if load.store == "sqlite"]
    if postgres and sqlite:

        def median(chosen: list[ClusterLoad], value: Callable[[ClusterLoad], float]) -> float:
            return statistics.median(value(load) for load in chosen)

        cells = []
        for name, value in (
            ("commit p50", lambda load: load.per_process[0].commit_p50_ms),
            ("commit p99", lambda load: load.per_process[0].commit_p99_ms),
            ("clients' p50", lambda load: load.result.p50_ms),
            ("clients' p99", lambda load: load.result.p99_ms),
            ("CPU per edit", lambda load: load.ms_per_edit),
        ):
            cells.append(f"{name} {ratio(median(postgres, value), median(sqlite, value))}")
        add(f"PostgreSQL ÷ SQLite (medians of {len(postgres)} and {len(sqlite)} runs): {', '.join(cells)}.")
        add("")


def _recoveries(runs: list[RecoveryRun], add: Add) -> None:
    placement = runs[0].placement
    add(
        f"**Recovery from a killed process.** One room of {sum(placement)} clients connected to three processes "
        f"directly, {' / '.join(map(str, placement))} of them; each types 2 edits a second (a token, "
        "one push in flight, as the editor). After 2 s the first process is killed (SIGKILL). Its clients "
        "reconnect to the two others (half to each: at once, then after 0.05 s doubling to 1 s) and resend what "
        "was not confirmed. *All back*: from the kill until every client is in a conversation again; "
        "*recovered*: until a token each client typed once back (the others: right after the kill) is in "
        "every client's text. Then the typing stops and every client must end with the same text, each "
        "token typed in it once."
    )
    add("")
    add("| Run | All back | Recovered | Tokens typed | Lost | Twice | Same text everywhere |")
    add("|---:|---:|---:|---:|---:|---:|---|")
    for index, run in enumerate(runs, 1):
        if run.error:
            add(f"| {index} | failed: {run.error} | – | {run.typed} | {run.lost} | {run.doubled} | **no** |")
            continue
        add(
            f"| {index} | {run.reconnected_s:.2f} s | {run.recovered_s:.2f} s | {run.typed} | {run.lost} | "
            f"{run.doubled} | {'yes' if run.agreed else '**no**'} |"
        )
    add("")
    back, recovered = median_seconds(runs, "reconnected_s"), median_seconds(runs, "recovered_s")
    done = len([run for run in runs if not run.error])
    add(
        f"Median over {done} runs: all back in {back:.2f} s, recovered in {recovered:.2f} s. "
        + _events((run.log_events for run in runs), "The surviving processes")
    )
    add("")
