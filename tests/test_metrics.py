"""The event loop's histogram gives exactly the exposition text of prometheus-client's own."""

from __future__ import annotations

import prometheus_client
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from observability import metrics

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
