"""Which rooms are in memory: loading them from the store on first use, unloading them when
they are left empty.

A room is loaded on first use (`LoadedRooms.open`) and unloaded ``room_grace_seconds`` after
its last client left (`schedule_eviction`), unless someone comes back first, and never before
all its changes are committed. At most ``max_loaded_rooms`` are in memory: a new one unloads
empty, committed rooms first, and is refused (`ServerBusy`) when none can go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from observability import metrics
from rooms.access import Access
from rooms.addresses import Address
from rooms.committer import Committer
from rooms.document import ClientId, Document, Update
from rooms.errors import Forbidden, NoOpenRooms, ServerBusy, StorageUnavailable, TooManyNewRooms, UnknownRoom
from rooms.questions import Questions
from rooms.retention import Retention
from rooms.room import Room, RoomId
from rooms.settings import Settings
from rooms.store import Store, StoredRoom

log = structlog.get_logger("collab.rooms")

# An empty room with changes still uncommitted tries to unload again after this long.
EVICTION_RETRY_SECONDS = 0.1


class LoadedRooms:
    """The rooms of this process in memory, by id (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        committer: Committer,
        *,
        clock: Callable[[], float],
        address: Callable[[str], Address | None],
        carry_out: Callable[[Room], None],
        questions: Questions | None = None,
    ) -> None:
        self.settings = settings
        self.questions = questions if questions is not None else Questions()  # every room's catalog
        self.store = store
        self.committer = committer
        self.retention: Retention | None = None
        self.clock = clock
        self._address = address
        self._carry_out = carry_out
        self.rooms: dict[RoomId, Room] = {}
        # Rooms being opened: how many opens wait, and the lock that serves them in order.
        self._openers: dict[RoomId, int] = {}
        self._open_locks: dict[RoomId, asyncio.Lock] = {}
        self._evictions: dict[RoomId, asyncio.TimerHandle] = {}
        # Told of every room loaded and unloaded (`rooms.cluster` follows them).
        self.on_loaded: Callable[[Room], None] = lambda room: None
        self.on_unloaded: Callable[[RoomId], None] = lambda room_id: None

    async def open(self, room_id: RoomId, address: str = "", *, create: bool = True, private: bool = False) -> Room:
        """The room with this id, loaded from the store (or made empty) if it is not in memory.

        Opens of a room being loaded wait for that one load, and return in the order they were
        called, as does any open that comes while they wait: the caller admits its client in
        the same step, so clients join in the order their joins arrived. Raises
        `StorageUnavailable` when the store cannot be
        read, `TooManyNewRooms` when the room is new and ``address`` made
        ``rooms_per_address_per_minute`` rooms within the last minute, and `ServerBusy` when
        ``max_loaded_rooms`` rooms are in memory and none of them can be unloaded. A room the
        store does not have is made only when ``create`` (and, unless ``private``, when the
        server has open rooms); otherwise `Forbidden`. With ``private``, a room the store has
        is `Forbidden` too: private rooms are only ever made new.
        """
        room = self.rooms.get(room_id)
        if room is None or room_id in self._openers:
            self._openers[room_id] = self._openers.get(room_id, 0) + 1
            lock = self._open_locks.setdefault(room_id, asyncio.Lock())  # first come, first served
            try:
                async with lock:
                    room = self.rooms.get(room_id)
                    if room is None:
                        room = await self._load(room_id, address, create, private)
                    elif private:
                        raise Forbidden("a room with this id exists already")
            finally:
                self._openers[room_id] -= 1
                if not self._openers[room_id]:
                    del self._openers[room_id]
                    del self._open_locks[room_id]
        eviction = self._evictions.pop(room_id, None)
        if eviction is not None:
            eviction.cancel()
        return room

    def opening(self) -> set[RoomId]:
        """The rooms being opened now (retention keeps them)."""
        return set(self._openers)

    async def _load(self, room_id: RoomId, address: str, create: bool, private: bool) -> Room:
        await self.committer.wait_for(room_id)
        if self.retention is not None:
            await self.retention.wait_for_batch()  # a purge must not delete the room under its load
        try:
            stored = await self.store.load(room_id, self.settings.history_limit)
            room = None
            if stored is not None:
                room = room_from_stored(room_id, stored, self.settings, self.clock, self.questions)
        except Exception as exc:
            # The store failed, or what it holds is damaged (a change that does not apply).
            log.exception("room_load_failed", room_id=room_id)
            raise StorageUnavailable() from exc
        if room is None and not create:
            raise UnknownRoom()
        if room is None and not private and not self.settings.open_rooms:
            raise NoOpenRooms()
        if room is not None and private:
            raise Forbidden("a room with this id exists already")
        limits = self._address(address) if room is None else None
        if limits is not None:
            try:
                limits.check_new_room(self.clock(), self.settings.rooms_per_address_per_minute)
            except TooManyNewRooms:
                metrics.RATE_LIMITED.inc()
                raise
        self._make_space()
        if room is None:
            room = new_room(room_id, self.settings, self.clock, self.questions)
            if limits is not None:
                limits.new_rooms.append(self.clock())
        self.rooms[room_id] = room
        metrics.ROOMS.set(len(self.rooms))
        self.on_loaded(room)
        # The room's row is written before anyone is admitted: a new room, with its epoch, is in
        # the store before anything of it is shown (a restart brings back the epoch clients
        # know), and a loaded room's last write time tells retention it is still used.
        room.mark_changed()
        self._carry_out(room)
        return room

    def _make_space(self) -> None:
        """Unload empty, committed rooms until one more fits; `ServerBusy` when none can go."""
        limit = self.settings.max_loaded_rooms
        for room in list(self.rooms.values()):  # the longest loaded first
            if len(self.rooms) < limit:
                return
            room_id = room.room_id
            idle = not room.sessions and room.all_durable and room_id not in self._openers
            if idle and not self.committer.pending(room_id):
                self.evict(room_id)
        if len(self.rooms) >= limit:
            log.warning("server_busy", rooms=len(self.rooms))
            raise ServerBusy(limit)

    def is_loaded(self, room: Room) -> bool:
        return self.rooms.get(room.room_id) is room

    def unload(self, room: Room) -> None:
        """Forget a room at once (it is being reset: its successor is loaded from the store)."""
        if self.is_loaded(room):
            del self.rooms[room.room_id]
            metrics.ROOMS.set(len(self.rooms))
            self.on_unloaded(room.room_id)
        eviction = self._evictions.pop(room.room_id, None)
        if eviction is not None:
            eviction.cancel()

    def schedule_eviction(self, room: Room) -> None:
        room_id = room.room_id
        if room.sessions or room_id in self._evictions or not self.is_loaded(room):
            return
        # Even with no grace the eviction waits for the current step to finish: a takeover ends
        # a room's last session and admits its successor in one step.
        grace = max(0.0, self.settings.room_grace_seconds)
        self._evictions[room_id] = asyncio.get_running_loop().call_later(grace, self._eviction_due, room_id)

    def _eviction_due(self, room_id: RoomId) -> None:
        self._evictions.pop(room_id, None)  # the timer firing now: nothing to cancel
        self.evict(room_id)

    def evict(self, room_id: RoomId, force: bool = False) -> None:
        """Unload the room if it is empty and everything of it is committed (or ``force``);
        otherwise try again shortly. Any eviction timer of the room is cancelled: a room
        unloaded by another path and loaded again must get a grace period of its own."""
        eviction = self._evictions.pop(room_id, None)
        if eviction is not None:
            eviction.cancel()
        room = self.rooms.get(room_id)
        if room is None or room.sessions:
            return
        if not room.all_durable and not force:
            # Not committed yet: unloading now would lose it. Try again after the commit.
            self._evictions[room_id] = asyncio.get_running_loop().call_later(
                EVICTION_RETRY_SECONDS, self._eviction_due, room_id
            )
            return
        del self.rooms[room_id]
        metrics.ROOMS.set(len(self.rooms))
        metrics.ROOM_EVICTIONS.inc()
        self.on_unloaded(room_id)
        log.info("room_evicted", room_id=room_id, version=room.document.version)


