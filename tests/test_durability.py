"""What a stop of the server may and may not lose, against live servers on the same data.

An update is committed to the store before anyone is shown it, so every update a client saw
outlives the process, however it ends; what no client saw confirmed is resent after the
reconnect and applied once (the store keeps the last seq of every client). The typists here
run `Replica`, the algorithm of the browser, over raw WebSockets, and type numbered tokens such
as ``<a1-17>`` only at token boundaries (never inside another token, never deleting): each token
is then either in the document exactly once, or the test has found a loss or a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rooms.changes import ChangeSet
from rooms.replica import Replica
from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow

TOKEN = re.compile(r"<[a-z]\d+-\d+>")
# The kill -9 test kills and restarts this many times; each start of the server takes seconds.
KILLS = 3
DRAIN_SECONDS = 2.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0


def run_seed() -> int:
    """A new seed each run (printed, so a failure can be replayed with ``DURABILITY_SEED``)."""
    seed = int(os.environ.get("DURABILITY_SEED") or random.randrange(1 << 32))
    print(f"DURABILITY_SEED={seed}")
    return seed


def inserted_tokens(changes: list[Any]) -> list[str]:
    """The tokens in the text an update inserts (a part ``[deleted, *lines]`` inserts lines)."""
    return [token for part in changes if isinstance(part, list) for token in TOKEN.findall("\n".join(part[1:]))]


@dataclass
class Servers:
    """``python app.py`` started and started again on one port and one data directory."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    started: list[LiveServer] = field(default_factory=list)

    def start(self) -> LiveServer:
        run = self.tmp / f"run-{len(self.started)}"  # a log file per run
        run.mkdir()
        env = {"DATA_DIR": str(self.tmp / "data"), **self.env}
        if not self.started:
            live = start_server(run, **env)
        else:
            # The same port, so that clients (and pages) reconnect to the address they know.
            live = start_server(run, PORT=str(self.started[0].port), **env)
        self.started.append(live)
        return live

    def stop_all(self) -> None:
        for live in self.started:
            live.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop_all()


class Refused(Exception):
    """The server answered a hello with an error."""


