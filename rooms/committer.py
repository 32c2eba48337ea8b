"""The group committer: one `Store.commit` at a time, of everything every room changed since the
last one.

Rooms say they have changes (`Committer.want`); the committer task takes each room's write
(`Room.take_write`) and commits them all together, so under load one commit carries a whole
event-loop turn of pushes, or more. When the commit returns, each room hears how many of its
changes are durable (``on_committed``); when it fails, each room it carried is reset
(``on_failed``): its clients reconnect and resend, and the store has what was shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from observability import metrics
from rooms.room import Room, RoomId
from rooms.store import RoomWrite, Store

log = structlog.get_logger("collab.rooms")


class Committer:
    """Commits rooms' changes in groups (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        is_loaded: Callable[[Room], bool],
        on_committed: Callable[[Room, int], None],
        on_failed: Callable[[Room], None],
    ) -> None:
        self.store = store
        self.is_loaded = is_loaded
        self.on_committed = on_committed
        self.on_failed = on_failed
        self.store_ok = True  # False after a failed commit, until one succeeds
        self._dirty: dict[RoomId, Room] = {}
        self._wanted: asyncio.Future[None] | None = None  # what the task sleeps on when idle
        self._task: asyncio.Task[None] | None = None
        # The rooms of the commit in progress, and a future resolved when it ends.
        self.committing: set[RoomId] = set()
        self._done: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[bool]] = []  # `wait_committed` calls
        self._cycle_waiters: list[asyncio.Future[None]] = []  # woken after every commit attempt

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
                await self.store.commit(writes)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store_commit_failed", rooms=len(writes), updates=sum(len(w.records) for w in writes))
                metrics.STORE_ERRORS.inc()
                self.store_ok = False
                for room in rooms:
                    self._fail(room)
                self._wake_cycle_waiters()
                continue
            finally:
                self.committing = set()
                if not self._done.done():
                    self._done.set_result(None)
            metrics.STORE_COMMIT.observe(time.perf_counter() - started)
            metrics.STORE_COMMIT_UPDATES.observe(sum(len(write.records) for write in writes))
            for write in writes:  # a run is in one commit only: counted once, once stored
                for run in write.runs:
                    metrics.RUNS.labels(run.language, run.kind, run.status).inc()
            self.store_ok = True
            for room, (_, count) in zip(rooms, taken, strict=True):
                try:
                    self.on_committed(room, count)
                except Exception:  # a bug: the committer goes on for every other room
                    log.exception("room_release_failed", room_id=room.room_id)
            self._wake_cycle_waiters()

    def _fail(self, room: Room) -> None:
        try:
            self.on_failed(room)
        except Exception:
            log.exception("room_reset_failed", room_id=room.room_id)
