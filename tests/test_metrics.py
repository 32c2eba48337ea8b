"""The event loop's histogram gives exactly the exposition text of prometheus-client's own; runs
are counted once, when stored, and refused run messages only as rejected messages."""

from __future__ import annotations

import json
from typing import Any, get_args

import prometheus_client
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from observability import metrics
from rooms.protocol import Hello
from rooms.registry import RoomRegistry
from rooms.run_protocol import RUN_LANGUAGES, RunStatus
from rooms.settings import Settings
from tests.test_registry import FakeTransport
from tests.test_registry_access import FailingStore

BUCKETS = (0.0005, 0.001, 0.25, 1.0, 100, 1_000_000)


@given(st.lists(st.floats(min_value=0, max_value=2e6, allow_nan=False) | st.sampled_from(BUCKETS), max_size=40))
def test_histogram_exposition_matches_prometheus_client(values: list[float]) -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = metrics.Histogram("collab_test_seconds", "A test histogram.", BUCKETS, registry=ours_registry)
    theirs = prometheus_client.Histogram(
        "collab_test_seconds", "A test histogram.", buckets=BUCKETS, registry=theirs_registry
    )
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    assert generate_latest(theirs_registry).decode() == generate_latest(ours_registry).decode()


# Runs: counted by the driver once the commit that stores them succeeds, never by the room.


def runs(language: str = "python", kind: str = "code", status: str = "ok") -> float:
    return REGISTRY.get_sample_value("collab_runs_total", {"language": language, "kind": kind, "status": status}) or 0


def rejected(code: str) -> float:
    return REGISTRY.get_sample_value("collab_rejected_messages_total", {"code": code}) or 0


def run_frame(message_type: str, **fields: Any) -> str:
    return json.dumps({"type": message_type, "run_id": "r1", **fields})


ALL_RUNS = [
    (lang, kind, status) for lang in RUN_LANGUAGES for kind in ("code", "tests") for status in get_args(RunStatus)
]
START = run_frame("run_start", language="python", version=0, kind="code")
END = run_frame("run_end", status="error", duration_ms=5)


def test_every_run_series_is_exported_from_the_start_with_the_protocols_values() -> None:
    (family,) = [family for family in REGISTRY.collect() if family.name == "collab_runs"]
    series = {(s.labels["language"], s.labels["kind"], s.labels["status"]) for s in family.samples}
    assert set(ALL_RUNS) == series


async def test_a_run_is_counted_once_when_the_commit_storing_it_succeeds() -> None:
    registry = RoomRegistry(Settings())
    runner = await registry.join_versioned("r", FakeTransport(), Hello(type="hello", client_id="c1", username="ann"))
    before = runs(status="error")
    registry.receive(runner, START)
    registry.receive(runner, END)
    assert before == runs(status="error")  # ended, not yet stored
    await registry.settled()
    assert before + 1 == runs(status="error")


async def test_a_run_whose_commit_fails_is_not_counted() -> None:
    store = FailingStore()
    registry = RoomRegistry(Settings(), store=store)
    runner = await registry.join_versioned("r", FakeTransport(), Hello(type="hello", client_id="c1", username="ann"))
    await registry.settled()
    before = runs(status="error")
    store.failing = True
    registry.receive(runner, START)
    registry.receive(runner, END)
    assert not await registry.durable("r")
    assert before == runs(status="error")


async def test_a_refused_run_message_is_counted_once_as_a_rejected_message() -> None:
    registry = RoomRegistry(Settings())
    runner = await registry.join_versioned("r", FakeTransport(), Hello(type="hello", client_id="c1", username="ann"))
    before = rejected("run_refused"), sum(runs(*labels) for labels in ALL_RUNS)
    registry.receive(runner, run_frame("run_output", stream="stdout", text="no run"))
    await registry.settled()
    assert (before[0] + 1, before[1]) == (rejected("run_refused"), sum(runs(*labels) for labels in ALL_RUNS))
