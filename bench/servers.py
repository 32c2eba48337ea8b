"""Start the servers under test on loopback, and read their CPU time and memory from ``/proc``.

Three kinds share one load generator (``bench/load.py``):

* ``ours``: collab pad itself, ``python app.py``;
* ``naive``: ``bench/baselines/naive.py``, the common FastAPI ConnectionManager design;
* ``bare``: ``bench/baselines/bare.py``, a ``websockets`` ``broadcast()`` relay.

A `Contender` is one server of a comparison: a kind, the source tree it runs from and its
environment. Ours is there three times: as it is, with ``FAST_PATH=false``, and the previous
version of its code (``bench/previous.py`` extracts it from git), run by the same interpreter.

Every server is a child process on a free 127.0.0.1 port, started fresh for each measurement
so that one run's memory and rooms never leak into the next.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BASELINES = Path(__file__).resolve().parent / "baselines"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Kind(StrEnum):
    OURS = "ours"
    NAIVE = "naive"
    BARE = "bare"


# Settings collab pad runs with in the benchmark. Only what the load needs differs from the
# defaults: a 100,000-character document plus what is typed into it must fit, and the logs stay
# quiet (one line per connection would be measured as well). The rate limit stays at its
# default (60 messages a second per connection), well above the 2 to 5 edits a second typed.
# Every simulated client connects from 127.0.0.1: the limits per address, meant for one person
# or one machine, are lifted, or the load would measure them (refusals past 100 connections,
# throttling past 300 messages a second) instead of the server.
OURS_ENV: Mapping[str, str] = {
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "json",
    "MAX_DOCUMENT_CHARS": "200000",
    "MAX_CONNECTIONS_PER_ADDRESS": "1000000",
    "RATE_LIMIT_PER_ADDRESS_PER_SECOND": "1000000",
    "RATE_LIMIT_PER_ADDRESS_BURST": "1000000",
    "ROOMS_PER_ADDRESS_PER_MINUTE": "1000000",
}


@dataclass(frozen=True)
class Contender:
    """One server of a comparison: what it speaks, where its code is, how it is configured."""

    name: str  # how results and reports name it
    kind: Kind
    root: Path = ROOT  # the source tree ``app.py`` runs from (ours only)
    env: Mapping[str, str] = field(default_factory=dict)


OURS = Contender("ours", Kind.OURS)
# The uvicorn fast path of `/ws` off: the server uses only public ASGI. A server without the
# FAST_PATH setting ignores the variable (both then run the same code).
FAST_PATH_OFF = Contender("ours-fast-path-off", Kind.OURS, env={"FAST_PATH": "false"})
BARE = Contender("bare", Kind.BARE)
NAIVE = Contender("naive", Kind.NAIVE)


@dataclass(frozen=True)
class ProcStats:
    cpu_seconds: float  # user + system
    rss_kib: int
    peak_rss_kib: int  # VmHWM: the highest RSS since the process started


def proc_stats(pid: int) -> ProcStats:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime) of proc(5); the split dropped the first two.
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ProcStats(
        cpu_seconds=cpu,
        rss_kib=int(status["VmRSS"].split()[0]),
        peak_rss_kib=int(status["VmHWM"].split()[0]),
    )


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot (all cores, idle excluded)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    kind: Kind
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}"

    def stats(self) -> ProcStats:
        return proc_stats(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self.process)


def command(kind: Kind, port: int, root: Path = ROOT) -> list[str]:
    if kind is Kind.OURS:
        # The script's own directory comes first on sys.path: another tree's app.py imports that
        # tree's packages, not the ones installed into the virtualenv from this one.
        return [sys.executable, str(root / "app.py")]
    return [sys.executable, str(BASELINES / f"{kind.value}.py"), "--port", str(port)]


def _ready(kind: Kind, port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError, OSError):
        if kind is Kind.OURS:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    return False


def start(kind: Kind, workdir: Path, env: Mapping[str, str] | None = None, root: Path = ROOT) -> Server:
    """Start a server of this kind on a free loopback port and wait until it accepts clients.

    ``root``: the source tree ours runs from (another version of it, say).
    """
    port = free_port()
    environment = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **(env or {})}
    if kind is Kind.OURS:
        environment = {**environment, "DATA_DIR": str(workdir / "data"), **OURS_ENV, **(env or {})}
    log_path = workdir / f"{kind.value}-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command(kind, port, root), cwd=root, env=environment, stdout=log_file, stderr=log_file
        )
    server = Server(kind, port, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {process.returncode}:\n{server.log_tail()}")
        if _ready(kind, port):
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{kind} server did not start within 60 s:\n{server.log_tail()}")


def running_contender(
    contender: Contender, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[Server]:
    """`running` for one server of a comparison, ``env`` on top of its own."""
    return running(contender.kind, {**contender.env, **(env or {})}, contender.root)


@contextlib.contextmanager
def running(kind: Kind, env: Mapping[str, str] | None = None, root: Path = ROOT) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind.value}-") as tmp:
        server = start(kind, Path(tmp), env, root)
        try:
            yield server
        finally:
            server.stop()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this code started: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
