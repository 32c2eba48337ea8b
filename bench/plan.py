"""What a benchmark run measures: the loads of each section, and the servers compared.

`Plan()` is what ``make bench`` runs (20 minutes on a busy 2-core machine); `QUICK` shrinks every load to a smoke
run of seconds. A plan is written into the run's results file with the measurements, so that a
report rendered again later describes the loads that were actually run.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import abuse
from servers import Kind

CAPACITY_P99_MS = 100.0  # a load is within capacity below this p99, with no drop and nothing lost
PAGE_TARGET_MIB = 1.0  # server memory per open browser room page
SLOW_COMMIT_S = 0.05  # commits slower than this are counted (a bucket bound of the histogram)
# The servers of the capacity series, each step run for all of them back to back; the names of
# `servers.Contender`s, "previous" being the previous version of ours (`bench/previous.py`).
CONTENDERS = ("ours", "ours-fast-path-off", "previous", "bare", "naive")


@dataclass(frozen=True)
class Series:
    name: str
    room_size: int
    rate: float
    steps: tuple[int, ...]  # total clients


@dataclass(frozen=True)
class Plan:
    """What one invocation measures; ``QUICK`` shrinks it to a smoke run of seconds."""

    seconds: float = 8.0
    series: tuple[Series, ...] = (
        Series("rooms of 5 at 5 edits/s", 5, 5.0, (100, 250, 500, 1000, 1500)),
        Series("rooms of 50 at 2 edits/s", 50, 2.0, (100, 250, 500, 1000)),
    )
    contenders: tuple[str, ...] = CONTENDERS
    target_clients: int = 500  # the p99 target's load (rooms of 5), measured `repeats` times
    repeats: int = 3
    doc_load: tuple[int, int] = (20, 5)  # rooms x clients for document-size scaling
    doc_sizes: tuple[int, int] = (1_000, 100_000)
    slow_load: tuple[int, int] = (25, 5)  # rooms x clients for the slow consumer
    slow_seconds: float = 6.0
    # Large enough that the whole texts the naive server sends fill a stalled reader's socket
    # buffers within seconds; ours sends it only the small updates.
    slow_doc_chars: int = 20_000
    # Slow-consumer pairs of ours, for medians: the others' p99 is a few milliseconds there, so
    # 20% of it is within this machine's noise for any one run.
    pair_repeats: int = 5
    # Runs of ours at each document size, alternating which size goes first. A commit that
    # waits on a slow fsync now and then sets the p99 of the run it falls in, on either size:
    # the target compares the sizes' medians over this many runs each.
    doc_repeats: int = 5
    idle_connections: int = 1_000
    procs_from: int = 1_000  # loads of this many clients or more use two client processes
    kinds: tuple[Kind, ...] = (Kind.OURS, Kind.BARE, Kind.NAIVE)  # idle memory
    browser_pages: tuple[int, ...] = (10, 30)  # open room pages, in rooms of 5, one typist each
    browser_seconds: float = 10.0
    abuse_plan: abuse.AbusePlan = abuse.FULL

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        values = dict(data)
        values["series"] = tuple(
            Series(s["name"], s["room_size"], s["rate"], tuple(s["steps"])) for s in values["series"]
        )
        values["kinds"] = tuple(Kind(kind) for kind in values["kinds"])
        values["abuse_plan"] = abuse.AbusePlan(**values["abuse_plan"])
        for name in ("contenders", "doc_load", "doc_sizes", "slow_load", "browser_pages"):
            values[name] = tuple(values[name])
        return cls(**values)


QUICK = Plan(
    seconds=1.5,
    series=(Series("rooms of 5 at 5 edits/s", 5, 5.0, (10, 20)), Series("rooms of 50 at 2 edits/s", 10, 2.0, (20,))),
    target_clients=10,
    repeats=1,
    doc_load=(2, 3),
    doc_sizes=(1_000, 20_000),
    slow_load=(2, 3),
    slow_seconds=1.5,
    slow_doc_chars=500,
    pair_repeats=1,
    doc_repeats=1,
    idle_connections=20,
    procs_from=20,
    browser_pages=(2,),
    browser_seconds=2.0,
    abuse_plan=abuse.QUICK,
)