class Typist:
    """A user typing tokens into one room through a `Replica`.

    ``stay_connected`` connects whenever ``gate`` is open and the connection is gone, resuming
    from the replica's version and resending its unconfirmed work; ``type_until`` types about
    20 tokens a second whether connected or not (offline edits wait in ``pending``).
    """

    def __init__(self, url: str, name: str, seed: int) -> None:
        self.url = url
        self.name = name
        self.rng = random.Random(seed)
        self.replica = Replica(name)
        self.connection: ClientConnection | None = None  # set once welcomed
        self.typed: list[str] = []
        self.seen: set[str] = set()  # tokens inserted by any update this client received
        self.closes: list[int | None] = []  # the close code of each lost connection (None: no close frame)
        self.closed_at: list[float] = []  # time.monotonic() of each
        self.errors: list[dict[str, Any]] = []
        self.opened: list[ClientConnection] = []

    async def stay_connected(self, gate: asyncio.Event) -> None:
        while True:
            await gate.wait()
            try:
                connection = await self._open()
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError, Refused):
                # The server is not (yet, or no longer) there: a client's pause before it tries
                # again, as the browser client's back-off; the test waits on `connected()`.
                await asyncio.sleep(0.1)
                continue
            try:
                await self._read(connection)
            finally:
                self.connection = None

    async def _open(self) -> ClientConnection:
        connection = await connect(self.url, max_size=None, open_timeout=5, close_timeout=1)
        self.opened.append(connection)
        try:
            hello = self.replica.hello(self.name, resume=self.replica.epoch is not None)
            await connection.send(json.dumps(hello))
            welcome = await self._next(connection)
            if welcome["type"] == "error":
                self.errors.append(welcome)
                raise Refused(welcome)
            assert "welcome" == welcome["type"], welcome
            resend = self.replica.welcome(welcome)
        except BaseException:
            await connection.close()
            raise
        # Before the next await: an edit typed from now on is sent on this connection.
        self.connection = connection
        if resend is not None:
            await self._send(connection, resend)
        return connection

    @staticmethod
    async def _next(connection: ClientConnection) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(connection.recv(), 10))
            if message["type"] != "ping":
                return message

    async def _read(self, connection: ClientConnection) -> None:
        try:
            while True:
                message = json.loads(await connection.recv())
                if message["type"] == "update":
                    self.seen.update(inserted_tokens(message["changes"]))
                    out = self.replica.update(message)
                    if out is not None:
                        await self._send(connection, out)
                elif message["type"] == "ping":
                    await self._send(connection, {"type": "pong"})
                elif message["type"] == "error":
                    self.errors.append(message)
        except ConnectionClosed as closed:
            self.closes.append(closed.rcvd.code if closed.rcvd is not None else None)
            self.closed_at.append(time.monotonic())

    @staticmethod
    async def _send(connection: ClientConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader sees the close and reconnects
            await connection.send(json.dumps(message))

    async def type_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            token = f"<{self.name}-{len(self.typed) + 1}>"
            text = self.replica.text
            # Tokens are ASCII, so character offsets are UTF-16 offsets.
            at = self.rng.choice([0, *(match.end() for match in re.finditer(">", text))])
            self.typed.append(token)
            out = self.replica.edit(ChangeSet.of_replace(self.replica.length, at, at, token))
            connection = self.connection
            if out is not None and connection is not None:
                await self._send(connection, out)
            # Not a wait for anything: a typing pace, uneven so that pushes cross each other.
            await asyncio.sleep(self.rng.uniform(0.02, 0.08))


@dataclass
class Crowd:
    """Typists in some rooms, their tasks, and the gate that lets them (re)connect."""

    typists: list[Typist]
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Connect everyone, then start typing (a first welcome brings the room's text, which
        would replace anything typed before it)."""
        self.gate.set()
        self.tasks.extend(asyncio.create_task(typist.stay_connected(self.gate)) for typist in self.typists)
        await self.connected()
        self.tasks.extend(asyncio.create_task(typist.type_until(self.stop)) for typist in self.typists)

    def rooms(self) -> dict[str, list[Typist]]:
        rooms: dict[str, list[Typist]] = {}
        for typist in self.typists:
            rooms.setdefault(typist.url.rsplit("/", 1)[1], []).append(typist)
        return rooms

    async def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``condition()``; a typist's task that failed fails the test at once."""
        deadline = time.monotonic() + timeout
        while not condition():
            for task in self.tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    task.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}; {self.describe()}")
            await asyncio.sleep(0.02)

    def describe(self) -> str:
        return ", ".join(
            f"{t.name}: v{t.replica.version} connected={t.connection is not None} "
            f"unconfirmed={t.replica.has_unconfirmed} errors={t.errors[-2:]}"
            for t in self.typists
        )

    async def connected(self, timeout: float = 30) -> None:
        await self.wait_until(lambda: all(t.connection is not None for t in self.typists), timeout, "all connected")

    async def disconnected(self, timeout: float = 30) -> None:
        await self.wait_until(lambda: all(t.connection is None for t in self.typists), timeout, "all disconnected")

    async def settle(self, live: LiveServer, timeout: float = 30) -> None:
        """Stop typing, then wait until every typist has its work confirmed and the room's version."""
        self.stop.set()
        await self.connected(timeout)
        await self.wait_until(
            lambda: not any(t.replica.has_unconfirmed for t in self.typists), timeout, "nothing unconfirmed"
        )
        for room, typists in self.rooms().items():
            _, version, _ = await probe(live, room)
            await self.wait_until(partial(at_version, typists, version), timeout, f"{room} at version {version}")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for typist in self.typists:
            for connection in typist.opened:
                await connection.close()


