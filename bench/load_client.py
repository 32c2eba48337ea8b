"""The load generator's clients: one WebSocket connection each, typing like a person.

Every client types at the load's rate (Poisson arrivals): mostly one character at its cursor,
sometimes a backspace, sometimes a paste of one to a few lines, sometimes a jump elsewhere.
Each kind of server gets the same frames, adapted only as far as it must be:

* ``ours`` speaks the versioned protocol as its clients do (``rooms/replica.py``, which the
  browser editor also follows): ``hello`` (with ``batch`` unless the load says otherwise), one
  ``push`` in flight at a time, edits typed meanwhile composed into the next one, remote updates
  rebased past local work. A push may so carry several edits; every edit in it is one latency
  sample, from the moment it was typed. ``push_every_edit`` sends each edit as a push of its
  own, against the last version seen, whether or not the previous one was confirmed (the server
  rebases it): not what clients do, but a harder load for the server.
* ``naive`` and ``bare`` get the same ``push`` frames, with the author's ``client_id`` in them,
  and no ``hello``: the naive server answers with the whole text as ``code_change``, the bare
  one relays the frame as it is.

Clients are sans-I/O ``websockets`` protocols on asyncio transports (no task per connection);
the clients of one process share a `load_driver.Worker`, which holds what they measure.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
from servers import Kind

from rooms.changes import ChangeSet, utf16_len
from rooms.errors import InvalidMessage
from rooms.replica import Replica

if TYPE_CHECKING:
    from load_driver import Worker

LETTERS = "abcdefghijklmnopqrstuvwxyz_=()[]:.,'"
PASTE_WORDS = ("return", "self", "value", "print(x)", "if", "for i in range(n):", "x = 1", "# note", "def f():")
INSERT, BACKSPACE, PASTE, JUMP = 0.85, 0.10, 0.04, 0.01  # the mix of edits (adds up to 1)


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
        self.role = role  # "typist", "silent", "stalled" or "filler"
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
        if self.kind is Kind.OURS and not worker.load.push_every_edit and role != "filler":
            self.replica = LengthReplica(client_id)
        self.pushed: dict[int, tuple[int, int]] = {}
        self.unpushed = 0
        self.received = 0  # peer edits received while measuring
        # Edits whose push changed nothing (typed and deleted again before it left): the server
        # confirms them with an `ack` and shows them to no one, so no peer waits for them.
        self.cancelled = 0
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
                first, end = self.pushed.pop(message.get("seq", -1), (0, 0))
                self.cancelled += end - first
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
            elif self.role == "filler" and not self.joined.done():
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
            return  # the filler's text
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
