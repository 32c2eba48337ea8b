"""What a load measured: each client process's part, their combination, the percentiles.

A `Result` is printed (`format_result`), written as one JSON line (`Result.to_json`) and read
back from the run's results file (`Result.from_json`), so that a report can be rendered again
without measuring again. Edits that a live peer had not received when the load ended count as
``undelivered`` and as infinitely late in the percentiles; a client the server closed before
the end is ``dropped``.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Part:
    """What one client process measured."""

    connected: int = 0
    connect_failures: int = 0
    sent: int = 0  # edits sent during the load
    frames: int = 0  # text frames received
    messages: int = 0  # messages received (a batched frame holds several)
    received_bytes: int = 0  # payload bytes of those frames
    deliveries: int = 0  # peer edits received by measured clients
    undelivered: int = 0  # peer edits a live measured client never received
    errors: int = 0  # `error` messages from the server
    dropped: int = 0  # measured clients the server closed before the end
    stalled_dropped: int = 0  # stalled clients the server closed (what it should do)
    cpu_seconds: float = 0.0  # this process's CPU time while the clients typed
    samples: bytes = b""  # latencies in seconds, array('d')


@dataclass
class Result:
    """A load's measurements, as printed and as written to the report."""

    kind: str
    rooms: int
    clients_per_room: int
    clients: int
    rate: float
    seconds: float
    doc_chars: int
    stalled: int
    silent: int
    batch: bool
    procs: int
    connected: int = 0
    connect_failures: int = 0
    edits: int = 0
    deliveries: int = 0
    undelivered: int = 0
    errors: int = 0
    dropped: int = 0
    stalled_dropped: int = 0
    p50_ms: float = math.inf
    p95_ms: float = math.inf
    p99_ms: float = math.inf
    max_ms: float = math.inf
    updates_in_per_s: float = 0.0
    frames_out_per_s: float = 0.0
    messages_out_per_s: float = 0.0
    received_bytes_per_edit: float = 0.0
    server_cpu_percent: float = 0.0
    server_rss_mib: float = 0.0  # highest RSS sampled while loaded
    server_peak_rss_mib: float = 0.0  # VmHWM at the end
    server_base_rss_mib: float = 0.0  # RSS before any client connected
    client_cpu_percent: float = 0.0  # all client processes together
    client_cpu_max_percent: float = 0.0  # the busiest client process
    machine_cpu_percent: float = 0.0  # every process on the machine together (100% = one core)
    # Which server of a comparison took the load ("ours", "previous", ...); its kind when empty.
    server: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.server or self.kind

    @property
    def ok(self) -> bool:
        """Within capacity: p99 under 100 ms, nothing dropped, lost or refused."""
        return (
            self.p99_ms < 100
            and not self.dropped
            and not self.undelivered
            and not self.connect_failures
            and not self.errors
        )

    @property
    def other_cpu_percent(self) -> float:
        """CPU that neither the server nor the clients used: other work on the machine."""
        if not self.machine_cpu_percent:
            return 0.0
        return max(0.0, self.machine_cpu_percent - self.server_cpu_percent - self.client_cpu_percent)

    @property
    def cpu_ms_per_client_second(self) -> float:
        return self.server_cpu_percent * 10 / max(1, self.clients)

    @property
    def rss_kib_per_client(self) -> float:
        return (self.server_rss_mib - self.server_base_rss_mib) * 1024 / max(1, self.clients)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["other_cpu_percent"] = self.other_cpu_percent
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = None if math.isinf(value) else round(value, 3)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """A result as `to_json` wrote it: ``None`` was an infinite latency."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            name: math.inf if value is None and fields[name].type == "float" else value
            for name, value in data.items()
            if name in fields
        }
        return cls(**values)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; infinite when the rank falls among the undelivered."""
    if not sorted_values:
        return math.inf
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def combine(result: Result, parts: list[Part], seconds: float) -> None:
    """Add what the client processes measured to ``result``, over ``seconds`` of typing."""
    samples = array("d")
    for part in parts:
        chunk = array("d")
        chunk.frombytes(part.samples)
        samples.extend(chunk)
    values = sorted(samples)
    result.connected = sum(p.connected for p in parts)
    result.edits = sum(p.sent for p in parts)
    result.deliveries = len(values)
    result.undelivered = sum(p.undelivered for p in parts)
    result.errors = sum(p.errors for p in parts)
    result.dropped = sum(p.dropped for p in parts)
    result.stalled_dropped = sum(p.stalled_dropped for p in parts)
    # The undelivered count as infinitely late.
    everything: list[float] = values + [math.inf] * result.undelivered
    result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = (
        percentile(everything, q) * 1000 for q in (0.5, 0.95, 0.99, 1.0)
    )
    result.updates_in_per_s = result.edits / seconds
    result.frames_out_per_s = sum(p.frames for p in parts) / seconds
    result.messages_out_per_s = sum(p.messages for p in parts) / seconds
    result.received_bytes_per_edit = sum(p.received_bytes for p in parts) / max(1, result.edits)
    cpu = [p.cpu_seconds / seconds * 100 for p in parts]
    result.client_cpu_percent = sum(cpu)
    result.client_cpu_max_percent = max(cpu, default=0.0)


def format_result(result: Result) -> str:
    """A human-readable block for one load."""

    def ms(value: float) -> str:
        return "never" if math.isinf(value) else f"{value:.1f} ms"

    rows = [
        ("server", f"{result.kind}" + (" (batch)" if result.batch else "")),
        ("load", f"{result.rooms} rooms x {result.clients_per_room}, {result.rate:g} edits/s, {result.seconds:g} s"),
        ("document", f"{result.doc_chars} chars at start"),
        ("connected", f"{result.connected} of {result.clients} ({result.connect_failures} failed)"),
        ("edits", f"{result.edits} ({result.updates_in_per_s:.0f}/s)"),
        ("deliveries", f"{result.deliveries} ({result.undelivered} undelivered)"),
        ("latency p50/p95/p99", f"{ms(result.p50_ms)} / {ms(result.p95_ms)} / {ms(result.p99_ms)}"),
        ("latency max", ms(result.max_ms)),
        ("out", f"{result.frames_out_per_s:.0f} frames/s, {result.messages_out_per_s:.0f} messages/s"),
        ("bytes per edit", f"{result.received_bytes_per_edit:.0f} received by all peers together"),
        ("errors / dropped", f"{result.errors} / {result.dropped} (stalled dropped: {result.stalled_dropped})"),
        ("server CPU", f"{result.server_cpu_percent:.0f}%"),
        ("server RSS", f"{result.server_rss_mib:.1f} MiB (base {result.server_base_rss_mib:.1f})"),
        ("client CPU", f"{result.client_cpu_percent:.0f}% in {result.procs} processes"),
        ("other work's CPU", f"{result.other_cpu_percent:.0f}% (100% = one core)"),
        ("within capacity", "yes" if result.ok else "no"),
    ]
    return "\n".join(f"{name:>22}  {value}" for name, value in rows)
