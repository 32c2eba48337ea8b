"""Load generator: R rooms x U clients typing into one server, edit-to-peer latency measured.

    .venv/bin/python bench/load.py --kind ours --rooms 100 --clients 5 --rate 5 --seconds 10
    .venv/bin/python bench/load.py --kind naive --rooms 20 --clients 5 --doc-chars 100000
    .venv/bin/python bench/load.py --kind ours --idle 1000

Without ``--port`` the server of that kind is started on a free loopback port and stopped at
the end (``bench/servers.py``). Every client types at ``rate`` edits a second (Poisson
arrivals): mostly one character at its cursor, sometimes a backspace, sometimes a paste of one
to a few lines, sometimes a jump elsewhere. Every other member's receipt of an edit gives one
latency sample: from the moment the author wrote the frame to the moment the peer read it, in
one process and on one clock (``perf_counter``). A room's clients always live in the same
client process, matched by ``(client_id, seq)``. The load is open-loop: edits are sent on
schedule whether or not earlier ones were answered, so an overloaded server shows as latency
rather than as a politely reduced load.

Each kind of server gets the same frames, adapted only as far as it must be:

* ``ours`` speaks the versioned protocol as its clients do (``rooms/replica.py``, which the
  browser editor also follows): ``hello`` (with ``batch`` unless ``--no-batch``), one ``push``
  in flight at a time, edits typed meanwhile composed into the next one, remote updates rebased
  past local work. A push may so carry several edits; every edit in it is one latency sample,
  from the moment it was typed. ``--push-every-edit`` sends each edit as a push of its own,
  against the last version seen, whether or not the previous one was confirmed (the server
  rebases it): not what clients do, but a harder load for the server.
* ``naive`` and ``bare`` get the same ``push`` frames, with the author's ``client_id`` in them,
  and no ``hello``: the naive server answers with the whole text as ``code_change``, the bare
  one relays the frame as it is.

Clients are sans-I/O ``websockets`` protocols on asyncio transports (no task per connection),
spread over ``--procs`` client processes, so that the generator costs as little CPU as a
Python client can; its CPU time is reported so that a client bottleneck shows.

Edits that a live peer had not received when the run ended are counted as ``undelivered`` and
as infinitely late in the percentiles. A client the server closes before the end is
``dropped``. All traffic stays on 127.0.0.1; every run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import random
import resource
import socket
import sys
import time
from array import array
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from servers import Kind

from rooms.changes import ChangeSet, utf16_len
from rooms.errors import InvalidMessage
from rooms.replica import Replica

LETTERS = "abcdefghijklmnopqrstuvwxyz_=()[]:.,'"
PASTE_WORDS = ("return", "self", "value", "print(x)", "if", "for i in range(n):", "x = 1", "# note", "def f():")
INSERT, BACKSPACE, PASTE, JUMP = 0.85, 0.10, 0.04, 0.01  # the mix of edits (adds up to 1)
CONNECT_CONCURRENCY = 64
T = TypeVar("T")
START_DELAY = 1.0  # seconds between "everyone connected" and the first edit


class LengthReplica(Replica):
    """A client's replica as the browser's (rebasing, one push in flight), keeping its document's
    length rather than its text: typing needs positions only, and building every document's text
    cost the generator a tenth of its CPU, taken from the server it measures on the same cores."""

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.units = 0

    def update(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.inflight is not None or self.pending is not None:
            return super().update(message)  # local work to rebase: the whole algorithm
        # Nothing local: only the length moves, read from the JSON without building a ChangeSet.
        version = int(message["version"])
        if version != self.version + 1:
            raise InvalidMessage(f"update {version} does not follow version {self.version}")
        before = after = 0
        for part in message["changes"]:
            if isinstance(part, int):
                before += part
                after += part
            else:
                before += part[0]
                after += utf16_len("\n".join(part[1:]))
        if before != self.units:
            raise InvalidMessage(f"changes expect a document of {before} units, the replica has {self.units}")
        self.version = version
        self.units = after
        return None

    def _apply(self, changes: ChangeSet) -> None:
        if changes.length != self.units:
            raise InvalidMessage(f"changes expect a document of {changes.length} units, the replica has {self.units}")
        self.units = changes.new_length

    def _reset(self, doc: str) -> None:
        self.units = utf16_len(doc)

    @property
    def length(self) -> int:
        return self.units


@dataclass(frozen=True)
class Load:
    """One load: R rooms x U clients, each typing ``rate`` edits a second for ``seconds``."""

    kind: Kind
    port: int
    rooms: int
    clients: int  # per room
    rate: float = 5.0  # edits a second per typing client
    seconds: float = 10.0
    doc_chars: int = 0  # each room's document is filled with this many characters first
    stalled: int = 0  # clients per room that stop reading (and typing) when the load starts
    silent: int = 0  # clients per room that read but never type (the control for `stalled`)
    batch: bool = True  # ours: ask for coalesced frames (`batch` in hello)
    push_every_edit: bool = False  # ours: a push per edit instead of one in flight (not a real client)
    procs: int = 1  # client processes
    drain_seconds: float = 3.0  # longest wait for late deliveries after the last edit
    room_prefix: str = "bench"
    seed: int = 1

    @property
    def total_clients(self) -> int:
        return self.rooms * self.clients

    def room_name(self, index: int) -> str:
        return f"{self.room_prefix}-{index}"


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


class Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: dict[str, Client] = {}
        # The server names an update's author to the others by user_id only (a client_id is
        # its owner's credential): each client's user_id, from its welcome.
        self.by_user: dict[str, Client] = {}


class Client(asyncio.Protocol):
    """One WebSocket connection driven by a sans-I/O protocol on an asyncio transport."""

    def __init__(self, worker: Worker, room: Room, client_id: str, role: str) -> None:
        self.worker = worker
        self.kind = worker.load.kind
        self.room = room
        self.client_id = client_id
        self.role = role  # "typist", "silent", "stalled" or "seeder"
        self.protocol = ClientProtocol(parse_uri(worker.url(room.name)), max_size=None)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = worker.loop.create_future()
        self.joined: asyncio.Future[None] = worker.loop.create_future()
        if self.kind is not Kind.OURS:
            self.joined.set_result(None)  # no hello, no welcome: open means joined
        self.version = 0
        self.length = 0
        self.cursor = 0
        self.seq = 0
        self.sent: list[float] = []  # the time each edit was typed (edit n at index n - 1)
        # ours, as a real client: the replica, and which edits (indices into `sent`) each push
        # carried, by seq; edits from `unpushed` on are still waiting in the replica.
        self.replica: Replica | None = None
        if self.kind is Kind.OURS and not worker.load.push_every_edit and role != "seeder":
            self.replica = LengthReplica(client_id)
        self.pushed: dict[int, tuple[int, int]] = {}
        self.unpushed = 0
        self.received = 0  # peer edits received while measuring
        self.closed = False
        self.rng = random.Random(f"{worker.load.seed}-{client_id}")
        self.fragments: list[bytes] = []
        self.framing = False  # frames are split by `_frames` rather than the protocol
        self.unparsed = bytearray()  # received since, not yet a whole frame

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, without the subclass
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.framing:
            self.unparsed += data
            self._frames(now)
            return
        self._protocol_data(data, now)
        # Open, with no part of a frame waiting in the protocol: frames start afresh from here.
        self.framing = self.protocol.state is State.OPEN and not self.protocol.reader.buffer

    def _protocol_data(self, data: bytes, now: float) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if self.protocol.state is State.OPEN:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(ConnectionError(f"handshake refused: {event.status_code}"))
            elif isinstance(event, Frame):
                self._frame(event, now)
        self._flush()
        if self.protocol.close_expected() and self.transport is not None:
            self.transport.close()

    def _frames(self, now: float) -> None:
        """Split the server's data frames here, once the connection is open.

        `websockets` parses every frame through a chain of generators, which cost the generator
        a quarter of its CPU in rooms of 50; a server's frames are unmasked, so a data frame is a
        header and its payload. Control frames (ping, close) still go to the protocol, which
        answers them: it has seen nothing since the handshake, so it starts at that frame.
        """
        buffer = self.unparsed
        size = len(buffer)
        start = 0
        while size - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            if second & 0x80 or first & 0x70:
                raise ConnectionError("a masked or compressed frame from the server")
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
                length = int.from_bytes(buffer[start + 2 : start + 4]) if size - start >= 4 else -1
            elif length == 127:
                header = 10
                length = int.from_bytes(buffer[start + 2 : start + 10]) if size - start >= 10 else -1
            end = start + header + length
            if length < 0 or end > size:
                break
            opcode = Opcode(first & 0x0F)
            if opcode in (Opcode.TEXT, Opcode.CONT, Opcode.BINARY):
                self._frame(Frame(opcode, bytes(buffer[start + header : end]), fin=bool(first & 0x80)), now)
            else:
                self.framing = False  # a close moves the protocol on; a ping leaves it open
                self._protocol_data(bytes(buffer[start:end]), now)
                self.framing = self.protocol.state is State.OPEN
                if not self.framing:
                    self._protocol_data(bytes(buffer[end:]), now)
                    buffer.clear()
                    return
            start = end
        del buffer[:start]
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in (self.opened, self.joined):
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self.worker.lost(self)

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    # Receiving

    def _frame(self, frame: Frame, now: float) -> None:
        payload = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
        if frame.opcode is Opcode.CONT or not frame.fin:
            self.fragments.append(payload)
            if not frame.fin:
                return
            data, self.fragments = b"".join(self.fragments), []
        elif frame.opcode is Opcode.TEXT:
            data = payload
        else:
            return  # ping, pong, close: the protocol answers them
        worker = self.worker
        if worker.measuring:
            worker.frames += 1
            worker.received_bytes += len(data)
        if self.kind is Kind.NAIVE:
            # The whole text follows "code": read only the fields before it.
            end = data.find(b',"code":')
            message = json.loads(data[:end] + b"}") if end >= 0 else json.loads(data)
            worker.messages += worker.measuring
            self._peer_edit(message.get("user_id"), message.get("seq"), now)
        elif self.kind is Kind.BARE:
            message = json.loads(data)
            worker.messages += worker.measuring
            self._peer_edit(message.get("client_id"), message.get("seq"), now)
        else:
            decoded = json.loads(data)
            messages = decoded if isinstance(decoded, list) else (decoded,)
            worker.messages += len(messages) if worker.measuring else 0
            for message in messages:
                self._versioned(message, now)

    def _versioned(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        replica = self.replica
        if replica is not None and kind in ("update", "welcome", "ack"):
            if kind == "update":
                self._push(replica.update(message))
                if message.get("client_id") != self.client_id:
                    self._peer_edit(self.room.by_user.get(message.get("user_id", "")), message["seq"], now)
            elif kind == "ack":
                # A push that changed nothing: confirmed without a version; send what is pending.
                self._push(replica.ack(message))
            else:
                replica.welcome(message)
                self.room.by_user[message["user_id"]] = self
                self.cursor = self.rng.randint(0, replica.length)
                if not self.joined.done():
                    self.joined.set_result(None)
            return
        if kind == "update":
            self.version = message["version"]
            for part in message["changes"]:
                if isinstance(part, list):
                    # Inserted lines joined by "\n", minus the deleted length (ASCII only).
                    self.length += sum(map(len, part[1:])) + max(0, len(part) - 2) - part[0]
            if message.get("client_id") != self.client_id:
                self._peer_edit(self.room.by_user.get(message.get("user_id", "")), message["seq"], now)
            elif self.role == "seeder" and not self.joined.done():
                self.joined.set_result(None)
        elif kind == "welcome":
            self.room.by_user[message["user_id"]] = self
            self.version = message["version"]
            self.length = len(message.get("doc", ""))
            self.cursor = self.rng.randint(0, self.length)
            if not self.joined.done():
                self.joined.set_result(None)
        elif kind == "ping":
            self.send({"type": "pong"})
        elif kind == "error":
            self.worker.errors += 1

    def _peer_edit(self, author_id: object, seq: object, now: float) -> None:
        """An edit by ``author_id`` (a `Client`, or the client_id or user_id naming one) arrived."""
        worker = self.worker
        if not worker.measuring or self.role not in ("typist", "silent"):
            return
        if isinstance(author_id, Client):
            author: Client | None = author_id
        else:
            author = self.room.clients.get(author_id) if isinstance(author_id, str) else None
        if author is None or author is self or not isinstance(seq, int):
            return  # the seeder's text
        if author.replica is not None:
            first, end = author.pushed.get(seq, (0, 0))
            for index in range(first, end):
                worker.latencies.append(now - author.sent[index])
            self.received += end - first
            return
        if not 0 < seq <= len(author.sent):
            return  # an edit made before the load started
        self.received += 1
        worker.latencies.append(now - author.sent[seq - 1])

    # Sending

    def send(self, message: dict[str, Any]) -> None:
        if self.closed or self.transport is None:
            return
        self.protocol.send_text(json.dumps(message, separators=(",", ":")).encode())
        self._flush()

    def hello(self) -> None:
        self.send(
            {
                "type": "hello",
                "client_id": self.client_id,
                "username": self.client_id,
                "version": None,
                "batch": self.worker.load.batch,
            }
        )

    def _push(self, push: dict[str, Any] | None) -> None:
        """Send a push the replica made; it carries every edit typed since the last one."""
        if push is None:
            return
        self.pushed[push["seq"]] = (self.unpushed, len(self.sent))
        self.unpushed = len(self.sent)
        self.send(push)

    def edit(self) -> None:
        """Type one edit at the cursor and schedule the next one."""
        worker = self.worker
        if self.closed or not worker.typing:
            return
        rng = self.rng
        replica = self.replica
        length = replica.length if replica is not None else self.length
        if self.cursor > length:
            self.cursor = length
        choice = rng.random()
        if choice < JUMP:
            self.cursor = rng.randint(0, length)
        if choice < INSERT + JUMP:
            text = "\n" if rng.random() < 0.05 else (" " if rng.random() < 0.15 else rng.choice(LETTERS))
        elif choice < INSERT + JUMP + PASTE:
            text = "\n".join(" ".join(rng.choices(PASTE_WORDS, k=rng.randint(2, 8))) for _ in range(rng.randint(1, 4)))
        else:
            text = ""
        if not text and self.cursor == 0:
            text = rng.choice(LETTERS)  # nothing to delete before the cursor
        position, deleted = (self.cursor, 0) if text else (self.cursor - 1, 1)
        self.cursor = position + len(text)
        self.sent.append(time.perf_counter())
        worker.sent += 1
        if replica is not None:
            self._push(replica.edit(ChangeSet.of_replace(length, position, position + deleted, text)))
        else:
            self._push_edit(length, position, deleted, text)
        worker.loop.call_later(rng.expovariate(worker.load.rate), self.edit)

    def _push_edit(self, length: int, position: int, deleted: int, text: str) -> None:
        """One edit as a push of its own, against the last version seen (no replica)."""
        changes: list[Any] = [position] if position else []
        changes.append([deleted, *text.split("\n")])
        if length - position - deleted:
            changes.append(length - position - deleted)
        self.seq += 1
        message: dict[str, Any] = {"type": "push", "version": self.version, "seq": self.seq, "changes": changes}
        if self.kind is not Kind.OURS:
            message["client_id"] = self.client_id
            # No echo comes back from these servers: keep the length ourselves.
            self.length += len(text) - deleted
        self.send(message)


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

    async def seed_document(self, room: Room) -> None:
        """Fill the room's document with ``doc_chars`` characters of code, and leave."""
        seeder = await asyncio.wait_for(self.open(room, f"{room.name}-seeder", "seeder"), 30)
        line = "value = compute(value, 42)  # filler\n"
        text = (line * (self.load.doc_chars // len(line) + 1))[: self.load.doc_chars]
        changes: list[Any] = [[0, *text.split("\n")]]
        if seeder.length:
            changes.append(seeder.length)
        message: dict[str, Any] = {"type": "push", "version": seeder.version, "seq": 1, "changes": changes}
        if self.load.kind is Kind.OURS:
            seeder.joined = self.loop.create_future()
            seeder.send(message)
            await asyncio.wait_for(seeder.joined, 30)  # our own update: the text is in
        else:
            message["client_id"] = seeder.client_id
            seeder.send(message)
            await asyncio.sleep(0.2)  # no reply to wait for; the others connect after this anyway
        seeder.protocol.send_close()
        seeder._flush()

    async def connect(self) -> int:
        """Open every client of every room; the number that failed."""
        load = self.load
        if load.doc_chars:
            await asyncio.gather(*(self.seed_document(room) for room in self.rooms))
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
        expected = sum(len(other.sent) for other in client.room.clients.values() if other is not client)
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
    extra: dict[str, Any] = field(default_factory=dict)

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


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; infinite when the rank falls among the undelivered."""
    if not sorted_values:
        return math.inf
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def run_load(load: Load, server_pid: int | None = None) -> Result:
    """Drive one load from ``load.procs`` client processes; read the server's /proc if given."""
    context = multiprocessing.get_context("spawn")
    indices = list(range(load.rooms))
    shares = [indices[i :: load.procs] for i in range(load.procs) if indices[i :: load.procs]]
    pipes: list[Connection] = []
    processes: list[BaseProcess] = []
    base = servers.proc_stats(server_pid) if server_pid else None
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
            procs=len(shares),
            connect_failures=failures,
        )
        if server_pid:
            _watch_server(server_pid, start, load.seconds, result, base)
        parts: list[Part] = [
            _expect(pipe, process, "done", load.seconds + load.drain_seconds + 120)
            for pipe, process in zip(pipes, processes, strict=True)
        ]
    finally:
        for worker_process in processes:
            worker_process.join(timeout=10)
            if worker_process.is_alive():
                worker_process.kill()
    _combine(result, parts, load)
    return result


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


def _combine(result: Result, parts: list[Part], load: Load) -> None:
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
    result.updates_in_per_s = result.edits / load.seconds
    result.frames_out_per_s = sum(p.frames for p in parts) / load.seconds
    result.messages_out_per_s = sum(p.messages for p in parts) / load.seconds
    result.received_bytes_per_edit = sum(p.received_bytes for p in parts) / max(1, result.edits)
    cpu = [p.cpu_seconds / load.seconds * 100 for p in parts]
    result.client_cpu_percent = sum(cpu)
    result.client_cpu_max_percent = max(cpu, default=0.0)


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", type=Kind, choices=list(Kind), default=Kind.OURS)
    parser.add_argument("--port", type=int, default=0, help="an already running server (default: start one)")
    parser.add_argument("--pid", type=int, default=0, help="its pid, for CPU and memory")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--clients", type=int, default=5, help="clients per room")
    parser.add_argument("--rate", type=float, default=5.0, help="edits a second per typing client")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--doc-chars", type=int, default=0)
    parser.add_argument("--stalled", type=int, default=0, help="clients per room that stop reading")
    parser.add_argument("--silent", type=int, default=0, help="clients per room that read but never type")
    parser.add_argument("--no-batch", action="store_true", help="ours: do not ask for coalesced frames")
    parser.add_argument(
        "--push-every-edit",
        action="store_true",
        help="ours: a push per edit, not one in flight at a time (harder than any real client)",
    )
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--idle", type=int, default=0, help="measure memory of N idle connections instead")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        port, pid = args.port, args.pid
        if not port:
            server = stack.enter_context(servers.running(args.kind))
            port, pid = server.port, server.pid
        if args.idle:
            print(json.dumps(idle_memory(args.kind, port, pid, args.idle)))
            return
        load = Load(
            kind=args.kind,
            port=port,
            rooms=args.rooms,
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
            doc_chars=args.doc_chars,
            stalled=args.stalled,
            silent=args.silent,
            batch=not args.no_batch,
            push_every_edit=args.push_every_edit,
            procs=args.procs,
        )
        result = run_load(load, pid or None)
    print(format_result(result))
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
