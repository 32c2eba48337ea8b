"""The group committer: one `Store.commit` at a time, of everything every room changed since the
last one.

Rooms say they have changes (`Committer.want`); the committer task takes each room's write
(`Room.take_write`) and commits them all together, so under load one commit carries a whole
event-loop turn of pushes, or more. When the commit returns, each room hears how many of its
changes are durable (``on_committed``); when it fails, each room it carried is reset
(``on_failed``): its clients reconnect and resend, and the store has what was shown.

A room shared with other processes (`Room.share`) may lose the race for its next version: the
store refuses the commit (`StoreConflict`, nothing of it written). The committer then reads what
the others committed, has the room make its own updates again over them
(`Room.rebase_over`), and commits again, at most ``max_retries`` times before the room is
reset. ``after_commit`` hears of every commit that returned (the update streams carry it on).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from observability import metrics
from rooms.room import Room, RoomId
from rooms.store import Record, RoomWrite, StaleWrite, Store, StoreConflict

log = structlog.get_logger("collab.rooms")

# How long after a failed commit readiness waits for a commit to succeed before it lets clients
# in again to try one.
STORE_RETRY_SECONDS = 10.0


class Committer:
    """Commits rooms' changes in groups (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        is_loaded: Callable[[Room], bool],
        on_committed: Callable[[Room, int], None],
        on_failed: Callable[[Room], None],
        on_changed: Callable[[Room], None] = lambda room: None,
        after_commit: Callable[[Sequence[RoomWrite]], None] = lambda writes: None,
        max_retries: int = 8,
        catch_up_limit: int = 10_000,
    ) -> None:
        self.store = store
        self.is_loaded = is_loaded
        self.on_committed = on_committed
        self.on_failed = on_failed
        self.on_changed = on_changed  # a room has actions to carry out (after a rebase)
        self.after_commit = after_commit
        self.max_retries = max_retries
        self.catch_up_limit = catch_up_limit  # most updates read to make a lost commit again
        self.last_ok = True  # whether the last commit succeeded
        self.failed_at = float("-inf")  # time.monotonic() of the last failed commit
        self._dirty: dict[RoomId, Room] = {}
        self._wanted: asyncio.Future[None] | None = None  # what the task sleeps on when idle
        self._task: asyncio.Task[None] | None = None
        # The rooms of the commit in progress, and a future resolved when it ends.
        self.committing: set[RoomId] = set()
        self._done: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[bool]] = []  # `wait_committed` calls
        self._cycle_waiters: list[asyncio.Future[None]] = []  # woken after every commit attempt

    @property
    def store_ok(self) -> bool:
        """False after a failed commit, until one succeeds or `STORE_RETRY_SECONDS` passed: a
        process that no load balancer sends clients to would never commit again after an
        outage (readiness also needs the store's own check to pass)."""
        return self.last_ok or time.monotonic() - self.failed_at >= STORE_RETRY_SECONDS

    def want(self, room: Room) -> None:
        """The room has changes to commit (started on first use)."""
        if room.failing or not self.is_loaded(room):
            return  # a room being reset: its successor is loaded from the store
        self._dirty[room.room_id] = room
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="collab-committer")
        wanted = self._wanted
        if wanted is not None:
            self._wanted = None
            if not wanted.done():
                wanted.set_result(None)

    def pending(self, room_id: RoomId) -> bool:
        """Whether the room has changes waiting for a commit, or in the one in progress."""
        return room_id in self._dirty or room_id in self.committing

    @property
    def idle(self) -> bool:
        """Nothing waits for a commit and none is in progress."""
        return not self._dirty and not self.committing

    def forget(self, room: Room) -> None:
        if self._dirty.get(room.room_id) is room:
            del self._dirty[room.room_id]

    async def wait_for(self, room_id: RoomId) -> None:
        """Return once no commit in progress carries the room (a reset room's last commit:
        loading it again must read what it wrote)."""
        while room_id in self.committing and self._done is not None:
            await asyncio.shield(self._done)

    async def wait_committed(self, within: float | None = None) -> bool:
        """Wait until every change so far is committed; False if ``within`` seconds ran out or
        the committer is not running."""
        if self.idle:
            return True
        if self._task is None or self._task.done():
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                return bool(await waiter)
        except TimeoutError:
            return False

    async def wait_durable(self, room: Room, count: int, within: float) -> bool:
        """Wait until the room's first ``count`` changes are committed; False when its commit
        failed (the room is reset), the committer stopped, or ``within`` seconds ran out."""
        try:
            async with asyncio.timeout(within):
                while room.changes_durable < count:
                    if room.failing or not self.is_loaded(room) or self._task is None or self._task.done():
                        return False
                    waiter = asyncio.get_running_loop().create_future()
                    self._cycle_waiters.append(waiter)
                    await waiter
        except TimeoutError:
            return False
        return True

    def _wake_cycle_waiters(self) -> None:
        waiters, self._cycle_waiters = self._cycle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_idle_waiters(self, committed: bool) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(committed)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._wake_idle_waiters(self.idle)
        self._wake_cycle_waiters()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._dirty:
                self._wake_idle_waiters(True)
                self._wanted = loop.create_future()
                await self._wanted
            candidates = [room for room in self._dirty.values() if self.is_loaded(room)]
            self._dirty.clear()
            rooms: list[Room] = []
            taken: list[tuple[RoomWrite, int]] = []
            for room in candidates:
                try:
                    taken.append(room.take_write())
                    rooms.append(room)
                except Exception:  # a bug: this room is reset, the others are committed
                    log.exception("room_write_failed", room_id=room.room_id)
                    self._fail(room)
            writes = [write for write, _ in taken]
            if not writes:
                continue
            self.committing = {room.room_id for room in rooms}
            self._done = loop.create_future()
            started = time.perf_counter()
            try:
                taken = await self._commit(rooms, taken)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store_commit_failed", rooms=len(writes), updates=sum(len(w.records) for w in writes))
                metrics.STORE_ERRORS.inc()
                self.last_ok = False
                self.failed_at = time.monotonic()
                for room in rooms:
                    self._fail(room)
                self._wake_cycle_waiters()
                continue
            finally:
                self.committing = set()
                if not self._done.done():
                    self._done.set_result(None)
            writes = [write for write, _ in taken]
            metrics.STORE_COMMIT.observe(time.perf_counter() - started)
            metrics.STORE_COMMIT_UPDATES.observe(sum(len(write.records) for write in writes))
            for write in writes:  # a run is in one commit only: counted once, once stored
                for run in write.runs:
                    metrics.RUNS.labels(run.language, run.kind, run.status).inc()
            self.last_ok = True
            try:
                self.after_commit(writes)
            except Exception:
                log.exception("after_commit_failed")
            for room, (write, count) in zip(rooms, taken, strict=True):
                try:
                    room.settle(write.head)
                    self.on_committed(room, count)
                except Exception:  # a bug: the committer goes on for every other room
                    log.exception("room_release_failed", room_id=room.room_id)
            self._wake_cycle_waiters()

    async def _commit(self, rooms: list[Room], taken: list[tuple[RoomWrite, int]]) -> list[tuple[RoomWrite, int]]:
        """Commit the writes (none of a refused commit is written, so it is tried again whole).
        A shared room whose commit lost the race is made again over what the others committed,
        at most ``max_retries`` times; a room beyond that, or whose write is stale, is reset
        and taken out (``rooms`` and ``taken`` lose it). The writes committed, with their counts."""
        attempts: dict[RoomId, int] = {}
        while True:
            try:
                await self.store.commit([write for write, _ in taken])
                return taken
            except StaleWrite as stale:
                # Another process made the room (it is loaded again: its clients reconnect to
                # what is stored), or changed its access state meanwhile (both changes are kept).
                index = next((i for i, room in enumerate(rooms) if room.room_id == stale.room_id), None)
                if index is None:
                    raise
                metrics.COMMIT_CONFLICTS.inc()
                room = rooms[index]
                attempts[room.room_id] = attempts.get(room.room_id, 0) + 1
                retry = not stale.epoch and attempts[room.room_id] <= self.max_retries
                if retry and await self._merge_access(room, taken, index):
                    continue
                if stale.epoch:  # two processes opened a new room at once: this one loads the other's
                    log.info("room_made_elsewhere", room_id=stale.room_id)
                else:
                    log.warning("stale_write", room_id=stale.room_id)
            except StoreConflict as conflict:
                index = next((i for i, room in enumerate(rooms) if room.room_id == conflict.room_id), None)
                if index is None or rooms[index].pending is None:
                    raise
                metrics.COMMIT_CONFLICTS.inc()
                room = rooms[index]
                attempts[room.room_id] = attempts.get(room.room_id, 0) + 1
                if attempts[room.room_id] <= self.max_retries and await self._make_again(
                    room, taken, index, conflict.got - 1
                ):
                    continue
                log.warning("commit_not_made_again", room_id=room.room_id, attempts=attempts[room.room_id])
            self._fail(rooms.pop(index))
            del taken[index]
            if not taken:
                return taken

    async def _merge_access(self, room: Room, taken: list[tuple[RoomWrite, int]], index: int) -> bool:
        """The room's access state and notes changed in the store since the write read them:
        both changes are kept in the write, now over what is stored (`Room.merge_access`)."""
        try:
            stored = (await self.store.accesses([room.room_id])).get(room.room_id, ("", ""))[:2]
            if room.failing or not self.is_loaded(room):
                return False
            write, count = taken[index]
            assert write.access_base is not None  # only a checked write is stale
            access, notes = room.merge_access(write.access_base, stored)
        except Exception:  # only this room is reset (what is stored cannot be read, ...)
            log.warning("access_not_merged", room_id=room.room_id, exc_info=True)
            return False
        taken[index] = (replace(write, access=access, notes=notes, access_base=stored), count)
        self.on_changed(room)
        return True

    async def _make_again(self, room: Room, taken: list[tuple[RoomWrite, int]], index: int, committed: int) -> bool:
        """Make the room's updates after ``committed`` again over what the store holds after it,
        and put its new write in ``taken[index]``; False when the room must be reset instead
        (reset meanwhile, too far behind, or what the store holds does not follow)."""
        try:
            records = await self._committed_after(room, committed)
            if room.failing or not self.is_loaded(room):
                return False
            room.rebase_over(committed, records)
        except Exception:  # only this room is reset (what the store holds does not apply, ...)
            log.warning("commit_not_made_again", room_id=room.room_id, exc_info=True)
            return False
        log.info("commit_rebased", room_id=room.room_id, over=len(records))
        write, count = room.take_write()
        old = taken[index][0]
        # The lost write's runs and access state were taken from the room: they go with it.
        taken[index] = (
            replace(
                write,
                runs=(*old.runs, *write.runs),
                access=write.access if write.access is not None else old.access,
                access_base=old.access_base if old.access is not None else write.access_base,
                language_changed=old.language_changed or write.language_changed,
            ),
            count,
        )
        self.on_changed(room)
        return True

    async def _committed_after(self, room: Room, version: int) -> list[Record]:
        """Every update the store holds after ``version``, oldest first (`ValueError` beyond
        ``catch_up_limit``: the room is reset instead)."""
        records: list[Record] = []
        while True:
            page = await self.store.history(room.room_id, version, 1000)
            records.extend(page)
            if len(page) < 1000:
                return records
            if len(records) > self.catch_up_limit:
                raise ValueError(f"more than {self.catch_up_limit} updates to catch up")
            version = page[-1].version

    def _fail(self, room: Room) -> None:
        try:
            self.on_failed(room)
        except Exception:
            log.exception("room_reset_failed", room_id=room.room_id)
