"""Several app processes sharing rooms through PostgreSQL and Redis, for tests.

Each test gets a database of its own on ``TEST_DATABASE_URL``'s server (``collab_c_<hex>``,
dropped afterwards) and Redis database `REDIS_DB` (flushed before and after) on
``TEST_REDIS_URL``'s server; `LiveCluster` starts ``python app.py`` processes on them and stops
every one it started, by its pid. `Typist` is one browser tab: a `Replica` over a WebSocket,
handled frame by frame as the browser does, that reconnects (to the next process when one does
not answer) and resends what the room has not confirmed. It remembers which of its tokens were
confirmed, so a test can tell "lost before it was confirmed" (allowed) from "confirmed, then
lost" (never). `converge` waits until every process, every typist and the database agree, and
`assert_converged` checks what they agree on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import redis
import redis.asyncio
from psycopg import sql
from psycopg.conninfo import make_conninfo
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rooms.changes import ChangeSet, utf16_len
from rooms.replica import Offer, Replica
from rooms.store import Record, replay
from rooms.store.postgres_schema import unescape
from rooms.streams import stream_key
from tests.conftest import LiveServer, free_port, start_server
from tests.postgres_schemas import TEST_DATABASE_URL
from tests.postgres_schemas import unavailable as postgres_unavailable

_REDIS = urlsplit(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"))
REDIS_HOST, REDIS_PORT = _REDIS.hostname or "127.0.0.1", _REDIS.port or 6379
REDIS_DB = 13  # flushed; test_streams.py uses 15, test_shared_presence.py 12, test_browser_cluster.py 11
# Every wait of these tests is bounded; a process that starts answers within start_server's 60 s.
CONVERGE_SECONDS = 45.0
CONNECT_SECONDS = 3.0
RETRY_MIN, RETRY_MAX = 0.05, 1.0
# Token glyphs: one of them outside the BMP, so positions are really counted in UTF-16 units.
GLYPHS = "a😀漢é"
TRACE_LENGTH = 2000


def redis_url(port: int = REDIS_PORT, db: int = REDIS_DB, host: str = REDIS_HOST) -> str:
    return f"redis://{host}:{port}/{db}"


def services_unavailable() -> str:
    """Why the cluster cannot run here (PostgreSQL or Redis not answering), or ""."""
    if reason := postgres_unavailable():
        return reason
    try:
        with redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=3, socket_connect_timeout=3) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} (TEST_REDIS_URL) does not answer: {type(exc).__name__}"
    return ""


def admin() -> psycopg.Connection[tuple[Any, ...]]:
    """A connection to the test database's server (not to a cluster's database)."""
    return psycopg.connect(TEST_DATABASE_URL, autocommit=True, connect_timeout=3)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new database on the test server, dropped afterwards with every connection
    still open to it."""
    name = f"collab_c_{uuid.uuid4().hex[:16]}"
    with admin() as db:
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(TEST_DATABASE_URL, dbname=name)
    finally:
        with admin() as db:
            db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def flush_redis(url: str) -> None:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()


def dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


async def terminate_connections(url: str) -> int:
    """End every connection to ``url``'s database (the processes' pools); how many there were."""
    async with await psycopg.AsyncConnection.connect(TEST_DATABASE_URL, autocommit=True) as db:
        rows = await db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname(url),),
        )
        row = await rows.fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Stored:
    """A room as the database holds it: its head and every update row, in version order."""

    head: int | None
    epoch: str | None
    records: list[Record]

    @property
    def text(self) -> str:
        return replay("", 0, self.records)


