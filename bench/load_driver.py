"""Drive one load: client processes that connect, type and measure, and the server's /proc.

`run_load` spreads a load's rooms over ``load.procs`` client processes (a room's clients always
share one, so that an edit and its receipts are timed on one clock, ``perf_counter``), starts
them typing at one moment, samples the server's CPU time and RSS over the typing window, and
combines what the processes measured (`load_result.combine`). The load is open-loop: edits are
sent on schedule whether or not earlier ones were answered, so an overloaded server shows as
latency rather than as a politely reduced load. `idle_memory` measures a server's memory per
idle joined connection instead.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import resource
import socket
import sys
import time
from array import array
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from load_client import Client, Load, Room
from load_result import Part, Result, combine
from servers import Kind

CONNECT_CONCURRENCY = 64
T = TypeVar("T")
START_DELAY = 1.0  # seconds between "everyone connected" and the first edit


class Worker:
    """The clients of some rooms, in one process."""

    def __init__(self, load: Load, room_indices: Sequence[int]) -> None:
        self.load = load
        self.loop = asyncio.get_running_loop()
        self.rooms = [Room(load.room_name(index)) for index in room_indices]
        self.measuring = False
        self.typing = False
        self.sent = self.frames = self.messages = self.received_bytes = self.errors = 0
        self.dropped = self.stalled_dropped = 0
        self.latencies = array("d")

    def url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.load.port}/ws/{room}"

    def lost(self, client: Client) -> None:
        if not self.measuring:
            return
        if client.role == "stalled":
            self.stalled_dropped += 1
        elif client.role in ("typist", "silent"):
            self.dropped += 1

    async def open(self, room: Room, client_id: str, role: str) -> Client:
        client = Client(self, room, client_id, role)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if role == "stalled":
            # A small receive buffer, so the server's writes back up soon after it stops reading.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await self.loop.sock_connect(sock, ("127.0.0.1", self.load.port))
            await self.loop.create_connection(lambda: client, sock=sock)
        except BaseException:
            sock.close()
            raise
        await client.opened
        if self.load.kind is Kind.OURS:
            client.hello()
            await client.joined
        return client

    async def fill_document(self, room: Room) -> None:
        """Fill the room's document with ``doc_chars`` characters of code, and leave."""
        filler = await asyncio.wait_for(self.open(room, f"{room.name}-filler", "filler"), 30)
        line = "value = compute(value, 42)  # filler\n"
        text = (line * (self.load.doc_chars // len(line) + 1))[: self.load.doc_chars]
        changes: list[Any] = [[0, *text.split("\n")]]
        if filler.length:
            changes.append(filler.length)
        message: dict[str, Any] = {"type": "push", "version": filler.version, "seq": 1, "changes": changes}
        if self.load.kind is Kind.OURS:
            filler.joined = self.loop.create_future()
            filler.send(message)
            await asyncio.wait_for(filler.joined, 30)  # our own update: the text is in
        else:
            message["client_id"] = filler.client_id
            filler.send(message)
            await asyncio.sleep(0.2)  # no reply to wait for; the others connect after this anyway
        filler.protocol.send_close()
        filler._flush()

    async def connect(self) -> int:
        """Open every client of every room; the number that failed."""
        load = self.load
        if load.doc_chars:
            await asyncio.gather(*(self.fill_document(room) for room in self.rooms))
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        failures = 0

        async def one(room: Room, index: int) -> None:
            nonlocal failures
            if index < load.stalled:
                role = "stalled"
            elif index < load.stalled + load.silent:
                role = "silent"
            else:
                role = "typist"
            client_id = f"{room.name}-{index}"
            async with gate:
                try:
                    room.clients[client_id] = await asyncio.wait_for(self.open(room, client_id, role), 30)
                except (OSError, ConnectionError, TimeoutError):
                    failures += 1

        await asyncio.gather(*(one(room, index) for room in self.rooms for index in range(load.clients)))
        return failures

    async def run(self, start: float) -> Part:
        load = self.load
        clients = [client for room in self.rooms for client in room.clients.values()]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        self.measuring = self.typing = True
        cpu_start = _cpu_seconds()
        for client in clients:
            if client.role == "stalled" and client.transport is not None:
                client.transport.pause_reading()
            elif client.role == "typist":
                self.loop.call_later(client.rng.expovariate(load.rate), client.edit)
        await asyncio.sleep(max(0.0, start + load.seconds - time.perf_counter()))
        self.typing = False
        cpu_seconds = _cpu_seconds() - cpu_start
        # Wait for the edits still on their way, within a bound.
        measured = [c for c in clients if c.role in ("typist", "silent")]
        for _ in range(math.ceil(load.drain_seconds / 0.05)):
            if not any(self._missing(c) for c in measured if not c.closed):
                break
            await asyncio.sleep(0.05)
        self.measuring = False
        part = Part(
            connected=len(clients),
            sent=self.sent,
            frames=self.frames,
            messages=self.messages,
            received_bytes=self.received_bytes,
            deliveries=len(self.latencies),
            undelivered=sum(self._missing(c) for c in measured if not c.closed),
            errors=self.errors,
            dropped=self.dropped,
            stalled_dropped=self.stalled_dropped,
            cpu_seconds=cpu_seconds,
            samples=self.latencies.tobytes(),
        )
        for client in clients:
            if not client.closed and client.transport is not None:
                client.transport.abort()  # quicker than 1,500 closing handshakes; the servers cope
        return part

    def _missing(self, client: Client) -> int:
        peers = [other for other in client.room.clients.values() if other is not client]
        expected = sum(len(other.sent) - other.cancelled for other in peers)
        return max(0, expected - client.received)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (as uvicorn does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(load: Load, room_indices: list[int], pipe: Connection) -> None:
    """A client process: connect, say how many connected, wait for the start time, type."""

    async def main() -> None:
        worker = Worker(load, room_indices)
        failures = await worker.connect()
        pipe.send(("ready", failures))
        start = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        part = await worker.run(start)
        part.connect_failures = failures
        pipe.send(("done", part))

    try:
        run_loop(main())
    except BaseException as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise


def run_load(load: Load, server_pid: int | None = None) -> Result:
    """Drive one load from ``load.procs`` client processes; read the server's /proc if given."""
    base = servers.proc_stats(server_pid) if server_pid else None
    result = Result(
        kind=load.kind.value,
        rooms=load.rooms,
        clients_per_room=load.clients,
        clients=load.total_clients,
        rate=load.rate,
        seconds=load.seconds,
        doc_chars=load.doc_chars,
        stalled=load.stalled,
        silent=load.silent,
        batch=load.batch and load.kind is Kind.OURS,
        procs=0,  # how many drove it: known once they did
    )

    def watch(start: float) -> None:
        if server_pid:
            _watch_server(server_pid, start, load.seconds, result, base)

    parts, result.connect_failures, result.procs = drive_clients(load, watch)
    combine(result, parts, load.seconds)
    return result


def drive_clients(load: Load, during: Callable[[float], object]) -> tuple[list[Part], int, int]:
    """Start the client processes (each a share of the rooms), call ``during`` with the time they
    start typing, and collect what they measured: their parts, the connections that failed, and
    how many processes drove the load."""
    context = multiprocessing.get_context("spawn")
    indices = list(range(load.rooms))
    shares = [indices[i :: load.procs] for i in range(load.procs) if indices[i :: load.procs]]
    pipes: list[Connection] = []
    processes: list[BaseProcess] = []
    for share in shares:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(load, share, child), daemon=True)
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        failures = sum(_expect(pipe, process, "ready", 180) for pipe, process in zip(pipes, processes, strict=True))
        start = time.perf_counter() + START_DELAY
        for pipe in pipes:
            pipe.send(start)
        during(start)
        parts: list[Part] = [
            _expect(pipe, process, "done", load.seconds + load.drain_seconds + 120)
            for pipe, process in zip(pipes, processes, strict=True)
        ]
    finally:
        for worker_process in processes:
            worker_process.join(timeout=10)
            if worker_process.is_alive():
                worker_process.kill()
    return parts, failures, len(shares)


def _expect(pipe: Connection, process: BaseProcess, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not pipe.poll(0.5):
        if not process.is_alive():
            raise RuntimeError(f"client process exited with {process.exitcode} before sending {what!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"client process sent no {what!r} within {timeout:.0f} s")
    kind, payload = pipe.recv()
    if kind != what:
        raise RuntimeError(f"client process failed: {payload}")
    return payload


def _watch_server(pid: int, start: float, seconds: float, result: Result, base: servers.ProcStats | None) -> None:
    """Sample the server's CPU time and RSS over the typing window."""
    time.sleep(max(0.0, start - time.perf_counter()))
    first = servers.proc_stats(pid)
    machine = servers.machine_busy_seconds()
    highest = first.rss_kib
    end = start + seconds
    while (now := time.perf_counter()) < end:
        time.sleep(min(0.25, end - now))
        highest = max(highest, servers.proc_stats(pid).rss_kib)
    last = servers.proc_stats(pid)
    result.server_cpu_percent = (last.cpu_seconds - first.cpu_seconds) / seconds * 100
    result.machine_cpu_percent = (servers.machine_busy_seconds() - machine) / seconds * 100
    result.server_rss_mib = max(highest, last.rss_kib) / 1024
    result.server_peak_rss_mib = last.peak_rss_kib / 1024
    result.server_base_rss_mib = (base or first).rss_kib / 1024


def idle_memory(kind: Kind, port: int, pid: int, count: int, room_size: int = 5) -> dict[str, Any]:
    """Server memory per idle raw connection: RSS growth over ``count`` joined connections."""

    async def main() -> dict[str, Any]:
        load = Load(kind, port, rooms=math.ceil(count / room_size), clients=room_size, room_prefix="idle")
        worker = Worker(load, range(load.rooms))
        # Warm up first: the first connections pay for imports, caches and arenas.
        warm = Worker(replace(load, rooms=2, room_prefix="warm"), range(2))
        await warm.connect()
        await asyncio.sleep(1.0)
        before = servers.proc_stats(pid).rss_kib
        failures = await worker.connect()
        await asyncio.sleep(2.0)
        after = servers.proc_stats(pid).rss_kib
        for w in (warm, worker):
            for room in w.rooms:
                for client in room.clients.values():
                    if client.transport is not None:
                        client.transport.abort()
        opened = count - failures
        return {
            "kind": kind.value,
            "idle_connections": opened,
            "rss_before_mib": round(before / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "kib_per_connection": round((after - before) / max(1, opened), 1),
        }

    return run_loop(main())