def _document(settings: Settings, text: str = "", version: int = 0, epoch: str | None = None) -> Document:
    return Document(
        text,
        version,
        max_chars=settings.max_document_chars,
        history_limit=settings.history_limit,
        history_limit_bytes=settings.history_limit_bytes,
        dedup_limit=settings.dedup_clients,
        epoch=epoch,
        diff_max_steps=settings.diff_max_steps,
    )


def new_room(
    room_id: RoomId,
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    questions: Questions | None = None,
) -> Room:
    """An empty room, with a new epoch."""
    log.info("room_created", room_id=room_id)
    document = _document(settings)
    return Room(room_id, document, settings.default_language, settings, clock=clock, questions=questions)


def room_from_stored(
    room_id: RoomId,
    stored: StoredRoom,
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    questions: Questions | None = None,
) -> Room:
    """A room as the store kept it: its text, recent history, clients' seqs and tokens, access
    and notes. Raises `InvalidChanges` when a stored change does not apply, `ValueError` when
    its access state cannot be read (damaged data: the room is not opened, never opened up)."""
    updates = [Update(r.version, ClientId(r.client_id), r.seq, r.change_set(), r.user_id) for r in stored.records]
    clients = {ClientId(client): last for client, last in stored.clients.items()}
    document = Document.restored(
        stored.snapshot_text,
        stored.snapshot_version,
        updates,
        clients,
        max_chars=settings.max_document_chars,
        history_limit=settings.history_limit,
        history_limit_bytes=settings.history_limit_bytes,
        dedup_limit=settings.dedup_clients,
        epoch=stored.info.epoch,
        diff_max_steps=settings.diff_max_steps,
    )
    room = Room(
        room_id,
        document,
        stored.info.language,
        settings,
        clock=clock,
        snapshot_version=stored.snapshot_version,
        questions=questions,
    )
    room.access = Access.from_json(stored.access)
    room.access_stored, room.notes_stored = stored.access, stored.notes
    room.notes = stored.notes
    for client, digest in stored.tokens.items():
        if digest:
            room.bind(ClientId(client), digest)
    log.info("room_loaded", room_id=room_id, version=document.version, updates=len(updates))
    return room