async def stored(url: str, room: str) -> Stored:
    """The room's head and rows, read directly from the ``rooms`` and ``updates`` tables."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=3) as db:
        room_row = await (await db.execute("SELECT head, epoch FROM rooms WHERE room_id = %s", (room,))).fetchone()
        rows = await db.execute(
            "SELECT version, client_id, seq, changes FROM updates WHERE room_id = %s ORDER BY version", (room,)
        )
        records = [
            Record(version, unescape(client_id), seq, unescape(changes))
            for version, client_id, seq, changes in await rows.fetchall()
        ]
    if room_row is None:
        return Stored(None, None, records)
    return Stored(int(room_row[0]), unescape(room_row[1]), records)


STREAM_PREFIX = "collab:"  # the processes' (`UpdateStreams`' default)


async def stream_start(url: str, room: str) -> int:
    """The first version the room's Redis stream still holds (0: none)."""
    async with redis.asyncio.Redis.from_url(url, socket_timeout=5) as client:
        entries = await client.xrange(stream_key(STREAM_PREFIX, room), count=1)
    if not entries:
        return 0
    entry_id = entries[0][0]
    return int((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)).split("-")[0])


async def metric(server: LiveServer, name: str) -> float:
    """The sum of a metric's samples (every label set) on a process."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.http}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def process_text(server: LiveServer, room: str) -> tuple[str, int]:
    """The room's text and version in one process, as a new client's ``welcome`` gives them."""
    async with asyncio.timeout(CONNECT_SECONDS * 2), connect(server.ws(room), max_size=None) as probe:
        hello = {"type": "hello", "client_id": f"probe-{uuid.uuid4().hex[:8]}", "username": "probe", "version": None}
        await probe.send(json.dumps(hello))
        while True:
            message = json.loads(await probe.recv())
            if isinstance(message, dict) and message.get("type") == "welcome":
                return message["doc"], int(message["version"])


class LiveCluster:
    """``python app.py`` processes on one database and one Redis; every one started is stopped
    (by its pid) by `stop`."""

    def __init__(self, tmp: Path, database_url: str, redis: str, **env: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.env = {
            "STORE": "postgres",
            "DATABASE_URL": database_url,
            "DATABASE_POOL_SIZE": "4",
            "REDIS_URL": redis,
            "CLUSTER_HEAD_CHECK_SECONDS": "0.5",
            **env,
        }
        self.servers: list[LiveServer] = []
        self.paused: set[int] = set()

    async def start(self, count: int = 1, **env: str) -> list[LiveServer]:
        """``count`` more processes, started side by side; ``env`` overrides the cluster's."""
        settings = {**self.env, **env}

        def one(index: int) -> LiveServer:
            home = self.tmp / f"process-{len(self.servers) + index}"
            home.mkdir()
            return start_server(home, **settings)

        results = await asyncio.gather(
            *(asyncio.to_thread(one, index) for index in range(count)), return_exceptions=True
        )
        started = [result for result in results if isinstance(result, LiveServer)]
        self.servers.extend(started)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return started

    def kill(self, server: LiveServer) -> None:
        """kill -9: no shutdown, no flush, connections cut by the kernel."""
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()

    def pause(self, server: LiveServer) -> None:
        server.process.send_signal(signal.SIGSTOP)
        self.paused.add(server.process.pid)

    def resume(self, server: LiveServer) -> None:
        server.process.send_signal(signal.SIGCONT)
        self.paused.discard(server.process.pid)

    @property
    def running(self) -> list[LiveServer]:
        return [server for server in self.servers if server.process.poll() is None]

    def stop(self) -> None:
        for server in self.servers:
            if server.process.pid in self.paused and server.process.poll() is None:
                self.resume(server)
            server.stop()

    def logs(self, tail: int = 4000) -> str:
        """The end of every process's log, for an assertion's message."""
        return "\n".join(f"--- process :{s.port}\n{s.log()[-tail:]}" for s in self.servers)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """Every JSON log line of every process whose ``event`` is ``event``."""
        found = []
        for server in self.servers:
            for line in server.log().splitlines():
                if line.startswith("{") and f'"{event}"' in line:
                    entry = json.loads(line)
                    if entry.get("event") == event:
                        found.append(entry | {"port": server.port})
        return found


