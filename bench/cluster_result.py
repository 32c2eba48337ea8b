"""What the cluster section measures (``bench/cluster.py``), as saved in a run's results file.

`ClusterPlan` says what one run measures (`FULL`, `QUICK`); `ClusterResult` holds its loads
(`ClusterLoad`, with a `ProcessSample` per app process), its store comparison and its recoveries
(`RecoveryRun`). `process_sample` reads a process's ``/metrics`` and log; nothing here measures.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import prometheus
from load_result import Result
from plan import Series


@dataclass(frozen=True)
class ClusterPlan:
    """What the section measures; `QUICK` is a smoke run."""

    seconds: float = 6.0  # of typing in each load
    series: tuple[Series, ...] = (
        Series("rooms of 5 at 5 edits/s", 5, 5.0, (50, 100, 250, 500, 1000)),
        Series("rooms of 50 at 2 edits/s", 50, 2.0, (100, 250, 500)),
    )
    processes: tuple[int, ...] = (1, 2, 3)
    procs_from: int = 1000  # loads of this many clients or more use two client processes
    store_load: tuple[int, int] = (50, 5)  # rooms x clients at 5 edits/s, PostgreSQL against SQLite
    store_repeats: int = 3
    recovery_placement: tuple[int, ...] = (14, 3, 3)  # a room's clients on each process, the killed first
    recovery_runs: int = 3

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterPlan:
        values = dict(data)
        values["series"] = tuple(
            Series(s["name"], s["room_size"], s["rate"], tuple(s["steps"])) for s in values["series"]
        )
        for name in ("processes", "store_load", "recovery_placement"):
            values[name] = tuple(values[name])
        return cls(**values)


FULL = ClusterPlan()
QUICK = ClusterPlan(
    seconds=1.5,
    series=(Series("rooms of 5 at 5 edits/s", 5, 5.0, (20,)), Series("rooms of 50 at 2 edits/s", 10, 2.0, (20,))),
    store_load=(4, 5),
    store_repeats=1,
    recovery_placement=(4, 1, 1),
    recovery_runs=1,
)


@dataclass
class ProcessSample:
    """One app process over one load."""

    cpu_seconds: float = 0.0  # over the typing window
    rooms: int = 0  # loaded while the clients typed (collab_rooms)
    members: int = 0  # of its rooms then (collab_members)
    updates: float = 0.0  # it committed, over the whole load
    commits: float = 0.0
    commit_p50_ms: float = math.nan
    commit_p99_ms: float = math.nan
    conflicts: float = 0.0  # commits that lost the race to another process and were made again
    catch_ups: float = 0.0  # gaps filled from the database
    stream_errors: float = 0.0  # Redis errors and appends that failed
    log_events: dict[str, int] = field(default_factory=dict)  # warnings and errors, by event


@dataclass
class ClusterLoad:
    """One load of the section and what each part of the deployment spent on it."""

    part: str  # a scaling series' name, or "store"
    processes: int
    store: str
    result: Result
    per_process: list[ProcessSample]
    haproxy_cpu_seconds: float = math.nan  # nan: no HAProxy in front
    services_cpu_seconds: float = 0.0  # every PostgreSQL and Redis process on the machine
    attempt: int = 1

    @property
    def app_cpu_seconds(self) -> float:
        return sum(sample.cpu_seconds for sample in self.per_process)

    @property
    def ms_per_edit(self) -> float:
        """CPU of every app process together, per edit typed."""
        return self.app_cpu_seconds * 1000 / self.result.edits if self.result.edits else math.nan

    @property
    def rooms_split(self) -> bool:
        """Some room was loaded by more than one process (its members were spread)."""
        return sum(sample.rooms for sample in self.per_process) > self.result.rooms

    def to_json(self) -> dict[str, Any]:
        """As JSON has it: a number not measured (NaN) is null."""
        data = _nulls(asdict(self))
        data["result"] = self.result.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterLoad:
        values = _nans(data)
        values["result"] = Result.from_json(data["result"])
        values["per_process"] = [ProcessSample(**_nans(sample)) for sample in data["per_process"]]
        return cls(**values)


def _nulls(data: dict[str, Any]) -> dict[str, Any]:
    def null(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {key: null(item) for key, item in value.items()}
        if isinstance(value, list):
            return [null(item) for item in value]
        return value

    return {key: null(value) for key, value in data.items()}


def _nans(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a sample or load that `_nulls` made null: every one of them is a float."""
    return {key: math.nan if value is None else value for key, value in data.items()}