def at_version(typists: list[Typist], version: int) -> bool:
    return all(typist.replica.version == version for typist in typists)


PROBES = iter(range(1, 1 << 30))


async def probe(live: LiveServer, room: str) -> tuple[str, int, str]:
    """The room's text, version and epoch, as a new client is welcomed to it."""
    async with connect(live.ws(room), max_size=None, open_timeout=10) as connection:
        hello = {"type": "hello", "client_id": f"probe-{next(PROBES)}", "username": "probe", "version": None}
        await connection.send(json.dumps(hello))
        welcome = json.loads(await asyncio.wait_for(connection.recv(), 10))
        assert "welcome" == welcome["type"], welcome
        return welcome["doc"], welcome["version"], welcome["epoch"]


def seen_in(typists: Iterable[Typist]) -> set[str]:
    return {token for typist in typists for token in typist.seen}


async def assert_durable(live: LiveServer, crowd: Crowd) -> None:
    """On a server started again (before anyone reconnected): every update any client saw is
    there exactly once, the versions go on from where they were, in the same epoch."""
    for room, typists in crowd.rooms().items():
        text, version, epoch = await probe(live, room)
        assert {typist.replica.epoch for typist in typists} == {epoch}
        assert version >= max(typist.replica.version for typist in typists) > 0
        seen = seen_in(typists)
        assert seen, f"nobody in {room} saw an update"
        assert {} == {token: text.count(token) for token in seen if text.count(token) != 1}


async def assert_converged(live: LiveServer, crowd: Crowd) -> None:
    """Every token typed (and every one seen) is in the room exactly once, and nothing else is;
    every typist has the room's text."""
    for room, typists in crowd.rooms().items():
        text, version, _ = await probe(live, room)
        typed = [token for typist in typists for token in typist.typed]
        assert seen_in(typists) <= set(typed)
        assert sorted(typed) == sorted(TOKEN.findall(text))
        assert len(typed) == len(set(typed))
        assert text == "".join(TOKEN.findall(text))
        for typist in typists:
            assert (text, version) == (typist.replica.text, typist.replica.version), typist.name
            assert [] == typist.errors


async def test_kill_9_while_clients_type_loses_no_seen_update_and_resends_land_exactly_once(
    servers: Servers,
) -> None:
    rng = random.Random(run_seed())
    live = servers.start()
    crowd = Crowd(
        [Typist(live.ws("kill-a"), f"a{i}", rng.randrange(1 << 32)) for i in range(4)]
        + [Typist(live.ws("kill-b"), f"b{i}", rng.randrange(1 << 32)) for i in range(2)]
    )
    try:
        await crowd.start()
        for _ in range(KILLS):
            # A random moment in the typing (what is tested: a kill at any moment loses nothing)...
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            # ...when a push is on its way: the server may have it, committed, confirmed or not.
            await crowd.wait_until(lambda: any(t.replica.inflight for t in crowd.typists), 10, "a push in flight")
            live.process.send_signal(signal.SIGKILL)
            crowd.gate.clear()  # reconnects wait until the check below has read the store
            inflight = sum(typist.replica.inflight is not None for typist in crowd.typists)
            assert -signal.SIGKILL == await asyncio.to_thread(live.process.wait, 10)
            await crowd.disconnected()  # whatever the dead server had sent is read by now
            started = time.monotonic()
            live = await asyncio.to_thread(servers.start)  # they type on, offline, meanwhile
            took = time.monotonic() - started
            print(f"killed while {inflight} typists had a push in flight; the restart took {took:.1f} s")
            await assert_durable(live, crowd)
            crowd.gate.set()
            await crowd.connected()
        await crowd.settle(live)
        await assert_converged(live, crowd)
        assert all(len(typist.closes) == KILLS for typist in crowd.typists)
        assert all(len(typist.typed) > 20 for typist in crowd.typists)
    finally:
        await crowd.close()


