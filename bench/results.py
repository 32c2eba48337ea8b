"""Everything one benchmark run measured, as written to (and read back from) a JSON file.

`bench/run.py` measures into a `Results` and saves it after every section, so that a run cut
short still leaves what it measured; `bench/report.py` renders a saved file into the report,
as often as wanted, without measuring again.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import abuse
from browser import BrowserResult
from cluster_result import ClusterResult
from load_result import Result
from plan import Plan
from previous import Previous
from run_start import RunStartResult

FORMAT = 1  # of the file; a file of another format is refused rather than misread
PACKAGES = ("websockets", "uvicorn", "uvloop", "fastapi", "starlette")


def machine() -> dict[str, str]:
    """The machine and software the run measured on, in words for the report."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        total_kib = int(info.readline().split()[1])
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {total_kib / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}",
        "software": f"Python {platform.python_version()}; {versions}",
    }


@dataclass
class Results:
    """What one run measured, section by section, and the circumstances it measured in."""

    plan: Plan
    started: datetime.datetime
    command: str = "`make bench`"
    sections: list[str] = field(default_factory=list)  # those run, in order
    failures: list[str] = field(default_factory=list)  # what could not be measured, and why
    machine: dict[str, str] = field(default_factory=dict)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ours_env: dict[str, str] = field(default_factory=dict)  # the settings ours ran with
    previous: Previous | None = None  # the previous version of ours, if one was asked for
    fast_path_setting: bool = False  # whether this code reads FAST_PATH at all
    capacity: dict[str, list[Result]] = field(default_factory=dict)  # series name -> results
    target_runs: list[Result] = field(default_factory=list)
    memory_store: list[Result] = field(default_factory=list)  # ours with STORE=memory
    doc_size: list[Result] = field(default_factory=list)
    slow: list[Result] = field(default_factory=list)
    idle: list[dict[str, Any]] = field(default_factory=list)
    browser: list[BrowserResult] = field(default_factory=list)
    run_start: RunStartResult | None = None  # running code in the browser
    abuse: abuse.AbuseResult | None = None
    cluster: ClusterResult | None = None  # several processes (bench/cluster.py)
    duration_s: float = 0.0
    quiet_waited_s: float = 0.0  # time spent waiting for other work to calm down

    def loads(self) -> Iterator[Result]:
        """Every load's result, in the order of the sections."""
        for results in self.capacity.values():
            yield from results
        yield from self.target_runs
        yield from self.memory_store
        yield from self.doc_size
        yield from self.slow

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "plan": self.plan.to_json(),
            "started": self.started.isoformat(),
            "command": self.command,
            "sections": self.sections,
            "failures": self.failures,
            "machine": self.machine,
            "load_average": list(self.load_average),
            "ours_env": self.ours_env,
            "previous": self.previous.to_json() if self.previous is not None else None,
            "fast_path_setting": self.fast_path_setting,
            "capacity": {name: [r.to_json() for r in results] for name, results in self.capacity.items()},
            "target_runs": [r.to_json() for r in self.target_runs],
            "memory_store": [r.to_json() for r in self.memory_store],
            "doc_size": [r.to_json() for r in self.doc_size],
            "slow": [r.to_json() for r in self.slow],
            "idle": self.idle,
            "browser": [r.to_json() for r in self.browser],
            "run_start": self.run_start.to_json() if self.run_start is not None else None,
            "abuse": _abuse_to_json(self.abuse) if self.abuse is not None else None,
            "cluster": self.cluster.to_json() if self.cluster is not None else None,
            "duration_s": self.duration_s,
            "quiet_waited_s": self.quiet_waited_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        if data.get("format") != FORMAT:
            raise ValueError(f"results of format {data.get('format')!r}, expected {FORMAT}")
        loads = {name: [Result.from_json(r) for r in data[name]] for name in ("target_runs", "memory_store")}
        return cls(
            plan=Plan.from_json(data["plan"]),
            started=datetime.datetime.fromisoformat(data["started"]),
            command=data["command"],
            sections=list(data["sections"]),
            failures=list(data["failures"]),
            machine=dict(data["machine"]),
            load_average=tuple(data["load_average"]),
            ours_env=dict(data["ours_env"]),
            previous=Previous.from_json(data["previous"]) if data["previous"] is not None else None,
            fast_path_setting=bool(data["fast_path_setting"]),
            capacity={name: [Result.from_json(r) for r in rs] for name, rs in data["capacity"].items()},
            doc_size=[Result.from_json(r) for r in data["doc_size"]],
            slow=[Result.from_json(r) for r in data["slow"]],
            idle=list(data["idle"]),
            browser=[_browser_from_json(r) for r in data["browser"]],
            # Files written before the section existed have no entry for it.
            run_start=RunStartResult.from_json(data["run_start"]) if data.get("run_start") else None,
            abuse=_abuse_from_json(data["abuse"]) if data["abuse"] is not None else None,
            cluster=ClusterResult.from_json(data["cluster"]) if data.get("cluster") else None,
            duration_s=float(data["duration_s"]),
            quiet_waited_s=float(data["quiet_waited_s"]),
            **loads,
        )

    def save(self, path: Path) -> None:
        """Write the file whole or not at all: a reader never sees half of it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.to_json(), indent=1))
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> Results:
        return cls.from_json(json.loads(path.read_text()))


def _browser_from_json(data: dict[str, Any]) -> BrowserResult:
    names = {f.name: f.type for f in fields(BrowserResult)}
    values: dict[str, Any] = {
        name: math.inf if value is None and names[name] == "float" else value
        for name, value in data.items()
        if name in names
    }
    return BrowserResult(**values)


def _abuse_to_json(result: abuse.AbuseResult) -> dict[str, Any]:
    # The latencies themselves, not only their percentiles: the report takes medians of runs.
    return {
        **result.to_json(),
        "baseline": [_typing_to_json(t) for t in result.baseline],
        "flooded": [_typing_to_json(t) for t in result.flooded],
        "quick": result.quick,
        "history_versions": result.history_versions,
        "measured": result.measured,
    }


def _typing_to_json(typing: abuse.Typing) -> dict[str, Any]:
    return {f.name: getattr(typing, f.name) for f in fields(abuse.Typing)}


def _abuse_from_json(data: dict[str, Any]) -> abuse.AbuseResult:
    frame_fields = {f.name for f in fields(abuse.FrameCost)}
    return abuse.AbuseResult(
        limits=data["limits"],
        frames=[abuse.FrameCost(**{k: v for k, v in f.items() if k in frame_fields}) for f in data["frames"]],
        baseline=[abuse.Typing(**t) for t in data["baseline"]],
        flooded=[abuse.Typing(**t) for t in data["flooded"]],
        floods=[abuse.Flood(**f) for f in data["floods"]],
        quick=data["quick"],
        history_versions=data["history_versions"],
        measured=data["measured"],
    )