@dataclass
class ClusterResult:
    """What the section measured (``skipped``: why it could not run at all)."""

    plan: ClusterPlan
    measured: str = ""  # when, UTC
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # before the section
    skipped: str = ""
    software: str = ""  # PostgreSQL, Redis and HAProxy versions
    settings: dict[str, str] = field(default_factory=dict)  # the cluster settings the processes ran with
    loads: list[ClusterLoad] = field(default_factory=list)
    stores: list[ClusterLoad] = field(default_factory=list)
    recoveries: list[RecoveryRun] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # parts that could not be measured, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "section": "cluster",
            "plan": self.plan.to_json(),
            "measured": self.measured,
            "load_average": list(self.load_average),
            "skipped": self.skipped,
            "software": self.software,
            "settings": self.settings,
            "loads": [load.to_json() for load in self.loads],
            "stores": [load.to_json() for load in self.stores],
            "recoveries": [run.to_json() for run in self.recoveries],
            "failures": self.failures,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterResult:
        return cls(
            plan=ClusterPlan.from_json(data["plan"]),
            measured=data["measured"],
            load_average=tuple(data["load_average"]),
            skipped=data["skipped"],
            software=data["software"],
            settings=dict(data["settings"]),
            loads=[ClusterLoad.from_json(load) for load in data["loads"]],
            stores=[ClusterLoad.from_json(load) for load in data["stores"]],
            recoveries=[RecoveryRun.from_json(run) for run in data["recoveries"]],
            failures=list(data["failures"]),
        )


def metric_total(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples in Prometheus text, of those whose labels hold ``label``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in (" ", "{"):
            continue
        sample, value = line.rsplit(" ", 1)
        if label in sample:
            total += float(value)
    return total


def process_sample(cpu_seconds: float, during: str, after: str, log: str) -> ProcessSample:
    """A process's sample from its /metrics while the clients typed and after, and its log."""
    seconds, _, commits = prometheus.histogram(after, "collab_store_commit_seconds")
    _, updates, _ = prometheus.histogram(after, "collab_store_commit_updates")
    return ProcessSample(
        cpu_seconds=cpu_seconds,
        rooms=int(metric_total(during, "collab_rooms")),
        members=int(metric_total(during, "collab_members")),
        updates=updates,
        commits=commits,
        commit_p50_ms=prometheus.quantile(0.5, seconds) * 1000,
        commit_p99_ms=prometheus.quantile(0.99, seconds) * 1000,
        conflicts=metric_total(after, "collab_commit_conflicts_total"),
        catch_ups=metric_total(after, "collab_catch_ups_total"),
        stream_errors=metric_total(after, "collab_stream_errors_total")
        + metric_total(after, "collab_stream_appends_total", 'result="error"'),
        log_events=log_events(log),
    )


@dataclass
class RecoveryRun:
    """One kill and what followed; times in seconds from the kill."""

    placement: list[int]  # clients per process before the kill, the killed one first
    reconnected_s: float = 0.0
    recovered_s: float = 0.0
    typed: int = 0  # tokens typed in the whole run
    lost: int = 0  # typed, not in the final text
    doubled: int = 0  # in the final text more than once
    agreed: bool = False  # every client ended with the same text at the same version
    error: str = ""
    log_events: dict[str, int] = field(default_factory=dict)  # warnings and errors the survivors logged

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecoveryRun:
        return cls(**data)


def median_seconds(runs: Sequence[RecoveryRun], name: str) -> float:
    """The median of a time over the runs that recovered."""
    values = [getattr(run, name) for run in runs if not run.error]
    return statistics.median(values) if values else float("nan")


def log_events(text: str) -> dict[str, int]:
    """Warnings and errors in a process's JSON log, counted by event (a line that is not JSON, such
    as a traceback's, counts as ``unparsed``)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            counts["unparsed"] = counts.get("unparsed", 0) + 1
            continue
        if not isinstance(entry, dict) or entry.get("level") not in ("warning", "error", "critical"):
            continue
        event = str(entry.get("event", "?"))
        counts[event] = counts.get(event, 0) + 1
    return counts