async def readyz(live: LiveServer) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{live.http}/readyz", timeout=5)).status_code


async def refused_join(live: LiveServer, room: str) -> tuple[int | None, list[dict[str, Any]]]:
    """Try to join as a new client: the close code, and every message received before it."""
    messages: list[dict[str, Any]] = []
    async with connect(live.ws(room), max_size=None, open_timeout=5) as newcomer:
        with contextlib.suppress(ConnectionClosed):
            await newcomer.send(json.dumps({"type": "hello", "client_id": "late", "username": "late", "version": None}))
            while True:
                messages.append(json.loads(await asyncio.wait_for(newcomer.recv(), 5)))
        close = newcomer.protocol.close_rcvd
        return (close.code if close is not None else None), messages


async def test_sigterm_turns_unready_serves_the_connected_exits_and_loses_nothing(servers: Servers) -> None:
    servers.env = {
        "SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_SECONDS),
    }
    rng = random.Random(run_seed())
    live = servers.start()
    room = "term"
    crowd = Crowd([Typist(live.ws(room), f"t{i}", rng.randrange(1 << 32)) for i in range(4)])
    try:
        await crowd.start()
        await crowd.wait_until(lambda: all(len(t.seen) >= 5 for t in crowd.typists), 20, "some typing")
        assert 200 == await readyz(live)
        crowd.gate.clear()  # a client told to reconnect waits for the next server
        signalled = time.monotonic()
        live.process.send_signal(signal.SIGTERM)

        # The drain: unready at once, newcomers refused, the connected served as before.
        while (status := await readyz(live)) == 200:
            assert time.monotonic() - signalled < DRAIN_SECONDS / 2, "/readyz still answers 200"
        assert 503 == status
        code, messages = await refused_join(live, room)
        assert 1012 == code
        assert all(("error", "server_restarting") == (m["type"], m.get("code")) for m in messages), messages
        version = max(typist.replica.version for typist in crowd.typists)
        await crowd.wait_until(
            lambda: min(typist.replica.version for typist in crowd.typists) >= version + 5,
            DRAIN_SECONDS,
            f"updates after version {version} during the drain",
        )
        assert all(typist.connection is not None and typist.closes == [] for typist in crowd.typists)
        assert time.monotonic() - signalled < DRAIN_SECONDS
        assert live.process.poll() is None

        # Then every client is told to come back, and the process ends by itself in time.
        returncode = await asyncio.to_thread(live.process.wait, DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 20)
        took = time.monotonic() - signalled
        print(f"SIGTERM to exit: {took:.1f} s")
        # Ended by itself, not killed; the exact status is the business of the test below.
        assert returncode in (-signal.SIGTERM, 0)
        # (Some slack for the interpreter's own exit on a busy machine.)
        assert DRAIN_SECONDS <= took < DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 5
        await crowd.disconnected()
        assert [[1012]] * len(crowd.typists) == [typist.closes for typist in crowd.typists]
        assert all(typist.closed_at[0] - signalled >= DRAIN_SECONDS for typist in crowd.typists)
        log = live.log()
        assert '"event": "stopped"' in log
        assert "shutdown_flush_incomplete" not in log

        live = await asyncio.to_thread(servers.start)
        await assert_durable(live, crowd)
        crowd.gate.set()
        await crowd.connected()
        await crowd.settle(live)
        await assert_converged(live, crowd)
    finally:
        await crowd.close()


def test_sigterm_after_a_drain_ends_the_process_by_the_signal_as_without_one(servers: Servers) -> None:
    # docs/operations.md: outside a container the exit status says the process was terminated
    # (143 in a shell), as it does without a drain (tests/test_operations.py).
    servers.env = {"SHUTDOWN_DRAIN_SECONDS": "0.5"}
    live = servers.start()
    live.process.send_signal(signal.SIGTERM)
    assert -signal.SIGTERM == live.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS + 20)