# `PrivateRedis` runs a Redis of its own (to kill and start again): it needs the binary, which a
# machine using a Redis elsewhere (TEST_REDIS_URL) may not have.
REDIS_SERVER = shutil.which("redis-server")
NO_REDIS_SERVER = (
    "redis-server not found on PATH: this test runs a Redis of its own, to kill and restart "
    "(Debian: apt-get install redis-server)"
)


class PrivateRedis:
    """A ``redis-server`` of the test's own, on a free loopback port, keeping nothing on disk:
    to be killed and started again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return redis_url(self.port, db=0, host="127.0.0.1")

    def start(self) -> None:
        if REDIS_SERVER is None:
            pytest.skip(NO_REDIS_SERVER)
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.tmp / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(argv, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                    client.ping()
                return
            except (redis.RedisError, OSError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@contextlib.contextmanager
def private_redis(tmp: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Typist:
    """One browser tab typing into a room (see the module docstring).

    It tries ``servers`` in order, starting from the one it last reached; a process that does
    not answer sends it to the next. Tokens look like ``[name.7😀]`` and are never deleted (only
    the ``~`` fillers typed after them are), so each must be in the final text at most once, and
    exactly once if the room confirmed it."""

    def __init__(self, name: str, room: str, servers: Sequence[LiveServer]) -> None:
        self.name = name
        self.room = room
        self.servers = list(servers)
        self.replica = Replica(f"{name}-{uuid.uuid4().hex[:8]}")
        self.server: LiveServer | None = None  # the process of the conversation going on
        self.connection: ClientConnection | None = None
        self.typed: list[str] = []
        self.confirmed: set[str] = set()
        self.offers: list[Offer] = []
        self.errors: list[dict[str, Any]] = []
        self.welcomes = 0
        self.epochs: set[str | None] = set()  # of every welcome
        self.rebased = 0  # others' updates that came while a batch of ours was in flight
        self.changed = asyncio.Event()
        # The last frames in and pushes out, with the process and the time: for a failure's diagnosis.
        self.trace: deque[tuple[float, int | None, str, Any]] = deque(maxlen=TRACE_LENGTH)
        self._unsent: list[str] = []  # tokens typed since the last batch was made
        self._batches: dict[tuple[str, int], list[str]] = {}  # (client_id, seq) -> its tokens
        self._fresh = True  # the first hello asks for the text (version null)
        self._index = 0
        self._online = asyncio.Event()
        self._online.set()
        self._reading = asyncio.Event()
        self._reading.set()
        self._task: asyncio.Task[None] | None = None

    # Lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"typist-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connection is not None:
            self.connection.transport.abort()

    async def go_offline(self) -> None:
        """Cut the connection without a close frame (a laptop lid closing) and stay away."""
        self._online.clear()
        connection = self.connection
        if connection is not None:
            connection.transport.abort()
        self.release()
        async with asyncio.timeout(5):
            while self.connection is not None:
                self.changed.clear()
                await self.changed.wait()

    def go_online(self, servers: Sequence[LiveServer] | None = None) -> None:
        if servers is not None:
            self.servers, self._index = list(servers), 0
        self._online.set()

    def hold(self) -> None:
        """Stop handling what arrives (it waits in the socket) until `release`."""
        self._reading.clear()

    def release(self) -> None:
        self._reading.set()

    # State

    def check(self) -> None:
        """Raise what ended the typist's task, if something did."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    @property
    def live(self) -> bool:
        return self.connection is not None and self.replica.live

    def synced(self, version: int) -> bool:
        """At ``version`` with nothing unconfirmed, in a conversation with a process."""
        return self.live and self.replica.version == version and not self.replica.has_unconfirmed

    def describe(self) -> str:
        replica = self.replica
        where = self.server.port if self.server is not None else None
        return (
            f"{self.name}: version {replica.version}, inflight={replica.inflight is not None}, "
            f"pending={replica.pending is not None}, live={self.live}, process :{where}, welcomes={self.welcomes}, "
            f"offers={[offer.reason for offer in self.offers]}, errors={[e.get('code') for e in self.errors][-5:]}"
        )

    # Typing

    async def edit(self, changes: ChangeSet) -> None:
        await self._send(self.replica.edit(changes))

    async def type_token(self, rng: random.Random) -> str:
        """Insert a new token (and a few fillers) after a token or a filler, or at the start."""
        text = self.replica.text
        token = f"[{self.name}.{len(self.typed)}{rng.choice(GLYPHS)}]"
        self.typed.append(token)
        self._unsent.append(token)
        at = rng.choice([0] + [i + 1 for i, char in enumerate(text) if char in "]~"])
        position = utf16_len(text[:at])
        await self.edit(ChangeSet.of_replace(self.replica.length, position, position, token + "~" * rng.randint(0, 2)))
        return token

    async def delete_filler(self, rng: random.Random) -> bool:
        text = self.replica.text
        fillers = [i for i, char in enumerate(text) if char == "~"]
        if not fillers:
            return False
        start = utf16_len(text[: rng.choice(fillers)])
        await self.edit(ChangeSet.of_replace(self.replica.length, start, start + 1, ""))
        return True

    async def type(self, count: int, seed: int, pace: float = 0.02) -> None:
        """``count`` edits, a quarter of them deletions of fillers, at an uneven pace: the sleep
        is not a wait for anything, it spreads pushes so that they cross on stale versions."""
        rng = random.Random(seed)
        for _ in range(count):
            if not (rng.random() < 0.25 and await self.delete_filler(rng)):
                await self.type_token(rng)
            await asyncio.sleep(rng.uniform(0, pace))

    # The conversation

    async def _send(self, message: dict[str, Any] | None, connection: ClientConnection | None = None) -> None:
        if message is None:
            return
        if message.get("type") == "push":
            # A batch is made once (a resend keeps its seq): it holds every token typed since the last.
            key = (self.replica.client_id, int(message["seq"]))
            if key not in self._batches:
                self._batches[key], self._unsent = self._unsent, []
        connection = connection or self.connection
        self.trace.append((time.time(), self.server.port if self.server else None, "out", message))
        if connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await connection.send(json.dumps(message))

    def _confirm(self, up_to: int) -> None:
        client_id = self.replica.client_id
        for key in [key for key in self._batches if key[0] == client_id and key[1] <= up_to]:
            self.confirmed.update(self._batches.pop(key))

    def _forget_dropped(self) -> None:
        """Batches neither confirmed nor in flight were dropped (by a snapshot): their tokens
        are lost, never to be confirmed by a later seq (seqs go on after a snapshot)."""
        inflight = self.replica.inflight
        keep = None if inflight is None else (self.replica.client_id, inflight.seq)
        self._batches = {key: tokens for key, tokens in self._batches.items() if key == keep}

    def _note(self, messages: list[dict[str, Any]]) -> None:
        """What a frame confirms, seen before the replica handles it: our own update, an ack of
        the batch in flight, or a welcome's ``last_seq`` (the room says it applied that far)."""
        for message in messages:
            kind = message.get("type")
            inflight = self.replica.inflight
            if kind == "update" and message.get("client_id") == self.replica.client_id:
                self._confirm(int(message["seq"]))
            elif kind == "update" and inflight is not None:
                self.rebased += 1
            elif kind == "ack" and inflight is not None and message.get("seq") == inflight.seq:
                self._confirm(inflight.seq)
            elif kind == "welcome" and message.get("last_seq") is not None:
                self._confirm(int(message["last_seq"]))

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._online.wait()
            server = self.servers[self._index % len(self.servers)]
            try:
                async with asyncio.timeout(CONNECT_SECONDS):
                    connection = await connect(server.ws(self.room), max_size=None, open_timeout=None)
            except (OSError, TimeoutError, InvalidHandshake):
                self._index += 1  # that process does not answer: the next one
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
                continue
            welcomes = self.welcomes
            try:
                await self._converse(server, connection)
            except ConnectionClosed:
                pass
            finally:
                connection.transport.abort()
                self.connection = self.server = None
                self.changed.set()
            delay = RETRY_MIN if self.welcomes > welcomes else min(2 * delay, RETRY_MAX)
            await asyncio.sleep(delay)

    async def _converse(self, server: LiveServer, connection: ClientConnection) -> None:
        hello = self.replica.hello(self.name, resume=not self._fresh)
        await connection.send(json.dumps(hello | {"batch": True}))
        # Only now: an edit made before the hello would have sent a push on this connection.
        self.connection, self.server = connection, server
        async for raw in connection:
            await self._reading.wait()
            if connection.transport.is_closing():
                return  # cut while held (`go_offline`): what was waiting is never handled
            frame = json.loads(raw)
            messages = frame if isinstance(frame, list) else [frame]
            self.trace.append((time.time(), server.port, "in", messages))
            self._note(messages)
            out = self.replica.receive(messages)
            if any(message.get("type") == "welcome" for message in messages) and self.replica.live:
                self.welcomes += 1
                self._fresh = False
            for message in out.send:
                await self._send(message, connection)
            if self.replica.pending is None:
                self._unsent = []  # dropped with the rest of the local work (a snapshot), or sent
            self._forget_dropped()
            for message in messages:
                if message.get("type") == "welcome":
                    self.epochs.add(message.get("epoch"))
            if out.offer is not None:
                self.offers.append(out.offer)
            if out.error is not None:
                self.errors.append(out.error)
            elif out.notice is not None:
                self.errors.append({"code": out.notice})
            assert out.denied is None, out.denied
            self.changed.set()
            if out.hello or out.error is not None:
                return  # a new conversation: hello again (resend follows the welcome)


