"""What one client can make the server do at the default limits, and what that costs everyone else.

    .venv/bin/python bench/abuse.py            # the full measurement, about two minutes
    .venv/bin/python bench/abuse.py --quick    # a smoke run of seconds (small history, short loads)

Starts ``python app.py`` on a free loopback port with every limit at its default
(``bench/servers.py``; the benchmark's own ``MAX_DOCUMENT_CHARS`` is set back to the default), then:

1. **The most expensive frame of each kind**, with the server's CPU for it: the server's CPU
   time (every thread, from ``/proc/<pid>/task/*/schedstat``, in nanoseconds; ``/proc/<pid>/stat``
   counts 10 ms ticks, too coarse for one frame) is read before the frame is sent and again once
   its reply has arrived and the server has gone quiet; the median over the repetitions is
   reported. The frames:

   * a ``push`` of ``MAX_CHANGE_PARTS`` parts, as many versions behind as the rebase limits
     allow, in a room whose history is made of pushes of as many parts (``push_changes``);
   * a full-text ``code_change`` that replaces a ``MAX_DOCUMENT_CHARS`` document by another that the
     diff can only find the hard way, in three shapes;
   * a ``hello`` resuming from the oldest version of a room with a full history
     (``HISTORY_LIMIT`` versions of those pushes), until its catch-up has arrived;
   * the rooms API reads ``GET /api/rooms/{id}`` and ``/history?limit=1000`` of that room.

   A refused frame is measured too (its reply is the error): its CPU is what the server spent
   finding out.

2. **An ordinary room under a flood**: rooms of a few typists (one character at Poisson times,
   one push in flight, as the editor does; each push timed to the update the server makes of
   it, which reaches its author through the same queue as everyone's) while one connection,
   from another loopback address, sends the costliest push above as fast as its rate limit lets
   it (one in flight at a time, each as far behind as the limits allow, waiting out
   ``retry_after`` when refused for rate), into a room of its own. The same rooms without the
   flood run just before, on the same server, for the ratio.

Everything is on loopback, bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from servers import Kind

from rooms.settings import Settings

FRAME_TARGET_MS = 25.0  # server CPU for any one frame
FLOOD_TARGET_MS = 50.0  # p99 of an ordinary room while another client floods
# Three loopback addresses, so that the per-address limits of one role never hold back another:
# the ordinary rooms' typists use 127.0.0.1.
ATTACKER = "127.0.0.2"
FILLER = "127.0.0.3"
TYPIST = "127.0.0.1"
REGION = 1_000  # characters of the document each history writer replaces in, never another's
REPLY_TIMEOUT = 60.0
QUIET_NS = 300_000  # the server is done with a frame when it spends less than this in QUIET_WINDOW
QUIET_WINDOW = 0.005


@dataclass(frozen=True)
class AbusePlan:
    """What one run measures; ``QUICK`` is a smoke run of seconds."""

    repeats: int = 7  # of each frame, for the median
    history: int | None = None  # versions of history before the frames; None: HISTORY_LIMIT
    doc_chars: int | None = None  # the code_change document; None: MAX_DOCUMENT_CHARS
    writers: int = 5  # connections that fill the history, each in its own region
    rooms: int = 2  # ordinary rooms...
    clients: int = 5  # ... of this many clients...
    rate: float = 5.0  # ... typing this many edits a second each
    seconds: float = 8.0  # of typing, with and without the flood
    pairs: int = 3  # (without, with) flood runs, for medians


FULL = AbusePlan()
QUICK = AbusePlan(repeats=2, history=120, doc_chars=20_000, writers=3, rooms=1, clients=3, seconds=1.5, pairs=1)


@dataclass
class FrameCost:
    """One kind of frame, measured ``len(cpu_ms)`` times."""

    frame: str
    shape: str
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    reply: str = ""  # what the server answered, for the last repetition
    reply_bytes: int = 0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.cpu_ms) if self.cpu_ms else float("nan")


@dataclass
class Flood:
    """What the flooding connection sent and what became of it, in one flooded run."""

    seconds: float = 0.0
    sent: int = 0
    applied: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # error code -> count
    lag: int = 0


@dataclass
class AbuseResult:
    limits: dict[str, int | float]
    frames: list[FrameCost] = field(default_factory=list)
    baseline: list[Typing] = field(default_factory=list)
    flooded: list[Typing] = field(default_factory=list)
    floods: list[Flood] = field(default_factory=list)
    quick: bool = False
    history_versions: int = 0  # versions in the room the frames were measured in
    measured: str = ""  # when, UTC

    @property
    def worst(self) -> FrameCost | None:
        return max(self.frames, key=lambda cost: cost.median_ms, default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "section": "abuse",
            "limits": self.limits,
            "frames": [{**asdict(cost), "median_ms": round(cost.median_ms, 3)} for cost in self.frames],
            "baseline": [result.to_json() for result in self.baseline],
            "flooded": [result.to_json() for result in self.flooded],
            "floods": [asdict(flood) for flood in self.floods],
        }


# The server's CPU


def server_cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid``, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


async def settled_cpu_ns(pid: int) -> int:
    """The server's CPU time once it has stopped working (bounded: at most half a second)."""
    deadline = time.monotonic() + 0.5
    before = server_cpu_ns(pid)
    while True:
        await asyncio.sleep(QUIET_WINDOW)
        after = server_cpu_ns(pid)
        if after - before < QUIET_NS or time.monotonic() > deadline:
            return after
        before = after


