"""Presence across processes: who is in a room, whatever process serves them, through Redis.

Reliable state, lossy events (`rooms.room_remote` is the room's side of it):

* State: each room's members are a hash, ``{prefix}room:{room_id}:members``, user_id -> JSON
  ``{user_id, username, color, role?, process}``. A process is alive while its key,
  ``{prefix}process:{process_id}``, exists; the key expires after ``timeout_seconds`` and is
  refreshed at every heartbeat (every third of it). A member of a dead process is left out of
  the lists, and its field deleted by whoever sees it. Each process writes its own members
  (kept in memory) again at every heartbeat, so a flushed or restarted Redis gets them back.
* At every heartbeat, right after `SharedPresence.follow` and after a reconnection, each
  followed room's hash is read with the liveness of the processes it names: ``on_members``
  gets the live members of the OTHER processes, the truth that repairs any lost event.
* Events are published on ``{prefix}room:{room_id}:presence`` as JSON ``{kind, process,
  payload}`` (a join or leave also writes the hash, in the same round trip); one pub/sub
  connection subscribes to the followed rooms and hands others' events to ``on_event``.
* `SharedPresence.tell` never blocks nor raises: it queues. At most one cursor per (room, user)
  waits (the newest replaces it); a full queue gives up its oldest cursor, else its oldest event.

A field is deleted only if it still holds what was read or written (a Lua script), so a process
never deletes what another just wrote. Redis errors are logged with the URL's password masked
(never the URL) and retried with a backoff doubling from ``backoff_min`` to ``backoff_max``;
`SharedPresence.connected` is false meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT, FieldT

from observability import metrics
from rooms.streams import REDIS_ERRORS, secrets_of

log = structlog.get_logger("collab.presence")

KINDS = ("joined", "left", "cursor", "language", "access")
# Kinds about the room rather than one member: they may have no user_id.
ROOM_KINDS = frozenset({"language", "access"})
# Deletes a hash field only if it still holds the given value.
_DELETE_IF_SAME = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)

OnEvent = Callable[[str, str, dict[str, Any]], None]
OnMembers = Callable[[str, dict[str, dict[str, Any]]], None]


def members_key(prefix: str, room_id: str) -> str:
    return f"{prefix}room:{room_id}:members"


def events_channel(prefix: str, room_id: str) -> str:
    return f"{prefix}room:{room_id}:presence"


def process_key(prefix: str, process_id: str) -> str:
    return f"{prefix}process:{process_id}"


@dataclass(slots=True)
class _Out:
    """An event waiting to be published."""

    room_id: str
    kind: str
    user_id: str | None
    message: str  # the event's JSON
    member: str | None = None  # joined: the field's value to write; left: the value to delete


class SharedPresence:
    """Carries a process's presence to the other processes serving its rooms, and theirs to it
    (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        process_id: str,
        timeout_seconds: float,
        prefix: str = "collab:",
        on_event: OnEvent,
        on_members: OnMembers,
        max_queued: int = 1000,
        batch_size: int = 100,
        timeout: float = 2.0,
        poll_seconds: float = 0.1,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        client_name: str = "collab",
    ) -> None:
        """``max_queued``: events waiting to be published at most; ``batch_size``: events, or
        rooms read, per round trip; ``timeout``: seconds to connect and for an answer;
        ``poll_seconds``: how long a new follow may wait for its subscription; ``client_name``:
        what the connections are called in Redis' CLIENT LIST (``{client_name}:presence``,
        ``...:presence-events``)."""
        if not 0 < len(process_id) <= 128:
            raise ValueError("process_id must be 1 to 128 characters")
        if not (timeout_seconds > 0 and timeout > 0 and poll_seconds > 0 and 0 < backoff_min <= backoff_max):
            raise ValueError("timeouts and backoff_min must be above 0, and backoff_max at least backoff_min")
        if max_queued < 1 or batch_size < 1:
            raise ValueError("max_queued and batch_size must be at least 1")
        self.process_id, self.timeout_seconds, self.prefix = process_id, timeout_seconds, prefix
        self.expiry_ms = max(1, round(timeout_seconds * 1000))  # of the process key
        self.on_event, self.on_members = on_event, on_members
        self.max_queued, self.batch_size = max_queued, batch_size
        self.timeout, self.poll_seconds = timeout, poll_seconds
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self._secrets = secrets_of(url)
        parts = urlsplit(url)
        self._where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
        common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        # Retries are this module's (with backoff), never redis-py's.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=timeout, retry=Retry(NoBackoff(), 0),
            client_name=f"{client_name}:presence", **common,
        )  # fmt: skip
        self._writer = Redis(connection_pool=pool)
        self._listener: Redis = Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), client_name=f"{client_name}:presence-events", **common
        )
        self._pubsub: PubSub | None = None
        self._channels: dict[bytes, str] = {}  # subscribed channel -> room
        self._followed: set[str] = set()
        self._own: dict[str, dict[str, str]] = {}  # room -> user -> this process's field value
        self._queue: deque[_Out] = deque()
        self._cursors: dict[tuple[str, str], _Out] = {}  # the cursor of (room, user) waiting in the queue
        self._wanted: set[str] = set()  # rooms whose members are to be read now
        self._remote_counts: dict[str, int] = {}  # room -> others' members in its last list
        self._remote_total = 0
        self._wake = asyncio.Event()  # work for the writer
        self._followed_more = asyncio.Event()  # a room to subscribe to
        self._next_beat = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_up = False
        self._listener_up = True  # false while its connection is lost
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._writer_up and self._listener_up and not self._closed

    async def start(self) -> None:
        """Connect and start the tasks. Does not raise when Redis does not answer: they keep trying."""
        if self._tasks or self._closed:
            return
        try:
            await self._writer.ping()
        except REDIS_ERRORS as exc:
            self._error("presence_connect_failed", exc)
        else:
            self._writer_up = True
            log.info("presence_connected", redis=self._where, process=self.process_id)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="collab-presence-writer"),
            asyncio.create_task(self._listen_loop(), name="collab-presence-listener"),
        ]

    async def stop(self) -> None:
        """Leave at once: this process's members and its key are deleted (within ``timeout``),
        and their leaves published. Then close the connections."""
        self._closed = True
        self._wake.set()
        self._followed_more.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if tasks:
            try:
                async with asyncio.timeout(self.timeout), self._writer.pipeline(transaction=False) as pipe:
                    for room_id, members in self._own.items():
                        for user_id, value in members.items():
                            self._delete_if_same(pipe, members_key(self.prefix, room_id), user_id, value)
                            pipe.publish(
                                events_channel(self.prefix, room_id), self._event("left", {"user_id": user_id})
                            )
                    pipe.delete(process_key(self.prefix, self.process_id))
                    await pipe.execute()
            except (*REDIS_ERRORS, TimeoutError) as exc:
                self._error("presence_leave_failed", exc)
        self._own.clear()
        if self._pubsub is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._pubsub.aclose()
        for client in (self._listener, self._writer):
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._writer.connection_pool.disconnect()
        self._writer_up = False
        for room_id in list(self._remote_counts):
            self._count_remote(room_id, None)

    def follow(self, room_id: str) -> None:
        """Receive the room's events, and its members (the first list comes at once)."""
        self._followed.add(room_id)
        self._wanted.add(room_id)
        self._wake.set()
        self._followed_more.set()

    def unfollow(self, room_id: str) -> None:
        """Stop receiving the room's events and members; this process's members still in it leave."""
        for user_id in list(self._own.get(room_id, ())):
            self.tell(room_id, "left", {"user_id": user_id})
        self._own.pop(room_id, None)
        self._followed.discard(room_id)
        self._wanted.discard(room_id)
        self._count_remote(room_id, None)

    def tell(self, room_id: str, kind: str, payload: dict[str, Any]) -> None:
        """Something this process's members did in a room (`rooms.session.Shared`), for the
        other processes. Never blocks, never raises: queued, or counted and dropped."""
        if self._closed:
            return
        user_id = payload.get("user_id")
        try:
            if kind not in KINDS or not (isinstance(user_id, str) or (kind in ROOM_KINDS and user_id is None)):
                raise ValueError("not a presence event")
            message = self._event(kind, payload)
            member = json.dumps({**payload, "process": self.process_id}) if kind == "joined" else None
        except (TypeError, ValueError) as exc:
            metrics.PRESENCE_ERRORS.inc()
            log.warning("presence_tell_refused", room_id=room_id, kind=str(kind)[:32], error=str(exc)[:200])
            return
        user = user_id if isinstance(user_id, str) else None
        if user is not None and kind == "joined":
            self._own.setdefault(room_id, {})[user] = member or ""
        elif user is not None and kind == "left":
            member = self._own.get(room_id, {}).pop(user, None)
        elif user is not None and kind == "cursor" and (pending := self._cursors.get((room_id, user))):
            pending.message = message  # the newest wins, in the older one's place
            return
        if len(self._queue) >= self.max_queued:
            self._give_up_one()
        out = _Out(room_id, kind, user, message, member)
        if user is not None and kind == "cursor":
            self._cursors[(room_id, user)] = out
        self._queue.append(out)
        self._wake.set()

    # The writer: heartbeats, member lists, events out.

    async def _write_loop(self) -> None:
        delay = self.backoff_min
        down_since = 0.0
        while not self._closed:  # not only cancelling: a read with a timeout may swallow a cancellation
            try:
                if not self._writer_up:
                    await self._writer.ping()
                    self._writer_up, delay = True, self.backoff_min
                    log.info(
                        "presence_reconnected", redis=self._where, down_seconds=round(time.monotonic() - down_since, 3)
                    )
                    self._next_beat = 0.0  # at once: Redis may have lost everything
                now = time.monotonic()
                if now >= self._next_beat:
                    self._next_beat = now + self.timeout_seconds / 3
                    await self._heartbeat()
                elif self._wanted:
                    rooms, self._wanted = sorted(self._wanted), set()
                    await self._read_members(rooms)
                elif self._queue:
                    await self._publish()
                else:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._next_beat - now)
            except REDIS_ERRORS as exc:
                if self._writer_up:
                    down_since = time.monotonic()
                    self._writer_up = False
                    self._error("presence_connection_lost", exc)
                else:
                    metrics.PRESENCE_ERRORS.inc()
                    down_since = down_since or time.monotonic()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _heartbeat(self) -> None:
        """This process is alive, its members are these; then every followed room's members."""
        await self._writer.set(process_key(self.prefix, self.process_id), "1", px=self.expiry_ms)
        for chunk in _chunks([room_id for room_id, members in self._own.items() if members], self.batch_size):
            async with self._writer.pipeline(transaction=False) as pipe:
                for room_id in chunk:
                    members: dict[FieldT, EncodableT] = dict(self._own[room_id].items())
                    pipe.hset(members_key(self.prefix, room_id), mapping=members)
                    pipe.pexpire(members_key(self.prefix, room_id), self.expiry_ms * 3)  # gone once unwritten
                await pipe.execute()
        self._wanted.clear()
        await self._read_members(sorted(self._followed))

    async def _read_members(self, rooms: list[str]) -> None:
        for chunk in _chunks(rooms, self.batch_size):
            async with self._writer.pipeline(transaction=False) as pipe:
                for room_id in chunk:
                    pipe.hgetall(members_key(self.prefix, room_id))
                hashes: list[dict[bytes, bytes]] = await pipe.execute()
            found = {
                room_id: self._parse_members(room_id, fields) for room_id, fields in zip(chunk, hashes, strict=True)
            }
            processes = sorted({info["process"] for members, _ in found.values() for _, info in members.values()})
            values = await self._writer.mget([process_key(self.prefix, p) for p in processes]) if processes else []
            alive = {process for process, value in zip(processes, values, strict=True) if value is not None}
            alive.add(self.process_id)
            async with self._writer.pipeline(transaction=False) as pipe:
                for room_id, (members, junk) in found.items():
                    key = members_key(self.prefix, room_id)
                    own = self._own.get(room_id, {})
                    for user_id, (raw, info) in members.items():
                        # Dead, or this process's member that left (a leave whose write was lost).
                        if info["process"] not in alive or (info["process"] == self.process_id and user_id not in own):
                            self._delete_if_same(pipe, key, user_id, raw)
                    for field, raw in junk:
                        self._delete_if_same(pipe, key, field, raw)
                if len(pipe):
                    await pipe.execute()
            for room_id, (members, _) in found.items():
                if room_id not in self._followed:
                    continue  # unfollowed while reading
                others = {
                    user_id: info
                    for user_id, (_, info) in members.items()
                    if info["process"] in alive and info["process"] != self.process_id
                }
                self._count_remote(room_id, len(others))
                self._call(self.on_members, room_id, others)

    def _parse_members(
        self, room_id: str, fields: dict[bytes, bytes]
    ) -> tuple[dict[str, tuple[bytes, dict[str, Any]]], list[tuple[bytes, bytes]]]:
        """The hash's members (user_id -> (field value, info)), and the fields that are not
        members (to be deleted: they never will be)."""
        members: dict[str, tuple[bytes, dict[str, Any]]] = {}
        junk: list[tuple[bytes, bytes]] = []
        for field, raw in fields.items():
            try:
                user_id = field.decode()
                info = json.loads(raw)
                if not (isinstance(info, dict) and info.get("user_id") == user_id):
                    raise ValueError("not a member of this field's user_id")
                if not isinstance(info.get("process"), str):
                    raise ValueError("no process")
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                metrics.PRESENCE_ERRORS.inc()
                log.warning("presence_member_skipped", room_id=room_id, reason=str(exc)[:200])
                junk.append((field, raw))
                continue
            members[user_id] = (raw, info)
        return members, junk

    async def _publish(self) -> None:
        """The oldest queued events, in one round trip (lost if it fails: the state repairs)."""
        batch: list[_Out] = []
        while self._queue and len(batch) < self.batch_size:
            batch.append(self._take())
        async with self._writer.pipeline(transaction=False) as pipe:
            for out in batch:
                key = members_key(self.prefix, out.room_id)
                if out.user_id is not None and out.member is not None:
                    if out.kind == "joined":
                        pipe.hset(key, out.user_id, out.member)
                    else:
                        self._delete_if_same(pipe, key, out.user_id, out.member)
                pipe.publish(events_channel(self.prefix, out.room_id), out.message)
            await pipe.execute()
        for out in batch:
            metrics.PRESENCE_EVENTS.labels("out", out.kind).inc()

    def _take(self, index: int = 0) -> _Out:
        out = self._queue[index]
        del self._queue[index]
        if out.kind == "cursor" and out.user_id is not None and self._cursors.get((out.room_id, out.user_id)) is out:
            del self._cursors[(out.room_id, out.user_id)]
        return out

    def _give_up_one(self) -> None:
        """Make room in a full queue: the oldest cursor, else the oldest event."""
        metrics.PRESENCE_ERRORS.inc()
        index = next((index for index, out in enumerate(self._queue) if out.kind == "cursor"), 0)
        self._take(index)

    # The listener: events in.

    async def _listen_loop(self) -> None:
        delay = self.backoff_min
        while not self._closed:  # not only cancelling: a read with a timeout may swallow a cancellation
            try:
                if not await self._subscribe():
                    self._followed_more.clear()
                    await self._followed_more.wait()  # nothing followed: nothing to listen to
                    continue
                if not self._listener_up:
                    self._listener_up = True
                    delay = self.backoff_min
                    log.info("presence_events_reconnected", redis=self._where)
                    self._wanted |= self._followed  # events may have been missed
                    self._wake.set()
                pubsub = self._pubsub
                assert pubsub is not None
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_seconds)
                if message is not None:
                    self._receive(message)
            except REDIS_ERRORS as exc:
                if self._listener_up:
                    self._listener_up = False
                    self._error("presence_events_connection_lost", exc)
                else:
                    metrics.PRESENCE_ERRORS.inc()
                pubsub, self._pubsub = self._pubsub, None
                self._channels = {}
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await pubsub.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _subscribe(self) -> bool:
        """Subscribe to the followed rooms' channels, and only those. False when none is followed."""
        wanted = {events_channel(self.prefix, room_id).encode(): room_id for room_id in self._followed}
        if self._pubsub is None:
            if not wanted:
                return False
            self._pubsub = self._listener.pubsub()
        gone = [channel for channel in self._channels if channel not in wanted]
        new = [channel for channel in wanted if channel not in self._channels]
        if new:
            await self._pubsub.subscribe(*new)
        if gone:
            await self._pubsub.unsubscribe(*gone)
        self._channels = wanted
        return bool(wanted)

    def _receive(self, message: dict[str, Any]) -> None:
        room_id = self._channels.get(message.get("channel") or b"")
        if message.get("type") != "message" or room_id is None or room_id not in self._followed:
            return
        try:
            event = json.loads(message["data"])
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            kind, process, payload = event.get("kind"), event.get("process"), event.get("payload")
            if kind not in KINDS or not isinstance(process, str) or not isinstance(payload, dict):
                raise ValueError("not a presence event")
        except (ValueError, TypeError) as exc:
            metrics.PRESENCE_ERRORS.inc()
            log.warning("presence_event_skipped", room_id=room_id, reason=str(exc)[:200])
            return
        if process == self.process_id:
            return  # this process's own
        metrics.PRESENCE_EVENTS.labels("in", kind).inc()
        self._call(self.on_event, room_id, kind, payload)

    # Helpers.

    def _event(self, kind: str, payload: dict[str, Any]) -> str:
        return json.dumps({"kind": kind, "process": self.process_id, "payload": payload}, separators=(",", ":"))

    def _delete_if_same(self, pipe: Pipeline, key: str, field: str | bytes, value: str | bytes) -> None:
        pipe.eval(_DELETE_IF_SAME, 1, key, field, value)

    def _count_remote(self, room_id: str, count: int | None) -> None:
        self._remote_total += (count or 0) - self._remote_counts.pop(room_id, 0)
        if count is not None:
            self._remote_counts[room_id] = count
        metrics.REMOTE_MEMBERS.set(self._remote_total)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("presence_callback_failed", callback=getattr(callback, "__name__", "?"))

    def _error(self, event: str, exc: BaseException) -> None:
        metrics.PRESENCE_ERRORS.inc()
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        log.warning(event, redis=self._where, error=text)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
