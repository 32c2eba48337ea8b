"""Several processes, one room: this process's rooms kept in step with the others'.

With ``STORE=postgres`` and ``REDIS_URL``, any process serves any room. The database decides the
order of each room (its commit is a compare-and-set on the room's head; a commit that lost the
race is made again over the winner's updates, see `rooms.committer`). This module carries the
committed updates between processes and makes sure none is missed:

* after every commit, its updates go onto the room's Redis Stream, keyed by version
  (`UpdateStreams.publish`, in commit order, by one publisher task);
* every loaded room is followed: updates other processes committed are fed into its `Room`
  (`Room.receive_committed`), which shows them to its clients in version order;
* Redis is never the only copy. A gap in the versions a stream delivers, a room that could not
  take updates while its own commit was in flight, a reconnection to Redis (which may have
  restarted empty or been flushed) and, every ``cluster_head_check_seconds``, the heads the
  database holds for the loaded rooms: each makes the room read what it lacks from the
  database (`Store.history`). An empty stream never means "up to date".

A room further behind than its history holds is reset (its clients reconnect, and it is loaded
again from the database).

Members, cursors and the language travel through `SharedPresence`: each room's members on other
processes are remote members of its `Room` (`rooms.room_remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from observability import metrics
from rooms.access import Access, admit
from rooms.errors import RoomError, StorageUnavailable
from rooms.protocol import Hello
from rooms.room import Room, RoomId, UncommittedUpdates, UpdatesMissing
from rooms.session import Shared
from rooms.shared_presence import SharedPresence
from rooms.store import Record, RoomWrite, Store
from rooms.streams import UpdateStreams

if TYPE_CHECKING:
    from rooms.registry import RoomRegistry

log = structlog.get_logger("collab.cluster")

# Most commits waiting to be appended to the streams: beyond, the oldest are given up (the
# followers read those updates from the database when they see the gap).
MAX_QUEUED_PUBLISHES = 10_000
CATCH_UP_PAGE = 1_000


class Cluster:
    """Follows and feeds the update streams of this process's rooms (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        streams: UpdateStreams,
        presence: SharedPresence,
        rooms: dict[RoomId, Room],
        *,
        carry_out: Callable[[Room], None],
        reset: Callable[[Room], None],
        is_idle: Callable[[Room], bool],
        head_check_seconds: float,
        catch_up_limit: int,
        reads_at_once: int = 2,
    ) -> None:
        self.store = store
        self.streams = streams
        self.presence = presence
        self.rooms = rooms
        self.carry_out = carry_out
        self.reset = reset
        self.is_idle = is_idle  # nothing of the room waits for a commit or is being committed
        self.head_check_seconds = head_check_seconds
        self.catch_up_limit = catch_up_limit
        self._publishes: deque[tuple[RoomId, Sequence[Record]]] = deque(maxlen=MAX_QUEUED_PUBLISHES)
        self._publish_wanted = asyncio.Event()
        self._behind: set[RoomId] = set()  # rooms that refused updates while committing
        self._catching_up: dict[RoomId, asyncio.Task[None]] = {}
        self._check_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # Reads of the database for catch-ups and access states, at most this many at once:
        # commits share the pool with them and must not wait behind a burst of them.
        self._reads = asyncio.Semaphore(max(1, reads_at_once))
        self._refresh_wanted: set[RoomId] = set()  # rooms whose access state to read again
        self._digests: dict[RoomId, tuple[tuple[str, str, str], str]] = {}  # `_digest`

    @classmethod
    def joining(cls, registry: RoomRegistry) -> Cluster:
        """The cluster of a registry whose settings name Redis: hooked to its rooms' loads,
        unloads and commits."""
        settings = registry.settings
        committer = registry.committer

        def is_idle(room: Room) -> bool:
            return room.all_durable and not room.unsynced and not committer.pending(room.room_id)

        cluster: Cluster

        def on_records(room_id: str, records: list[Record]) -> None:
            cluster.on_records(room_id, records)

        def on_reconnect() -> None:
            cluster.on_reconnect()

        def on_event(room_id: str, kind: str, payload: dict[str, Any]) -> None:
            cluster.on_presence_event(room_id, kind, payload)

        def on_members(room_id: str, members: dict[str, dict[str, Any]]) -> None:
            cluster.on_members(room_id, members)

        prefix = settings.redis_key_prefix
        streams = UpdateStreams(
            settings.redis_url,
            max_length=settings.stream_max_length,
            prefix=prefix,
            on_records=on_records,
            on_reconnect=on_reconnect,
        )
        presence = SharedPresence(
            settings.redis_url,
            prefix=prefix,
            process_id=secrets.token_hex(8),
            timeout_seconds=settings.presence_timeout_seconds,
            on_event=on_event,
            on_members=on_members,
        )
        cluster = cls(
            registry.store,
            streams,
            presence,
            registry.rooms,
            carry_out=registry._carry_out,
            reset=registry._fail_room,
            is_idle=is_idle,
            head_check_seconds=settings.cluster_head_check_seconds,
            catch_up_limit=settings.history_limit,
            reads_at_once=max(1, settings.database_pool_size // 4),
        )
        committer.after_commit = cluster.after_commit
        registry.loaded.on_loaded = cluster.attach
        registry.loaded.on_unloaded = cluster.detach
        return cluster

    async def start(self) -> None:
        await self.streams.start()
        await self.presence.start()
        self._tasks = [
            asyncio.create_task(self._publisher(), name="collab-cluster-publisher"),
            asyncio.create_task(self._head_checks(), name="collab-cluster-heads"),
        ]

    async def stop(self) -> None:
        """Append what is queued (bounded by the streams' own timeouts), then stop."""
        await self._drain_publishes()
        tasks = [*self._tasks, *self._catching_up.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.presence.stop()
        await self.streams.stop()

    # Rooms coming and going

    def attach(self, room: Room) -> None:
        """A room was loaded: it is shared, and followed from its head."""
        room.share()
        room.share_presence()
        self.streams.follow(room.room_id, room.document.version)
        self.presence.follow(room.room_id)

    def detach(self, room_id: RoomId) -> None:
        """A room was unloaded."""
        self.streams.unfollow(room_id)
        self.presence.unfollow(room_id)
        self._digests.pop(room_id, None)
        self._behind.discard(room_id)
        task = self._catching_up.pop(room_id, None)
        if task is not None:
            task.cancel()

    # Presence

    def tell(self, room: Room, shared: Shared) -> None:
        """What a room's members did, for the other processes."""
        self.presence.tell(room.room_id, shared.kind, shared.payload)

    def on_presence_event(self, room_id: str, kind: str, payload: dict[str, Any]) -> None:
        room = self.rooms.get(RoomId(room_id))
        if room is None or room.failing:
            return
        try:
            match kind:
                case "joined":
                    room.remote_joined(payload)
                case "left":
                    room.remote_left(payload.get("user_id"))
                case "cursor":
                    get = payload.get
                    room.remote_cursor(get("user_id"), get("anchor"), get("head"), get("version"))
                case "language":
                    room.remote_language(payload.get("language"), payload.get("user_id"))
                case "access":
                    self._refresh_soon(room.room_id)
                    return
        except RoomError as error:
            log.warning("presence_event_refused", room_id=room_id, kind=kind, error=str(error))
            return
        self.carry_out(room)

    def on_members(self, room_id: str, members: dict[str, dict[str, Any]]) -> None:
        room = self.rooms.get(RoomId(room_id))
        if room is None or room.failing:
            return
        room.sync_remote(members)
        self.carry_out(room)

    # Out: commits onto the streams

    def after_commit(self, writes: Sequence[RoomWrite]) -> None:
        """Called with every commit that returned: its updates are appended, in commit order;
        rooms that refused others' updates meanwhile now read them."""
        for write in writes:
            if write.records:
                if len(self._publishes) == MAX_QUEUED_PUBLISHES:  # Redis far behind: the oldest go
                    metrics.STREAM_APPENDS.labels("error").inc(len(self._publishes[0][1]))
                self._publishes.append((write.room_id, write.records))
                self._publish_wanted.set()
            if write.access is not None:  # the others read it now, not at their next check
                self.presence.tell(write.room_id, "access", {})
            room = self.rooms.get(RoomId(write.room_id))
            if room is not None and write.records:  # its versions are here for good: cursors told at them
                room.cursors_due()
        behind, self._behind = self._behind, set()
        for room_id in behind:
            self.catch_up(room_id)

    async def _publisher(self) -> None:
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            await self._drain_publishes()

    async def _drain_publishes(self) -> None:
        while self._publishes:
            room_id, records = self._publishes.popleft()
            await self.streams.publish(room_id, records)  # never raises; a gap is filled by readers

    # In: the streams, the database

    def on_records(self, room_id: str, records: list[Record]) -> None:
        """Updates from a room's stream, in version order."""
        room = self.rooms.get(RoomId(room_id))
        if room is None or room.failing:
            return
        known = room.committed_version
        fresh = [record for record in records if record.version > known]
        if not fresh:  # it has them (its own, or read by a rebase or a catch-up)
            room.cursors_due()
            self.carry_out(room)
            return
        try:
            room.receive_committed(fresh)
        except UncommittedUpdates:
            self._behind.add(room.room_id)  # its commit reads them, or `after_commit` does
            return
        except UpdatesMissing:
            self.catch_up(room.room_id)
            return
        except Exception:  # updates that do not apply: the database is the authority
            log.exception("stream_update_refused", room_id=room_id)
            self.catch_up(room.room_id)
            return
        room.cursors_due()
        self.carry_out(room)

    def on_reconnect(self) -> None:
        """Redis came back, maybe empty: every room checks the database now."""
        self._check_now.set()

    async def _head_checks(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.head_check_seconds):
                    await self._check_now.wait()
            self._check_now.clear()
            try:
                await self.check_heads()
            except Exception:
                log.warning("head_check_failed", exc_info=True)

    async def check_heads(self) -> None:
        """Compare every loaded room with the head and access state the database holds: those
        behind catch up, those whose access changed take it."""
        room_ids = list(self.rooms)
        if not room_ids:
            return
        async with self._reads:
            heads = await self.store.head(room_ids)
        for room_id, head in heads.items():
            room = self.rooms.get(RoomId(room_id))
            if room is not None and head > room.committed_version:
                self.catch_up(room.room_id)
        async with self._reads:
            digests = await self.store.access_digests(room_ids)
        changed = [room_id for room_id, digest in digests.items() if digest != self._digest(room_id)]
        if changed:
            await self.refresh_access(changed)

    def _digest(self, room_id: RoomId) -> str:
        """The digest of what the room last stored or read (remembered while it is the same)."""
        room = self.rooms.get(room_id)
        if room is None:
            return ""
        state = (room.access_stored, room.notes_stored, room.language)
        known = self._digests.get(room_id)
        if known is None or any(a is not b for a, b in zip(known[0], state, strict=True)):
            known = self._digests[room_id] = (state, self.store.digest_of(*state))
        return known[1]

    async def stored_access(self, room_id: RoomId) -> tuple[str, str, str] | None:
        """The room's access state, notes and language as stored now (None when they cannot be
        read: this process's own view decides then)."""
        try:
            async with self._reads:
                return (await self.store.accesses([room_id])).get(room_id)
        except Exception:
            log.warning("stored_access_unreadable", room_id=room_id, exc_info=True)
            return None

    async def admitting(
        self,
        room: Room,
        hello: Hello,
        stored: tuple[str, str, str] | None,
        reopen: Callable[[], Awaitable[Room]],
        unused: Callable[[Room], None],
    ) -> Room:
        """The room to admit ``hello`` to. Its link is checked against the access state
        ``stored`` now too (this process may not have heard of a revocation yet). A client shown
        a version this process does not have yet (it is a little behind) waits until it has read
        up to it: welcomed at an older version, the client would drop its unconfirmed work.
        `StorageUnavailable` (reconnect in a moment) if that takes too long; ``unused`` is told
        of a room left without the member it was opened for."""
        try:
            if stored is not None:
                try:
                    admit(Access.from_json(stored[0]), hello.token, open_rooms=room.settings.open_rooms)
                except ValueError:
                    log.error("stored_access_unreadable", room_id=room.room_id)
            room.admission(hello.token)  # a hello the room refuses waits for nothing
            wanted = hello.version
            if wanted is None or wanted <= room.document.version or hello.epoch not in (None, room.document.epoch):
                return room
            async with self._reads:
                head = (await self.store.head([room.room_id])).get(room.room_id, 0)
            if head < wanted:
                return room  # a version the database never had: welcomed with the text as it is
            deadline, pause = time.monotonic() + max(1.0, 2 * self.head_check_seconds), 0.02
            while room.document.version < wanted and time.monotonic() < deadline:
                self.catch_up(room.room_id)  # now, or once its own commit is done
                task = self._catching_up.get(room.room_id)
                if task is not None:
                    await asyncio.wait([task], timeout=0.5)
                else:
                    await asyncio.sleep(pause)  # its own commit goes first
                    pause = min(0.2, pause * 2)
                room = await reopen()  # the same room, or the one loaded after a reset
            if room.document.version < wanted:
                raise StorageUnavailable()
            return room
        except BaseException:
            unused(room)
            raise

    def take_access(self, room: Room, stored: tuple[str, str, str]) -> None:
        """Make what is stored the room's access state, notes and language, if it is news to it
        (not while the room has its own change of them to store or being stored)."""
        access, notes, language = stored
        if room.failing:
            return
        try:
            if (access, notes) != (room.access_stored, room.notes_stored):
                room.refresh_access(access, notes)
            own = room.language_unstored or room.changes_durable < room.access_written
            if language != room.language and not own:
                room.remote_language(language, None)
        except (ValueError, RoomError):
            log.error("stored_access_unreadable", room_id=room.room_id)
        self.carry_out(room)

    async def refresh_access(self, room_ids: list[RoomId]) -> None:
        """Take the access state the database holds for these rooms (changed elsewhere), unless
        a room stored or changed its own meanwhile (what was read may be older than that)."""
        before = {room_id: _marks(room) for room_id in room_ids if (room := self.rooms.get(room_id))}
        async with self._reads:
            stored = await self.store.accesses(list(before))
        for room_id, state in stored.items():
            room = self.rooms.get(RoomId(room_id))
            marks = before.get(RoomId(room_id))
            if room is not None and marks is not None and _same(marks, _marks(room)):
                self.take_access(room, state)

    def _refresh_soon(self, room_id: RoomId) -> None:
        """Read the room's access state again soon: notices that come meanwhile share the read."""
        first = not self._refresh_wanted
        self._refresh_wanted.add(room_id)
        if first:
            task = asyncio.create_task(self._refresh_wanted_rooms(), name="collab-access-refresh")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(_log_failure)

    async def _refresh_wanted_rooms(self) -> None:
        await asyncio.sleep(0)  # notices of the same loop turn join this read
        wanted, self._refresh_wanted = list(self._refresh_wanted), set()
        await self.refresh_access(wanted)

    def catch_up(self, room_id: RoomId) -> None:
        """Read what the room lacks from the database (once at a time per room)."""
        if room_id in self._catching_up or room_id not in self.rooms:
            return
        task = asyncio.create_task(self._catch_up(room_id), name="collab-catch-up")  # no room id: logs tag it
        self._catching_up[room_id] = task
        task.add_done_callback(lambda _: self._catching_up.pop(room_id, None))

    async def _catch_up(self, room_id: RoomId) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        if not self.is_idle(room):
            self._behind.add(room_id)  # its commit will read them, or after it, this
            return
        records: list[Record] = []
        after = room.document.version
        try:
            while True:
                async with self._reads:
                    page = await self.store.history(room_id, after, CATCH_UP_PAGE)
                records.extend(page)
                if len(page) < CATCH_UP_PAGE or len(records) > self.catch_up_limit:
                    break
                after = page[-1].version
        except Exception:
            log.warning("catch_up_failed", room_id=room_id, exc_info=True)
            return  # the next head check tries again
        if self.rooms.get(room_id) is not room or room.failing:
            return
        if not self.is_idle(room):
            self._behind.add(room_id)
            return
        if not records:
            return
        metrics.CATCH_UPS.inc()
        if len(records) > self.catch_up_limit or records[0].version > room.document.version + 1:
            # Further behind than its history, or the database no longer keeps the versions in
            # between: loaded again from the database.
            log.warning("room_too_far_behind", room_id=room_id, version=room.document.version, head=records[-1].version)
            self.reset(room)
            return
        try:
            room.receive_committed(records)
        except (UncommittedUpdates, UpdatesMissing):
            self._behind.add(room_id)
            return
        except Exception:
            log.exception("catch_up_refused", room_id=room_id)
            self.reset(room)
            return
        log.info("room_caught_up", room_id=room_id, updates=len(records), version=room.document.version)
        room.cursors_due()
        self.carry_out(room)


def _marks(room: Room) -> tuple[object, ...]:
    """What changes when a room stores or changes its access state, notes or language."""
    return (room.access_stored, room.notes_stored, room.language, room.access_written, room)


def _same(before: tuple[object, ...], after: tuple[object, ...]) -> bool:
    return all(a is b or a == b for a, b in zip(before, after, strict=True))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster_task_failed", task=task.get_name(), exc_info=task.exception())