# Clients


class Member:
    """A versioned client on its own connection; every message it receives goes to ``inbox``
    (and to ``watch``, when given, as it arrives)."""

    def __init__(
        self, connection: ClientConnection, client_id: str, watch: Callable[[dict[str, Any]], None] | None
    ) -> None:
        self.connection = connection
        self.client_id = client_id
        self.watch = watch
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received_bytes = 0
        self.seq = 0
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(
        cls, url: str, client_id: str, address: str, watch: Callable[[dict[str, Any]], None] | None = None
    ) -> Member:
        connection = await connect(
            url, max_size=None, open_timeout=30, compression=None, local_addr=(address, 0), ping_interval=None
        )
        return cls(connection, client_id, watch)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.connection:
                self.received_bytes += len(raw)
                message = json.loads(raw)
                for item in message if isinstance(message, list) else [message]:
                    if item.get("type") == "ping":
                        continue
                    if self.watch is not None:
                        self.watch(item)
                    self.inbox.put_nowait(item)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.connection.send(message if isinstance(message, str) else json.dumps(message))

    async def expect(self, done: Callable[[dict[str, Any]], bool], within: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The first message ``done`` accepts, or the first error; others are dropped. Raises
        `TimeoutError` after ``within`` seconds."""
        async with asyncio.timeout(within):
            while True:
                message = await self.inbox.get()
                if message.get("type") == "error" or done(message):
                    return message

    async def hello(self, room: Room, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "hello", "client_id": self.client_id, **fields})
        welcome = await self.expect(lambda message: message.get("type") == "welcome")
        if welcome.get("type") == "error":
            raise RuntimeError(f"hello refused in {room.name}: {welcome}")
        self.seq = int(welcome.get("last_seq") or 0)
        return welcome

    async def push(self, version: int, changes: list[Any], within: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """Push and wait for the server's answer: the update made of it, or an error."""
        self.seq += 1
        seq = self.seq
        await self.send({"type": "push", "version": version, "seq": seq, "changes": changes})
        return await self.expect(
            lambda m: m.get("type") == "update" and m.get("client_id") == self.client_id and m.get("seq") == seq,
            within,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)
        self.reader.cancel()


class Room:
    """What the benchmark knows of a room it writes in: the version and each version's length,
    from an observer's stream (updates arrive in version order)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = 0
        self.epoch: str | None = None
        self.lengths: dict[int, int] = {0: 0}
        self.update_chars: dict[int, int] = {}  # each update's size on the wire
        self.writers = 0  # regions 0 .. writers - 1 are the history writers'
        self.attacks = 0
        self.changed = asyncio.Event()

    def follow(self, message: dict[str, Any]) -> None:
        if message.get("type") == "welcome":
            self.epoch = message.get("epoch")
            self.version = int(message["version"])
            self.lengths[self.version] = _units(message.get("doc", ""))
        elif message.get("type") == "update" and int(message["version"]) == self.version + 1:
            after = self.lengths[self.version]
            for part in message["changes"]:
                if not isinstance(part, int):
                    after += _units("\n".join(part[1:])) - part[0]
            self.version += 1
            self.lengths[self.version] = after
            self.update_chars[self.version] = len(json.dumps(message))
        self.changed.set()

    def attack_changes(self, base: int, parts: int) -> list[Any]:
        """A push of ``parts`` parts at ``base``, in a region none of the last pushes touched while
        there are regions enough: rebased over them it keeps its parts and the text its length,
        so the history stays one of pushes of ``parts`` parts."""
        length = self.lengths[base]
        regions = max(1, length // REGION - 1 - self.writers)  # the last one may be cut short
        start = REGION * (self.writers + self.attacks % regions)
        self.attacks += 1
        return push_changes(length, start, parts)

    async def reach(self, version: int) -> None:
        async with asyncio.timeout(REPLY_TIMEOUT):
            while self.version < version:
                self.changed.clear()
                await self.changed.wait()


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


async def _drain(connection: ClientConnection) -> None:
    """Read and forget: a connection whose frames nobody needs must still be read."""
    with contextlib.suppress(Exception):
        async for _ in connection:
            pass


def push_changes(length: int, start: int, parts: int) -> list[Any]:
    """A change of ``parts`` JSON parts (or one fewer, to end on a replacement) to a document of
    ``length`` units: one-character replacements, every other character from ``start``, then a
    keep of the rest. The length stays the same."""
    lead: list[Any] = [start] if start else []
    body = parts - len(lead) - 1
    body -= 1 - body % 2  # odd: it begins and ends with a replacement
    if start + body >= length:
        raise ValueError(f"a document of {length} units is too short for {parts} parts from {start}")
    changes: list[Any] = [*lead, *([1, "z"] if index % 2 == 0 else 1 for index in range(body))]
    changes.append(length - start - body)
    return changes


async def open_room(url: str, name: str, address: str) -> tuple[Room, Member]:
    """A room and its observer, which keeps ``Room`` up to date."""
    room = Room(name)
    observer = await Member.open(url, f"observer-{name}", address, room.follow)
    await observer.hello(room)
    return room, observer


async def fill(url: str, room: Room, versions: int, writers: int, parts: int, doc_chars: int) -> None:
    """Bring ``room`` to ``versions`` of ``parts``-part pushes. Each writer replaces in a region of
    its own, so no push rebased over another's changes the document's length; several writers
    (each with its own rate limit) fill it faster than one."""
    members = [await Member.open(url, f"writer-{room.name}-{index}", FILLER) for index in range(writers)]
    room.writers = writers
    try:
        for member in members:
            await member.hello(room)
        needed = max(doc_chars, (writers + 1) * REGION)
        if room.lengths[room.version] < needed:
            length = room.lengths[room.version]
            changes = [[0, "x" * (needed - length)], *([length] if length else [])]
            reply = await members[0].push(room.version, changes)
            if reply.get("type") == "error":
                raise RuntimeError(f"cannot fill {room.name}: {reply}")

        # One push at a time, each at the latest version: none is rebased, so each costs one
        # token of its writer's rate limit, and the writers' limits add up.
        turn = asyncio.Lock()

        async def write(index: int, member: Member) -> None:
            while room.version < versions:
                async with turn:
                    base = room.version
                    if base >= versions:
                        return
                    try:
                        reply = await member.push(base, push_changes(room.lengths[base], index * REGION, parts), 3.0)
                    except TimeoutError:
                        continue  # refused for rate within a second of the last refusal: no reply
                    if reply.get("type") == "update":
                        await room.reach(int(reply["version"]))
                        continue
                if reply.get("code") != "rate_limited":
                    raise RuntimeError(f"filling {room.name}: {reply}")
                await asyncio.sleep(float(reply.get("retry_after") or 0.1))

        await asyncio.gather(*(write(index, member) for index, member in enumerate(members)))
        await room.reach(versions)
    finally:
        for member in members:
            await member.close()


# 1. The most expensive frame of each kind


def limits_of(settings: Settings) -> dict[str, int | float]:
    parts = settings.max_change_parts
    # Rebasing a push of P parts over L updates of P parts each takes L * 2P steps.
    lag = min(settings.max_rebase_versions, settings.max_rebase_steps // (2 * parts))
    return {
        "max_change_parts": parts,
        "max_rebase_versions": settings.max_rebase_versions,
        "max_rebase_steps": settings.max_rebase_steps,
        "lag": lag,
        "history_limit": settings.history_limit,
        "max_document_chars": settings.max_document_chars,
        "rate_limit_per_second": settings.rate_limit_per_second,
        "rate_limit_burst": settings.rate_limit_burst,
        "outbound_queue_chars": settings.outbound_queue_chars,
    }


async def timed(pid: int, frame: Callable[[], Awaitable[Any]]) -> tuple[float, float, Any]:
    """Server CPU (ms) and wall time (ms) for one frame: ``frame`` sends it and awaits its reply."""
    before = await settled_cpu_ns(pid)
    started = time.perf_counter()
    reply = await frame()
    wall = time.perf_counter() - started
    after = await settled_cpu_ns(pid)
    return (after - before) / 1e6, wall * 1000, reply


def _describe(reply: dict[str, Any]) -> str:
    if reply.get("type") == "error":
        return f"error {reply.get('code')}"
    return str(reply.get("type"))


async def costly_push(url: str, pid: int, room: Room, limits: dict[str, int | float], repeats: int) -> list[FrameCost]:
    """Pushes of the most parts, as far behind as allowed; one further behind, which must be refused.

    The lag starts from what the settings' formula allows (``limits_of``); where the server
    counts parts otherwise and refuses it (``resync``), it is lowered until a push is accepted,
    and ``limits["lag"]`` is set to it for the flood."""
    parts = int(limits["max_change_parts"])
    lag = int(limits["lag"])
    attacker = await Member.open(url, f"attacker-{room.name}", ATTACKER)
    costs: list[FrameCost] = []
    try:
        await attacker.hello(room)
        while lag > 1:
            _, _, reply = await _unlimited_push(pid, attacker, room, lag, parts)
            if reply.get("type") == "update":
                await room.reach(int(reply["version"]))
                break
            lag -= 1
        limits["lag"] = lag
        for label, behind in (("push", lag), ("push, one version too far behind", lag + 1)):
            cost = FrameCost(label, f"{parts:,} parts, {behind} versions behind, over updates of {parts:,} parts")
            for _ in range(repeats if behind == lag else max(1, repeats // 2)):
                cpu, wall, reply = await _unlimited_push(pid, attacker, room, behind, parts)
                cost.cpu_ms.append(cpu)
                cost.wall_ms.append(wall)
                cost.reply = _describe(reply)
                cost.reply_bytes = len(json.dumps(reply))
                await room.reach(int(reply.get("version", room.version)))
            costs.append(cost)
    finally:
        await attacker.close()
    return costs


async def _unlimited_push(pid: int, member: Member, room: Room, behind: int, parts: int) -> tuple[float, float, Any]:
    """One measured push, ``behind`` versions behind; one refused for rate is waited out and sent
    again (the server stays silent about a refusal within a second of the last one)."""
    for _ in range(20):
        base = room.version - behind
        changes = room.attack_changes(base, parts)
        try:
            cpu, wall, reply = await timed(pid, lambda: member.push(base, changes, within=5.0))  # noqa: B023
        except TimeoutError:
            continue
        if reply.get("code") != "rate_limited":
            return cpu, wall, reply
        await asyncio.sleep(float(reply.get("retry_after") or 0.5) + 0.05)
    raise RuntimeError("every push was refused for rate")


def hard_texts(chars: int) -> list[tuple[str, str, str]]:
    """(shape, old, new) pairs of ``chars`` characters each that the diff works hardest on."""
    rng = random.Random(1)
    letters = "abcdefghij ()=:"
    base = "".join(rng.choice(letters) for _ in range(chars))
    scattered = list(base)
    for index in range(0, chars, max(1, chars // 200)):
        scattered[index] = "#"
    return [
        ("every character different", "a" * chars, "b" * chars),
        (
            "random texts of two letters",
            "".join(rng.choice("ab") for _ in range(chars)),
            "".join(rng.choice("ab") for _ in range(chars)),
        ),
        ("200 one-character edits spread over the text", base, "".join(scattered)),
    ]


async def costly_code_change(url: str, pid: int, chars: int, repeats: int) -> list[FrameCost]:
    """A full-text client replacing the whole document; a versioned observer sees each update."""
    room, observer = await open_room(url, "abuse-full-text", ATTACKER)
    writer = await connect(url, max_size=None, open_timeout=30, compression=None, local_addr=(ATTACKER, 0))
    drain = asyncio.ensure_future(_drain(writer))
    costs: list[FrameCost] = []
    try:
        await writer.send(json.dumps({"type": "join", "username": "full-text"}))

        async def change(text: str) -> dict[str, Any]:
            target = room.version + 1
            await writer.send(json.dumps({"type": "code_change", "code": text, "cursor_position": 0}))
            return await observer.expect(lambda m: m.get("type") == "update" and int(m["version"]) >= target)

        for shape, old, new in hard_texts(chars):
            cost = FrameCost("full-text code_change", f"{chars:,} characters, {shape}")
            for _ in range(repeats):
                await change(old)  # not measured: the document the measured frame replaces
                cpu, wall, reply = await timed(pid, lambda: change(new))  # noqa: B023
                cost.cpu_ms.append(cpu)
                cost.wall_ms.append(wall)
                cost.reply = f"{_describe(reply)} of {len(reply.get('changes', []))} parts to the observer"
                cost.reply_bytes = len(json.dumps(reply))
            costs.append(cost)
    finally:
        drain.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.close(), 5)
        await observer.close()
    return costs


async def costly_hello(url: str, pid: int, room: Room, limits: dict[str, int | float], repeats: int) -> list[FrameCost]:
    """A hello resuming from the oldest version the history keeps (0 if it keeps them all) and,
    when that one gets a snapshot (a catch-up too large to queue is replaced by one), from the
    oldest version whose catch-up still comes as updates, found by bisection."""
    oldest = max(0, room.version - int(limits["history_limit"]))
    costs = [await _hello_from(url, pid, room, oldest, "hello", repeats)]
    if costs[0].reply.startswith("welcome with a snapshot"):
        snapshot, updates = oldest, room.version  # a hello from `snapshot` gets one, from `updates` not
        while updates - snapshot > 1:
            middle = (snapshot + updates) // 2
            probe = await _hello_from(url, pid, room, middle, "probe", 1)
            if probe.reply.startswith("welcome with a snapshot"):
                snapshot = middle
            else:
                updates = middle
        costs.append(await _hello_from(url, pid, room, updates, "hello, the largest catch-up", repeats))
    return costs


_LATE = itertools.count(1)  # a client id of its own for each late joiner


async def _hello_from(url: str, pid: int, room: Room, version: int, label: str, repeats: int) -> FrameCost:
    cost = FrameCost(label, f"resuming from version {version:,}, {room.version - version:,} versions behind")
    for _ in range(repeats):
        member = await Member.open(url, f"late-{next(_LATE)}", ATTACKER)
        try:
            hello = {"type": "hello", "client_id": member.client_id, "version": version, "epoch": room.epoch}

            async def resume() -> dict[str, Any]:
                await member.send(hello)  # noqa: B023
                welcome = await member.expect(lambda m: m.get("type") == "welcome")  # noqa: B023
                if "doc" not in welcome and welcome.get("version", 0) < room.version:
                    await member.expect(lambda m: m.get("type") == "update" and int(m["version"]) >= room.version)  # noqa: B023
                return welcome

            cpu, wall, welcome = await timed(pid, resume)
            cost.cpu_ms.append(cpu)
            cost.wall_ms.append(wall)
            if welcome.get("type") == "error":
                cost.reply = _describe(welcome)
            elif "doc" in welcome:
                cost.reply = "welcome with a snapshot"
            else:
                cost.reply = f"welcome and {room.version - version:,} updates"
            cost.reply_bytes = member.received_bytes
        finally:
            await member.close()
    return cost


async def costly_reads(port: int, pid: int, room: Room, repeats: int) -> list[FrameCost]:
    costs: list[FrameCost] = []
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=60) as http:
        for label, path in (
            ("GET /api/rooms/{id}", f"/api/rooms/{room.name}"),
            ("GET /api/rooms/{id}/history?limit=1000", f"/api/rooms/{room.name}/history?limit=1000"),
        ):
            cost = FrameCost(label, f"the room of {room.version:,} versions")
            for _ in range(repeats):
                cpu, wall, response = await timed(pid, lambda: http.get(path))  # noqa: B023
                cost.cpu_ms.append(cpu)
                cost.wall_ms.append(wall)
                cost.reply = f"HTTP {response.status_code}"
                cost.reply_bytes = len(response.content)
            costs.append(cost)
    return costs


# 2. An ordinary room under a flood


async def flood(url: str, room: Room, limits: dict[str, int | float], stop: asyncio.Event, record: Flood) -> None:
    """The costliest push, one in flight, as often as the rate limit allows, until ``stop``."""
    parts = int(limits["max_change_parts"])
    record.lag = lag = int(limits["lag"])
    flooder = await Member.open(url, f"flooder-{room.name}", ATTACKER)
    floor = room.lengths[room.version]
    ceiling = max(floor + 20 * parts, int(limits["max_document_chars"]) * 9 // 10)
    started = time.perf_counter()
    try:
        await flooder.hello(room)
        while not stop.is_set():
            base = max(0, room.version - lag)
            if room.lengths[room.version] > ceiling:
                # Each push rebased over the flood's own earlier ones (the same characters) keeps
                # its insertions: cut the text back now and then, with a cheap push.
                with contextlib.suppress(TimeoutError):
                    reply = await flooder.push(room.version, [floor, [room.lengths[room.version] - floor]], within=2.0)
                    if reply.get("type") == "update":
                        await room.reach(int(reply["version"]))
                    elif reply.get("code") == "rate_limited":
                        await asyncio.sleep(float(reply.get("retry_after") or 0.1))
                continue
            record.sent += 1
            try:
                reply = await flooder.push(base, room.attack_changes(base, parts), within=2.0)
            except TimeoutError:
                # Refused for rate within a second of the last such reply: the server stays silent.
                record.refused["rate_limited"] = record.refused.get("rate_limited", 0) + 1
                continue
            if reply.get("type") == "update":
                record.applied += 1
                with contextlib.suppress(TimeoutError):
                    await room.reach(int(reply["version"]))
                continue
            code = str(reply.get("code"))
            record.refused[code] = record.refused.get(code, 0) + 1
            if code == "rate_limited":
                await asyncio.sleep(float(reply.get("retry_after") or 0.1))
    finally:
        record.seconds = time.perf_counter() - started
        await flooder.close()


@dataclass
class Typing:
    """What the ordinary rooms' typists saw in one run: each push's time to its own update."""

    label: str
    rooms: int
    clients: int
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    unanswered: int = 0  # pushes with no update before the end (counted as infinitely late)
    refused: dict[str, int] = field(default_factory=dict)
    server_cpu_percent: float = 0.0
    client_cpu_percent: float = 0.0  # this process: the typists, and the flood when there is one
    other_cpu_percent: float = 0.0  # the rest of the machine

    def percentile(self, fraction: float) -> float:
        values = sorted(self.latencies_ms) + [math.inf] * self.unanswered
        if not values:
            return math.nan
        return values[max(1, math.ceil(fraction * len(values))) - 1]

    @property
    def p50_ms(self) -> float:
        return self.percentile(0.5)

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99)

    def to_json(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if key != "latencies_ms"}
        p50, p99 = self.p50_ms, self.p99_ms
        return {
            **data,
            "pushes": len(self.latencies_ms) + self.unanswered,
            "p50_ms": None if math.isinf(p50) or math.isnan(p50) else round(p50, 3),
            "p99_ms": None if math.isinf(p99) or math.isnan(p99) else round(p99, 3),
        }


async def ordinary_rooms(url: str, pid: int, plan: AbusePlan, label: str) -> Typing:
    """Rooms of typists, each pushing one character at Poisson times, one push in flight (as the
    editor does), each timed from its frame to the update the server makes of it."""
    typing = Typing(label, plan.rooms, plan.clients, plan.rate, plan.seconds)
    rng = random.Random(label)
    rooms = [
        await open_room(url + f"ordinary-{label}-{index}", f"ordinary-{label}-{index}", TYPIST)
        for index in range(plan.rooms)
    ]
    typists = [
        (room, await Member.open(url + room.name, f"typist-{room.name}-{index}", TYPIST))
        for room, _ in rooms
        for index in range(plan.clients)
    ]
    for room, typist in typists:
        await typist.hello(room)

    async def type_into(room: Room, typist: Member, until: float) -> None:
        while (wait := min(rng.expovariate(plan.rate), until - time.perf_counter())) > 0:
            await asyncio.sleep(wait)
            base = room.version
            length = room.lengths[base]
            at = rng.randint(0, length)
            changes = [*([at] if at else []), [0, "a"], *([length - at] if length - at else [])]
            sent = time.perf_counter()
            try:
                reply = await typist.push(base, changes, within=max(1.0, until - sent + 3.0))
            except TimeoutError:
                typing.unanswered += 1
                return
            if reply.get("type") == "update":
                typing.latencies_ms.append((time.perf_counter() - sent) * 1000)
            else:
                code = str(reply.get("code"))
                typing.refused[code] = typing.refused.get(code, 0) + 1

    cpu_before, busy_before, own_before = server_cpu_ns(pid), servers.machine_busy_seconds(), time.process_time()
    started = time.perf_counter()
    try:
        until = started + plan.seconds
        await asyncio.gather(*(type_into(room, typist, until) for room, typist in typists))
    finally:
        elapsed = time.perf_counter() - started
        server = (server_cpu_ns(pid) - cpu_before) / 1e9
        typing.server_cpu_percent = 100 * server / elapsed
        own = time.process_time() - own_before
        typing.client_cpu_percent = 100 * own / elapsed
        busy = servers.machine_busy_seconds() - busy_before
        typing.other_cpu_percent = max(0.0, 100 * (busy - server - own) / elapsed)
        for _, typist in typists:
            await typist.close()
        for _, observer in rooms:
            await observer.close()
    return typing


# The whole measurement


async def measure(server: servers.Server, plan: AbusePlan, limits: dict[str, int | float], result: AbuseResult) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws/"
    history = plan.history or int(limits["history_limit"])
    # The pushes' room holds a large document: whatever a push costs in proportion to the text
    # (applying it, a snapshot) is paid too; room is left for a flood's growth (see `flood`).
    doc_chars = (plan.doc_chars or int(limits["max_document_chars"])) * 8 // 10
    room, observer = await open_room(url + "abuse-history", "abuse-history", FILLER)
    try:
        await fill(url + room.name, room, history + 1, plan.writers, int(limits["max_change_parts"]), doc_chars)
        print(f"abuse: {room.name} filled to version {room.version}", flush=True)
        result.history_versions = room.version
        frames = [
            *await costly_push(url + room.name, server.pid, room, limits, plan.repeats),
            *await costly_code_change(
                url + "abuse-full-text", server.pid, plan.doc_chars or int(limits["max_document_chars"]), plan.repeats
            ),
            *await costly_hello(url + room.name, server.pid, room, limits, plan.repeats),
            *await costly_reads(server.port, server.pid, room, plan.repeats),
        ]
    finally:
        await observer.close()
    result.frames.extend(frames)
    for cost in frames:
        print(f"abuse: {cost.frame} ({cost.shape}): median {cost.median_ms:.1f} ms CPU, {cost.reply}", flush=True)
    for pair in range(plan.pairs):
        result.baseline.append(await ordinary_rooms(url, server.pid, plan, f"without-{pair + 1}"))
        flood_room, flood_observer = await open_room(url + f"abuse-flood-{pair}", f"abuse-flood-{pair}", FILLER)
        record = Flood()
        try:
            await fill(
                url + flood_room.name,
                flood_room,
                int(limits["lag"]) + 10,
                plan.writers,
                int(limits["max_change_parts"]),
                doc_chars,
            )
            stop = asyncio.Event()
            flooding = asyncio.ensure_future(flood(url + flood_room.name, flood_room, limits, stop, record))
            try:
                result.flooded.append(await ordinary_rooms(url, server.pid, plan, f"with-{pair + 1}"))
            finally:
                stop.set()
                await flooding
        finally:
            await flood_observer.close()
        result.floods.append(record)
        print(
            f"abuse: p99 {result.baseline[-1].p99_ms:.1f} ms without, {result.flooded[-1].p99_ms:.1f} ms with "
            f"the flood ({record.applied} pushes applied, refused {record.refused})",
            flush=True,
        )


def run(plan: AbusePlan, quick: bool = False) -> AbuseResult:
    """Start a server at the default limits, measure, stop it."""
    defaults = Settings.model_construct()  # the defaults, whatever this process's environment says
    limits = limits_of(defaults)
    result = AbuseResult(limits, quick=quick, measured=f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}")
    env = {"MAX_DOCUMENT_CHARS": str(defaults.max_document_chars)}
    with servers.running(Kind.OURS, env) as server:
        asyncio.run(measure(server, plan, limits, result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    args = parser.parse_args()
    result = run(QUICK if args.quick else FULL, quick=args.quick)
    # The report's module imports this one: imported here, where this one is the script.
    import abuse_report

    lines: list[str] = []
    for row in abuse_report.target_rows(result):
        lines.append(row)
    lines.append("")
    abuse_report.render(result, lines.append)
    print("\n".join(lines))
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
