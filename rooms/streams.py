"""Redis update streams: committed updates carried between the processes that serve a room.

The database decides the order; the streams only carry it. After a commit, the process that made
it appends the room's new records to the room's stream (`UpdateStreams.publish`); every other
process serving the room follows the stream and hands what it reads to its room (``on_records``).

* One stream per room, ``{prefix}room:{room_id}:updates``. An entry's ID is ``{version}-0``, so
  the stream is keyed by version: appending a version that is there already fails in Redis and
  counts as a ``duplicate``, never as a second copy. Its one field, ``r``, is the record's JSON.
* Streams are trimmed to about ``max_length`` entries (``MAXLEN ~``). Everything in a stream is
  committed in the database already, so trimming, a flushed or restarted Redis, or an append
  that failed lose nothing: they leave gaps, and filling gaps from the database
  (`rooms.store.Store.history`) is the caller's business. Records reach ``on_records`` in
  increasing version order, but not necessarily consecutive ones; an empty stream never means
  "up to date".
* One follower task reads every followed room in one ``XREAD BLOCK``, from each room's position:
  the last version delivered, or known to the room (`UpdateStreams.advance`). The position is
  kept here, per room, never in Redis, so it survives reconnects and streams being deleted and
  recreated (IDs are versions: a recreated stream continues above it).
* The follower has a connection of its own. Following a room interrupts a read in progress (the
  cancelled read closes that connection, and the next read opens a new one); unfollowing or
  advancing does not, what the read brings for such a room is filtered out.
* A lost connection is retried with a backoff doubling from ``backoff_min`` to ``backoff_max``;
  after each reconnect ``on_reconnect()`` is called, because updates may have been missed.
  An entry that does not parse is logged and skipped. Nothing here raises out of the task, and
  `publish` never raises: it logs, counts and returns False.

Redis errors are logged by their type and message, with any password from the URL masked; the
URL itself never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import KeyT, StreamIdT

from observability import metrics
from rooms.store import Record

log = structlog.get_logger("collab.streams")

FIELD = b"r"  # the entry's one field: the record's JSON
_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(Record))
_TEXT_FIELDS = ("client_id", "changes", "user_id", "author", "color")
_OPTIONAL_FIELDS = {field.name for field in dataclasses.fields(Record) if field.default is not dataclasses.MISSING}
_CLIENT_NAME = re.compile(r"[!-~]{1,64}")  # what CLIENT SETNAME takes: no spaces or newlines

# Errors of Redis and of the socket under it (redis-py wraps most of the latter; a timeout of
# ours is a TimeoutError, an OSError).
REDIS_ERRORS = (RedisError, OSError)
CANCEL_RETRY = 0.05  # seconds a cancelled task gets to end before it is cancelled again


@dataclass(slots=True)
class _Follow:
    """Where the follower is in one room's stream."""

    position: int  # versions up to here are delivered, or the room has them
    cursor: tuple[int, int]  # the last entry read (delivered or skipped): the next read starts after it
    generation: int  # bumped by each `follow`: a read sent before it is not delivered


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it ends: again if a cancellation was swallowed (see the
    follower's connection in `UpdateStreams.__init__`). Its outcome is dropped."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=CANCEL_RETRY)
    if not task.cancelled():
        task.exception()  # retrieved: an error of a read given up on is not reported


def stream_key(prefix: str, room_id: str) -> str:
    return f"{prefix}room:{room_id}:updates"


def encode_record(record: Record) -> str:
    return json.dumps({name: getattr(record, name) for name in _RECORD_FIELDS}, separators=(",", ":"))


def decode_record(data: bytes) -> Record:
    """The record in an entry's ``r`` field; ValueError when it is not one."""
    value = json.loads(data.decode())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in _RECORD_FIELDS if name not in value and name not in _OPTIONAL_FIELDS]
    if missing:
        raise ValueError(f"{missing[0]} is missing")
    fields = {name: value[name] for name in _RECORD_FIELDS if name in value}  # newer fields are ignored
    for name in ("version", "seq"):
        if type(fields[name]) is not int:
            raise ValueError(f"{name} {fields[name]!r} is not an integer")
    for name in _TEXT_FIELDS:
        if name in fields and type(fields[name]) is not str:
            raise ValueError(f"{name} {fields[name]!r} is not a string")
    stamp = fields.get("time", 0.0)
    if not (type(stamp) in (int, float) and math.isfinite(stamp)):
        raise ValueError(f"time {stamp!r} is not a finite number")
    fields["time"] = float(stamp)
    return Record(**fields)