@dataclass(frozen=True)
class Converged:
    text: str
    version: int
    seconds: float


async def converge(
    cluster: LiveCluster, room: str, typists: Sequence[Typist], timeout: float = CONVERGE_SECONDS
) -> Converged:
    """Wait until the database's head, every running process's text and version and every
    typist's (nothing unconfirmed) agree; then check them (`assert_converged`)."""
    started = time.monotonic()
    deadline = started + timeout
    last = ""
    while True:
        for typist in typists:
            typist.check()
        state = await stored(cluster.database_url, room)
        head = state.head
        if head is not None and all(typist.synced(head) for typist in typists):
            views = await asyncio.gather(*(process_text(server, room) for server in cluster.running))
            if all(version == head for _, version in views) and len({text for text, _ in views}) == 1:
                seconds = time.monotonic() - started
                try:
                    assert_converged(state, [text for text, _ in views], typists)
                except AssertionError as failure:
                    path = diagnose(cluster, room, state, typists)
                    raise AssertionError(f"{failure}\n(diagnosis: {path})") from None
                return Converged(state.text, head, seconds)
            last = f"processes at {[version for _, version in views]}"
        else:
            last = "typists: " + "; ".join(typist.describe() for typist in typists)
        if time.monotonic() > deadline:
            path = diagnose(cluster, room, state, typists)
            raise AssertionError(
                f"room {room} did not converge within {timeout} s: database head {head}, {last}\n"
                f"(diagnosis: {path})\n{cluster.logs()}"
            )
        await asyncio.sleep(0.05)


