"""Prometheus metrics of collab pad, all prefixed ``collab_``.

Each metric is documented in ``docs/operations.md`` (type, labels, meaning); a test keeps the
two in step. Labels have small fixed value sets (never a room or user id), so the number of
series stays bounded however many rooms exist. The Grafana dashboard and the alert rules in
``deploy/`` query these names; a test runs their queries against a real Prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from functools import cache

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

# `*_created` series double the output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated


class Histogram(Collector):
    """A Prometheus histogram for the event loop's hot paths.

    `observe` is a bisection and two additions. prometheus-client's own histogram takes a lock
    for each of its three counters: seven observations an update made that a tenth of the cost
    of handling it. Observations come from one thread (the event loop); a scrape from another
    thread reads a copy, at worst one observation out of step with the sum.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self._counts), self._sum
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


# Latencies of in-process work: tens of microseconds to a few hundred milliseconds.
_FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Fan-out includes waiting in a client's queue and the socket write.
_FANOUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTIONS = Gauge(
    "collab_connections",
    "Open client connections that have joined a room.",
    ["transport", "protocol"],
)
ROOMS = Gauge("collab_rooms", "Rooms held in memory (active, or empty within the grace period).")
MEMBERS = Gauge("collab_members", "Members present in all rooms.")
MESSAGES = Counter(
    "collab_messages_total",
    "Protocol messages, by direction (in from clients, out to clients) and message type.",
    ["direction", "type"],
)
DROPPED = Counter(
    "collab_dropped_sockets_total",
    "Connections the server closed because the client could not keep up or went silent.",
    ["reason"],
)
LINK_REDEMPTIONS = Counter(
    "collab_link_redemptions_total",
    "Links of private rooms presented (a link opened, a hello with a token), by result: ok, unknown, "
    "revoked, ended or rate_limited.",
    ["result"],
)
for _result in ("ok", "unknown", "revoked", "ended", "rate_limited"):
    LINK_REDEMPTIONS.labels(_result)  # every series from the start, at 0
RATE_LIMITED = Counter("collab_rate_limited_total", "Client messages refused by the per-connection rate limit.")
REJECTED = Counter(
    "collab_rejected_messages_total",
    "Client messages answered with an error, by error code.",
    ["code"],
)
UPDATE_APPLY = Histogram(
    "collab_update_apply_seconds",
    "Time to handle one message that changed a room's document: parse, rebase, apply, queue for every member.",
    buckets=_FAST_BUCKETS,
)
FANOUT = Histogram(
    "collab_fanout_seconds",
    "Time from a message being queued for a client to its write to the connection.",
    buckets=_FANOUT_BUCKETS,
)
DOCUMENT_CHARS = Histogram(
    "collab_document_chars",
    "Size of a room's document after each update, in characters.",
    buckets=(100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000),
)
ROOM_EVICTIONS = Counter(
    "collab_room_evictions_total", "Rooms unloaded from memory: empty for the grace period, or at shutdown."
)
STORE_COMMIT = Histogram(
    "collab_store_commit_seconds",
    "Time to commit one batch of updates (every room's, from one event-loop turn or more) to the store.",
    buckets=_FAST_BUCKETS,
)
STORE_COMMIT_UPDATES = Histogram(
    "collab_store_commit_updates",
    "Updates written by one store commit (group commit: more under load).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000),
)
STORE_ERRORS = Counter(
    "collab_store_errors_total",
    "Store commits that failed, and rooms whose store fell too far behind (either resets the room).",
)
# Prometheus sees only metrics, so readiness is one too: an alert on `collab_ready == 0` (or
# `up == 0`) is the scrape-side twin of a failing `/readyz`.
READY = Gauge("collab_ready", "1 while this process accepts room connections (/readyz answers 200), else 0.")
REFUSED_CONNECTIONS = Counter(
    "collab_refused_connections_total",
    "Connections and requests refused at the HTTP edge: per-address or total WebSocket limit, "
    "Host not allowed, request head not complete in time.",
    ["reason"],
)
RUNS = Counter(
    "collab_runs_total",
    "Runs of code that ended and were stored, by language, kind (code or tests) and how they ended.",
    ["language", "kind", "status"],
)
# Every series from the start, at 0 (2 x 2 x 5: the protocol's values; a test keeps them in step),
# so that a rate() panel draws 0 before the first run. A refused run message is counted once, in
# `collab_rejected_messages_total` by its error code (`run_refused`, `forbidden`, ...), not here.
for _language in ("python", "javascript"):
    for _kind in ("code", "tests"):
        for _status in ("ok", "error", "timeout", "stopped", "lost"):
            RUNS.labels(_language, _kind, _status)

# Several processes sharing rooms (`rooms.streams`): committed updates carried through Redis Streams.
STREAM_APPENDS = Counter(
    "collab_stream_appends_total",
    "Committed updates appended to their room's Redis stream, by result: ok, duplicate (the version "
    "was there already) or error (Redis failed; followers fill the gap from the database).",
    ["result"],
)
for _result in ("ok", "duplicate", "error"):
    STREAM_APPENDS.labels(_result)  # every series from the start, at 0
STREAM_READS = Counter(
    "collab_stream_reads_total",
    "Blocking reads of the followed rooms' streams answered by Redis (with or without updates).",
)
STREAM_LAG = Histogram(
    "collab_stream_lag_seconds",
    "Time from an update being applied by the process that committed it to its delivery to another process "
    "following the room.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
STREAM_ERRORS = Counter(
    "collab_stream_errors_total",
    "Redis errors of the stream follower and of appends, and stream entries skipped because they did not parse.",
)
STREAM_CONNECTED = Gauge("collab_stream_connected", "1 while the stream follower's Redis connection is up, else 0.")
COMMIT_CONFLICTS = Counter(
    "collab_commit_conflicts_total",
    "Commits of a shared room refused because another process stored first: the room's updates were "
    "made again over the other's, or its access state merged with the other's, and committed again.",
)
CATCH_UPS = Counter(
    "collab_catch_ups_total",
    "Times a room read updates it had missed from the database (a gap in its stream, a flushed or "
    "restarted Redis, a head check).",
)


@cache
def message_counter(direction: str, kind: str) -> Counter:
    """The ``collab_messages_total`` child for one direction and type.

    Resolving labels costs more than the increment itself, and this runs for every message
    to every client; the set of (direction, type) pairs is small and fixed by the protocol.
    """
    return MESSAGES.labels(direction, kind)


# Presence across processes (`rooms.shared_presence`): members of other processes, through Redis.
PRESENCE_EVENTS = Counter(
    "collab_presence_events_total",
    "Presence events carried between processes through Redis, by direction (out: published, in: received "
    "from another process) and kind: joined, left, cursor, language or access (a room's access state "
    "was stored: read it again).",
    ["direction", "kind"],
)
for _direction in ("in", "out"):
    for _kind in ("joined", "left", "cursor", "language", "access"):
        PRESENCE_EVENTS.labels(_direction, _kind)  # every series from the start, at 0
PRESENCE_ERRORS = Counter(
    "collab_presence_errors_total",
    "Redis errors of shared presence, member entries and events read from Redis that did not parse, and "
    "events given up (refused, or the send queue full).",
)
REMOTE_MEMBERS = Gauge(
    "collab_remote_members", "Members of the rooms this process serves who are connected to other processes."
)
