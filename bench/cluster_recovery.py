"""Recovery from the loss of a process: one room's clients on three processes, the busiest killed.

The clients connect to chosen processes directly (no HAProxy), most of them to one. They type;
that process is killed (SIGKILL: no shutdown, its connections cut by the kernel); its clients
reconnect to the survivors and resend what the room had not confirmed, as the editor does
(`rooms.replica.Replica`). Measured from the kill: until every client is in a conversation
again (*reconnected*), and until an edit typed by each client once it was back (by the others,
right after the kill) has reached every other client (*recovered*). Then the typing stops and
the clients must agree: the same text, every token typed in it exactly once.

A client tries its processes in order, starting from the one it last reached; a process that
refuses the connection sends it to the next at once, and each later attempt waits twice as long
(from `RETRY_MIN_S` to `RETRY_MAX_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cluster_result import RecoveryRun
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rooms.changes import ChangeSet, utf16_len
from rooms.replica import Replica

RETRY_MIN_S, RETRY_MAX_S = 0.05, 1.0
CONNECT_TIMEOUT_S = 3.0
RECOVERY_TIMEOUT_S = 30.0  # longest wait for the room to recover, then to agree
WARM_UP_S = 2.0  # typing before the kill
RATE = 2.0  # edits a second per client


class Typist:
    """One client of the room: a `Replica` over a WebSocket, reconnecting on its own."""

    def __init__(self, name: str, room: str, ports: Sequence[int], seed: int) -> None:
        self.name = name
        self.room = room
        self.ports = list(ports)
        self.replica = Replica(f"{name}-{uuid.uuid4().hex[:8]}")
        self.rng = random.Random(seed)
        self.connection: ClientConnection | None = None
        self.port: int | None = None
        self.typed: list[str] = []
        self.welcomed_at = 0.0  # perf_counter of the last welcome
        self.marker = ""  # typed as soon as it was back after the kill
        self._fresh = True
        self._index = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self.connection is not None and self.replica.live

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"typist-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connection is not None:
            self.connection.transport.abort()

    def check(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def type_token(self) -> str:
        """A new token after a token or at the start; typed offline too (sent once back)."""
        text = self.replica.text
        token = f"[{self.name}.{len(self.typed)}]"
        self.typed.append(token)
        at = self.rng.choice([0] + [index + 1 for index, char in enumerate(text) if char == "]"])
        position = utf16_len(text[:at])
        push = self.replica.edit(ChangeSet.of_replace(self.replica.length, position, position, token))
        await self._send(push)
        return token

    async def _send(self, message: dict[str, Any] | None) -> None:
        if message is not None and self.connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.connection.send(json.dumps(message))

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            port = self.ports[self._index % len(self.ports)]
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    connection = await connect(f"ws://127.0.0.1:{port}/ws/{self.room}", max_size=None)
            except (OSError, TimeoutError, InvalidHandshake):
                self._index += 1  # that process does not answer: the next one, at once the first time
                await asyncio.sleep(0 if delay == RETRY_MIN_S else delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            try:
                await self._converse(port, connection)
                delay = RETRY_MIN_S
            except ConnectionClosed:
                pass
            finally:
                connection.transport.abort()
                self.connection = self.port = None

    async def _converse(self, port: int, connection: ClientConnection) -> None:
        hello = self.replica.hello(self.name, resume=not self._fresh)
        await connection.send(json.dumps(hello | {"batch": True}))
        self.connection, self.port = connection, port
        async for raw in connection:
            frame = json.loads(raw)
            messages = frame if isinstance(frame, list) else [frame]
            out = self.replica.receive(messages)
            if self.replica.live:
                self._fresh = False  # from now on a hello resumes
                if any(message.get("type") == "welcome" for message in messages):
                    self.welcomed_at = time.perf_counter()
            for message in out.send:
                await self._send(message)
            if out.hello or out.error is not None:
                return  # a new conversation: hello again, the resend follows the welcome


async def _until(condition: Callable[[], bool], typists: Sequence[Typist], what: str) -> float:
    """Poll ``condition()`` until true, within `RECOVERY_TIMEOUT_S`; the perf_counter when it was."""
    deadline = time.perf_counter() + RECOVERY_TIMEOUT_S
    while not condition():
        for typist in typists:
            typist.check()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not within {RECOVERY_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.005)
    return time.perf_counter()


async def _type(typist: Typist, stop: asyncio.Event) -> None:
    """Type at `RATE` (Poisson arrivals) until ``stop``, connected or not."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(typist.rng.expovariate(RATE)):
                await stop.wait()
        if not stop.is_set():
            await typist.type_token()


async def _mark(typist: Typist, back: Callable[[Typist], bool]) -> None:
    """Type the typist's marker as soon as it is back after the kill."""
    await _until(lambda: back(typist), [typist], f"{typist.name} back")
    typist.marker = await typist.type_token()


async def measure(
    ports: Sequence[int], placement: Sequence[int], kill: Callable[[], None], seed: int = 1
) -> RecoveryRun:
    """Clients on ``ports`` as ``placement`` says (``placement[0]`` on ``ports[0]``, the process
    ``kill()`` kills); each tries the other processes in turn after its own."""
    run = RecoveryRun(list(placement))
    room = f"recovery-{uuid.uuid4().hex[:8]}"
    typists: list[Typist] = []
    for index, count in enumerate(placement):
        for _ in range(count):
            order = [ports[index], *(ports[(index + step) % len(ports)] for step in range(1, len(ports)))]
            if index == 0 and len(typists) % 2:
                order = [order[0], *reversed(order[1:])]  # the killed process's clients: half to each survivor
            typists.append(Typist(f"c{len(typists)}", room, order, seed + len(typists)))
    stop = asyncio.Event()
    for typist in typists:
        typist.start()
    typing: list[asyncio.Task[None]] = []
    try:
        await _until(lambda: all(t.live for t in typists), typists, "every client connected")
        typing = [asyncio.create_task(_type(t, stop)) for t in typists]
        await asyncio.sleep(WARM_UP_S)  # the clients type meanwhile
        kill()
        started = time.perf_counter()

        def back(typist: Typist) -> bool:
            # The killed process's clients still look live until they notice the cut.
            return typist.live and (typist.ports[0] != ports[0] or typist.welcomed_at > started)

        typing += [asyncio.create_task(_mark(t, back)) for t in typists]
        run.reconnected_s = await _until(lambda: all(back(t) for t in typists), typists, "every client back") - started

        def everyone_has_every_marker() -> bool:
            markers = [t.marker for t in typists]
            return all(markers) and all(all(m in t.replica.text for m in markers) for t in typists)

        run.recovered_s = await _until(everyone_has_every_marker, typists, "an edit of each everywhere") - started
        stop.set()
        await asyncio.gather(*typing)

        def agreed() -> bool:
            first = typists[0].replica
            return (
                all(t.live and not t.replica.has_unconfirmed and t.replica.version == first.version for t in typists)
                and len({t.replica.text for t in typists}) == 1
            )

        await _until(agreed, typists, "the same text everywhere")
        run.agreed = True
    except TimeoutError as error:
        run.error = f"{error}: {sum(t.live for t in typists)} of {len(typists)} clients live"
    finally:
        stop.set()
        for task in typing:
            task.cancel()
        await asyncio.gather(*typing, return_exceptions=True)
        for typist in typists:
            await typist.stop()
    text = typists[0].replica.text
    run.typed = sum(len(t.typed) for t in typists)
    run.lost = sum(1 for t in typists for token in t.typed if token not in text)
    run.doubled = sum(1 for t in typists for token in t.typed if text.count(token) > 1)
    return run