def diagnose(cluster: LiveCluster, room: str, state: Stored, typists: Sequence[Typist]) -> Path:
    """Write what the database holds and what each typist saw next to the processes' logs."""
    path = cluster.tmp / f"diagnosis-{room}.json"
    records = [[r.version, r.client_id, r.seq, r.changes] for r in state.records]
    seen = {
        t.name: {
            "client_id": t.replica.client_id,
            "typed": t.typed,
            "confirmed": sorted(t.confirmed),
            "offers": [o.reason for o in t.offers],
            "trace": list(t.trace),
        }
        for t in typists
    }
    path.write_text(json.dumps({"room": room, "head": state.head, "records": records, "typists": seen}, default=str))
    return path


def assert_converged(state: Stored, texts: Sequence[str], typists: Sequence[Typist]) -> None:
    """One row per version 1..N; the processes' and typists' texts are the rows' replay; no
    (client_id, seq) stored twice; every confirmed token once, no token twice."""
    versions = [record.version for record in state.records]
    assert list(range(1, len(versions) + 1)) == versions
    assert state.head == len(versions)
    text = state.text
    for shown in texts:
        assert text == shown
    for typist in typists:
        assert text == typist.replica.text, typist.describe()
        # Every welcome gave the stored epoch: a room made at once by several processes is one room.
        assert {state.epoch} == typist.epochs, (
            f"{typist.describe()}: welcomed in epochs {sorted(map(str, typist.epochs))}, "
            f"the database holds {state.epoch}"
        )
    pushes = [(record.client_id, record.seq) for record in state.records]
    assert sorted(set(pushes)) == sorted(pushes), "a push stored twice"
    for typist in typists:
        lost = sorted((token, text.count(token)) for token in typist.confirmed if text.count(token) != 1)
        assert [] == lost, f"{typist.name}: confirmed tokens not in the text exactly once: {lost} ({typist.describe()})"
        twice = sorted(token for token in typist.typed if text.count(token) > 1)
        assert [] == twice, f"{typist.name}: tokens in the text more than once"