def parse_entry_id(entry_id: object) -> tuple[int, int] | None:
    if isinstance(entry_id, bytes | str):
        text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        ms, _, seq = text.partition("-")
        if ms.isdigit() and seq.isdigit():
            return int(ms), int(seq)
    return None


def secrets_of(url: str) -> list[str]:
    """The password of a Redis URL, in every spelling an error message could show it in."""
    parts = urlsplit(url)
    found = [parts.password or "", *parse_qs(parts.query).get("password", [])]
    return sorted({spelling for text in found if text for spelling in (text, unquote(text))}, key=len, reverse=True)


class UpdateStreams:
    """Publishes committed records to room streams and follows the streams of chosen rooms
    (see the module docstring for the guarantees)."""

    def __init__(
        self,
        url: str,
        *,
        max_length: int = 1000,
        block_ms: int = 1000,
        prefix: str = "collab:",
        on_records: Callable[[str, list[Record]], None],
        on_reconnect: Callable[[], None],
        read_count: int = 100,
        timeout: float = 2.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        publish_connections: int = 4,
        client_name: str = "collab",
        key_ttl_seconds: int = 86_400,
    ) -> None:
        """``read_count``: entries read per room and read; ``timeout``: seconds to connect, and
        for an answer (beyond ``block_ms`` for the follower's read); ``publish_connections``:
        connections `publish` may use at once; ``client_name``: what the connections are called
        in Redis' CLIENT LIST (``{client_name}:streams-follower``, ``...-publish``);
        ``key_ttl_seconds``: a room's stream is deleted once nothing was appended to it for this
        long (its updates are in the database; Redis keeps no key per room forever)."""
        self.key_ttl_seconds = key_ttl_seconds
        if max_length < 1 or block_ms < 1 or read_count < 1 or publish_connections < 1:
            raise ValueError("max_length, block_ms, read_count and publish_connections must be at least 1")
        if not (0 < timeout and 0 < backoff_min <= backoff_max):
            raise ValueError("timeout and backoff_min must be above 0, and backoff_max at least backoff_min")
        if not _CLIENT_NAME.fullmatch(client_name):
            raise ValueError(f"client_name {client_name!r} must be 1 to 64 printable characters without spaces")
        self.max_length = max_length
        self.block_ms = block_ms
        self.prefix = prefix
        self.on_records = on_records
        self.on_reconnect = on_reconnect
        self.read_count = read_count
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._secrets = secrets_of(url)
        parts = urlsplit(url)
        self._where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
        # redis-py raises ValueError for a bad URL (its message does not quote the URL).
        # Appends: one immediate retry on a lost connection (a stale pooled connection), since
        # appending a version twice is harmless; no backoff, a publish stays within ``timeout``.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=publish_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            client_name=f"{client_name}:streams-publish",
        )
        self._writer = Redis(connection_pool=pool)
        # The follower retries with its own backoff and bounds each read and ping itself: with
        # a socket timeout, redis-py writes under `asyncio.wait_for`, which on Python 3.11
        # can swallow a cancellation that comes as the write ends (CPython gh-86296), leaving
        # an interrupted read blocked for ``block_ms``.
        self.timeout = timeout
        self._reader: Redis = Redis.from_url(
            url,
            single_connection_client=True,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=f"{client_name}:streams-follower",
        )
        self._follows: dict[str, _Follow] = {}
        self._generation = 0
        self._excluded: set[str] = set()  # rooms whose key holds something else than a stream
        self._wake = asyncio.Event()  # the follow set grew: interrupt the read
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._closed = False
        self._publish_failing = False

    @property
    def connected(self) -> bool:
        """Whether the follower's connection to Redis is up."""
        return self._connected

    def key(self, room_id: str) -> str:
        return stream_key(self.prefix, room_id)

    async def start(self) -> None:
        """Connect and start the follower. Does not raise when Redis does not answer: the
        follower keeps trying, and calls ``on_reconnect`` once it gets through."""
        if self._task is not None or self._closed:
            return
        try:
            await self._ping()
        except REDIS_ERRORS as exc:
            metrics.STREAM_ERRORS.inc()
            log.warning("stream_connect_failed", redis=self._where, error=self._describe(exc))
        else:
            self._set_connected(True)
            log.info("stream_connected", redis=self._where)
        self._task = asyncio.create_task(self._follow_streams(), name="collab-stream-follower")

    async def stop(self) -> None:
        """Stop the follower and close the connections (`publish` returns False from then on)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for client in (self._reader, self._writer):
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._writer.connection_pool.disconnect()
        self._set_connected(False)

    async def publish(self, room_id: str, records: Sequence[Record]) -> bool:
        """Append a commit's records of one room to its stream, in one round trip. True when
        every version is in the stream (appended now or before); never raises.

        Publish a room's commits one at a time, in order: a version appended after a higher
        one is refused as a duplicate, and followers see a gap."""
        if not records:
            return True
        if self._closed:
            metrics.STREAM_APPENDS.labels("error").inc(len(records))
            return False
        key = self.key(room_id)
        try:
            async with self._writer.pipeline(transaction=False) as pipe:
                for record in sorted(records, key=lambda record: record.version):
                    pipe.xadd(
                        key,
                        {FIELD: encode_record(record)},
                        id=f"{record.version}-0",
                        maxlen=self.max_length,
                        approximate=True,
                    )
                pipe.expire(key, self.key_ttl_seconds)
                results: list[object] = await pipe.execute(raise_on_error=False)
                results.pop()  # the expiry's answer
        except REDIS_ERRORS as exc:
            self._publish_failed(room_id, len(records), exc)
            return False
        ok = duplicate = 0
        error: Exception | None = None
        for result in results:
            if not isinstance(result, Exception):
                ok += 1
            elif isinstance(result, ResponseError) and "equal or smaller" in str(result):
                duplicate += 1  # that version was appended already
            else:
                error = result
        metrics.STREAM_APPENDS.labels("ok").inc(ok)
        metrics.STREAM_APPENDS.labels("duplicate").inc(duplicate)
        if error is not None:
            self._publish_failed(room_id, len(records) - ok - duplicate, error)
            return False
        if self._publish_failing:
            self._publish_failing = False
            log.info("stream_publish_recovered", redis=self._where)
        return True

    def follow(self, room_id: str, after_version: int) -> None:
        """Deliver the room's versions above ``after_version`` (following it again starts over
        from there). Takes effect at once: a read in progress is interrupted."""
        self._generation += 1
        after = max(after_version, 0)
        self._follows[room_id] = _Follow(position=after, cursor=(after, 0), generation=self._generation)
        self._excluded.discard(room_id)
        self._wake.set()

    def unfollow(self, room_id: str) -> None:
        self._follows.pop(room_id, None)
        self._excluded.discard(room_id)

    def advance(self, room_id: str, version: int) -> None:
        """The room has every version up to ``version`` (from the database, say): deliver only
        later ones."""
        state = self._follows.get(room_id)
        if state is not None and version > state.position:
            state.position = version
            state.cursor = max(state.cursor, (version, 0))

    # The follower.

    async def _follow_streams(self) -> None:
        delay = self.backoff_min
        down_since = time.monotonic()  # when not connected at start
        while True:
            try:
                if not self._connected:
                    await self._ping()
                    self._set_connected(True)
                    log.info(
                        "stream_reconnected", redis=self._where, down_seconds=round(time.monotonic() - down_since, 3)
                    )
                    delay = self.backoff_min
                    self._call("on_reconnect", self.on_reconnect)
                if self._readable():
                    await self._read_once()
                else:
                    await self._idle()
            except REDIS_ERRORS as exc:
                metrics.STREAM_ERRORS.inc()
                if self._connected:
                    down_since = time.monotonic()
                    self._set_connected(False)
                    log.warning("stream_connection_lost", redis=self._where, error=self._describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def _readable(self) -> bool:
        return any(room_id not in self._excluded for room_id in self._follows)

    async def _idle(self) -> None:
        """Nothing to read: wait for a room to follow, checking the connection every block_ms."""
        self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait((woken,), timeout=self.block_ms / 1000)
        finally:
            woken.cancel()
        if not done:
            await self._ping()

    async def _ping(self) -> None:
        async with asyncio.timeout(self.timeout):  # raises TimeoutError, an OSError
            await self._reader.ping()

    async def _read_once(self) -> None:
        self._wake.clear()
        sent = {
            self.key(room_id).encode(): (room_id, state.generation)
            for room_id, state in self._follows.items()
            if room_id not in self._excluded
        }
        streams: dict[KeyT, StreamIdT] = {
            key: "{}-{}".format(*self._follows[room_id].cursor) for key, (room_id, _) in sent.items()
        }
        read = asyncio.ensure_future(self._reader.xread(streams, count=self.read_count, block=self.block_ms))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait(
                (read, woken), timeout=self.block_ms / 1000 + self.timeout, return_when=FIRST_COMPLETED
            )
        finally:
            woken.cancel()
            if not read.done():
                # Cancelling a read makes redis-py close the connection (whatever the answer,
                # it is not read from a connection used again); the next command reconnects.
                await cancel_and_wait(read)
        if read.cancelled():
            if woken in done:
                return  # the follow set grew: read again with it
            raise RedisTimeoutError(f"no answer to a read within {self.block_ms} ms and {self.timeout} s")
        try:
            reply: object = read.result()
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE") and await self._exclude_wrong_types(list(sent)):
                return
            raise
        metrics.STREAM_READS.inc()
        self._deliver(reply, sent)

    async def _exclude_wrong_types(self, keys: list[bytes]) -> bool:
        """Leave out of the reads the rooms whose key holds something else than a stream (until
        they are followed again): one such key must not stop every room. False if none does."""
        found = False
        rooms = {self.key(room_id).encode(): room_id for room_id in self._follows}
        for key in keys:
            async with asyncio.timeout(self.timeout):
                kind = await self._reader.type(key)
            if kind not in (b"stream", b"none", "stream", "none") and key in rooms:
                found = True
                self._excluded.add(rooms[key])
                metrics.STREAM_ERRORS.inc()
                log.error("stream_key_not_a_stream", room_id=rooms[key], type=str(kind))
        return found

    def _deliver(self, reply: object, sent: dict[bytes, tuple[str, int]]) -> None:
        # RESP2 answers [[key, entries], ...], RESP3 {key: entries}; entries are (id, fields).
        if isinstance(reply, dict):
            pairs: list[object] = [[key, entries] for key, entries in reply.items()]
        else:
            pairs = list(reply) if isinstance(reply, list) else []
        for pair in pairs:
            if not (isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[1], list)):
                continue
            key = pair[0].encode() if isinstance(pair[0], str) else pair[0]
            if not isinstance(key, bytes) or key not in sent:
                continue
            room_id, generation = sent[key]
            state = self._follows.get(room_id)
            if state is None or state.generation != generation:
                continue  # unfollowed, or followed again from elsewhere, since the read was sent
            records = self._take(room_id, state, pair[1])
            if records:
                now = time.time()
                for record in records:
                    if record.time > 0:
                        metrics.STREAM_LAG.observe(max(now - record.time, 0.0))
                self._call("on_records", self.on_records, room_id, records)

    def _take(self, room_id: str, state: _Follow, entries: list[object]) -> list[Record]:
        """The records of a room's entries that are new to it; moves its cursor and position."""
        records: list[Record] = []
        for entry in entries:
            if not (isinstance(entry, list | tuple) and len(entry) == 2):
                continue
            entry_id = parse_entry_id(entry[0])
            if entry_id is None or entry_id <= state.cursor:
                continue
            state.cursor = entry_id
            version = entry_id[0]
            if version <= state.position:
                continue  # the room has it already (`advance`)
            fields = entry[1]
            data = fields.get(FIELD, fields.get(FIELD.decode())) if isinstance(fields, dict) else None
            try:
                if entry_id[1] != 0:
                    raise ValueError("the entry's ID is not a version's")
                if isinstance(data, str):
                    data = data.encode()
                if not isinstance(data, bytes):
                    raise ValueError(f"no {FIELD.decode()!r} field")
                record = decode_record(data)
                if record.version != version:
                    raise ValueError(f"the record's version is {record.version}")
            except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                metrics.STREAM_ERRORS.inc()
                log.warning("stream_entry_skipped", room_id=room_id, entry="{}-{}".format(*entry_id), reason=str(exc))
                continue
            state.position = version
            records.append(record)
        return records

    # Helpers.

    def _call(self, name: str, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("stream_callback_failed", callback=name)

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        metrics.STREAM_CONNECTED.set(1 if connected else 0)

    def _publish_failed(self, room_id: str, count: int, exc: BaseException) -> None:
        metrics.STREAM_APPENDS.labels("error").inc(count)
        metrics.STREAM_ERRORS.inc()
        if not self._publish_failing:  # once per outage: the count says the rest
            self._publish_failing = True
            log.warning("stream_publish_failed", room_id=room_id, redis=self._where, error=self._describe(exc))

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