@contextlib.asynccontextmanager
async def typists_in(
    room: str, placement: Sequence[Sequence[LiveServer]], prefix: str = "t", *, together: bool = False
) -> Any:
    """Typists of ``room``, the i-th trying ``placement[i]``'s processes in order; each connected
    (welcomed) before the block runs, all stopped after it. The first one makes the room before
    the others come, unless ``together``: then every process may make it at once."""
    typists = [Typist(f"{prefix}{index}", room, servers) for index, servers in enumerate(placement)]
    try:
        async with asyncio.timeout(CONVERGE_SECONDS):
            for index, typist in enumerate(typists):
                typist.start()
                if together and index < len(typists) - 1:
                    continue
                for waited in typists[: index + 1]:
                    while waited.welcomes == 0:
                        waited.check()
                        waited.changed.clear()
                        await waited.changed.wait()
        yield typists
    finally:
        for typist in typists:
            await typist.stop()


async def until(condition: Any, timeout: float, what: Any, step: float = 0.02) -> float:
    """Poll ``condition()`` (sync or async) until true; the seconds it took. ``what`` (or what
    it returns, when callable) says what was waited for."""
    started = time.monotonic()
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        await asyncio.sleep(step)


def rotate(servers: Sequence[LiveServer], first: int) -> list[LiveServer]:
    """``servers`` starting from the ``first``-th (a typist's preference: that one, then the others)."""
    return [*servers[first:], *servers[:first]]


@pytest.fixture(scope="module")
def cluster_services() -> None:
    """Skips the module, saying why, when PostgreSQL or Redis does not answer (autouse it)."""
    if reason := services_unavailable():
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def live_cluster(tmp_path: Path) -> Iterator[LiveCluster]:
    with running_cluster(tmp_path) as cluster:
        yield cluster


@contextlib.contextmanager
def running_cluster(tmp: Path) -> Iterator[LiveCluster]:
    """A fresh database and Redis database, and the processes started on them, all stopped and
    cleaned away afterwards."""
    url = redis_url()
    flush_redis(url)
    with fresh_database() as database_url:
        cluster = LiveCluster(tmp, database_url, url)
        try:
            yield cluster
        finally:
            cluster.stop()
            flush_redis(url)
