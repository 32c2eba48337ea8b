"""The room registry: rooms, their members, and the fan-out of every change to every client.

Lifecycle: a room is created on first use (`RoomRegistry.join_full_text`, `join_versioned`), a
session leaves it in the transport's ``finally`` (`RoomRegistry.leave`, idempotent), and a room
left empty is evicted from memory after ``room_grace_seconds`` unless someone comes back first.

Fan-out policy. Handling a client message is synchronous: the document changes and every
outgoing message is put in the recipients' queues in the same step, so all clients see updates
in version order. Each session has its own bounded queue. A transport that can write a frame
without waiting (`Transport.writer`) is written to synchronously, once per event-loop turn, for
every session that had something queued in that turn; otherwise, and whenever the connection's
buffer is full, the session's own sender task drains the queue. A client
whose queue overflows (``outbound_queue_size`` messages or ``outbound_queue_chars``
characters, whichever comes first), whose socket write takes longer than
``send_timeout_seconds``, or whose write fails is disconnected, counted in
``collab_dropped_sockets_total{reason}`` and announced as left; it never delays the others.
A versioned client that sends nothing (not even ``pong``) for ``heartbeat_timeout_seconds`` is
dropped the same way; every client gets a ``ping`` each ``heartbeat_interval_seconds``.

Durability. A room is loaded from the store when it is first opened (`RoomRegistry.open`) and
unloaded after the grace period. Every update is applied in memory at once (the next push
rebases on it), but nothing about it is shown to anyone, its author included, before the store
has committed it: while a room has uncommitted updates, whatever is queued for its clients waits
in the room's ``held`` line, in order, and is let go as the commits return. One committer task
writes everything applied since its last commit, for every room, in one `Store.commit` (group
commit): under load a commit carries a whole event-loop turn of pushes, or more. A failed commit
resets the rooms it carried (their clients reconnect and resend; the store has what was shown).

Transports (the raw WebSocket endpoint, the browser bridge) meet rooms through the small
`Transport` protocol, so the registry is tested with in-memory fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol as TypingProtocol

import structlog

from observability import metrics
from rooms.addresses import Address, AddressTable
from rooms.changes import ChangeSet
from rooms.document import ClientId, Document, Unchanged, Update, caret_after
from rooms.errors import (
    ClientIdInUse,
    DocumentTooLarge,
    InternalError,
    InvalidMessage,
    RateLimited,
    Resync,
    RoomError,
    RoomFull,
    SeqReused,
    ServerBusy,
    ServerStopping,
    StorageUnavailable,
    TooComplex,
    TooManyConnections,
    TooManyNewRooms,
    VersionFromFuture,
    VersionTooOld,
)
from rooms.limits import TokenBucket, clean_language, clean_username
from rooms.presence import Member, Presence, Selection, UserId
from rooms.protocol import (
    PING,
    PONG,
    FULL_TEXT_ONLY,
    VERSIONED_ONLY,
    AnyClientMessage,
    ClientMessage,
    CodeChange,
    CodeChangeOut,
    Cursor,
    CursorOut,
    ErrorOut,
    Hello,
    Join,
    Language,
    LanguageOut,
    Leave,
    MemberInfo,
    MemberJoined,
    MemberLeft,
    Ping,
    Pong,
    WireProtocol,
    Push,
    FullTextError,
    SyncRequest,
    UserJoined,
    UserLeft,
    Welcome,
    encode_ack,
    encode_changes,
    encode_update,
    parse_client_message,
)
from rooms.settings import Settings
from rooms.store import Record, RoomWrite, Store, StoredRoom
from rooms.store.memory import MemoryStore

log = structlog.get_logger("collab.rooms")

RoomId = str
SERVER_USER_ID = "server"
FULL_TEXT_CLIENT_PREFIX = "seed-"
# The client_id of updates that restore an earlier version (their seq is the version they make).
RESTORE_CLIENT = "restore"

# A snapshot is also stored once the changes since the last one pass this many times the
# largest document, in characters of their JSON: reading the text at any version (the rooms
# API, loading a room) then replays a bounded amount, however the updates are sized.
SNAPSHOT_BYTES_PER_DOCUMENT = 1
# A resume is caught up with updates only while they hold at most this many parts per rebase
# step a push may take (`MAX_REBASE_STEPS`); beyond, a snapshot costs less to send.
CATCH_UP_PARTS_PER_REBASE_STEP = 1
# Rooms deleted by retention per store call: a room load waits for at most one such batch.
PURGE_BATCH = 500
# Every this many bytes of a frame cost one more rate-limit token (parsing is in proportion).
FRAME_BYTES_PER_TOKEN = 64 * 1024
# A cursor further behind than this is dropped instead of mapped: it is stale, and the client
# sends a fresh one with its next move.
CURSOR_MAX_LAG = 100
RETENTION_INTERVAL_SECONDS = 3600.0


class Transport(TypingProtocol):
    """What a room needs of a client connection.

    A transport may also have ``writer() -> Callable[[str], None] | None``: a function that
    writes one frame at once, or None while the connection cannot take one without waiting. The
    fan-out then writes in the step that flushes the event-loop turn, with no task switch per
    frame; the sender task and `send` serve what the writer cannot take.
    """

    name: str  # the `transport` label of metrics, e.g. "websocket"

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


Writer = Callable[[str], None]


class DropReason(StrEnum):
    QUEUE_OVERFLOW = "queue_overflow"
    SEND_TIMEOUT = "send_timeout"
    SEND_FAILED = "send_failed"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"


# Every drop reason has a series from the start, at 0: a rate() panel then shows 0 rather than
# "no data", and an alert on the rate sees a value before the first drop.
for _reason in DropReason:
    metrics.DROPPED.labels(_reason.value)


# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REPLACED = 4001  # private-use code: a newer connection took over this client_id
CLOSE_TIMEOUT_SECONDS = 30.0


def token_hash(token: str) -> str:
    """What the registry and the store keep of a resume token: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(eq=False)
class Session:
    """One client connection in one room."""

    room: Room
    user_id: UserId
    client_id: ClientId
    protocol: WireProtocol
    transport: Transport
    bucket: TokenBucket
    last_seen: float
    batch: bool = False
    full_text_seq: int = 0
    closed: bool = False
    # How the connection is to be closed, once it is: set by whoever ends the session.
    close_code: int = CLOSE_NORMAL
    close_reason: str = ""
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    last_rate_error: float = float("-inf")
    # When the write in progress started (None while idle): the watchdog drops a stuck one.
    sending_since: float | None = None
    # Each entry: one frame, or a burst of frames that must go out together (a welcome and its
    # catch-up), and when it was queued.
    queue: deque[tuple[str | tuple[str, ...], float]] = field(default_factory=deque)
    queued_chars: int = 0  # characters waiting in `queue`: full-text messages make it uneven
    # Set while the sender waits for something to send; whoever queues a message resolves it.
    # A bare future rather than an asyncio.Event: this wakes a sender for every update.
    waiter: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None
    # The transport's `writer` method, if it has one.
    writer: Callable[[], Writer | None] | None = None
    # The client's network address ("" when the transport does not know it: no per-address
    # limits), and what is shared by every connection from it.
    address: str = ""
    limits: Address | None = None

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        return log.bind(room_id=self.room.room_id, user_id=self.user_id)  # type: ignore[no-any-return]


@dataclass(eq=False)
class Room:
    room_id: RoomId
    document: Document
    language: str
    presence: Presence = field(default_factory=Presence)
    sessions: dict[UserId, Session] = field(default_factory=dict)
    # Versioned sessions by client_id: one live connection per client_id at a time.
    clients: dict[ClientId, Session] = field(default_factory=dict)
    eviction: asyncio.TimerHandle | None = None
    # Durability. `changes` counts what must be stored before it is shown (updates, language
    # changes), `durable` how many of those are committed; `unsynced` holds the updates not yet
    # handed to the store, `held` the messages waiting for the commit of the change they were
    # made after.
    changes: int = 0
    durable: int = 0
    unsynced: list[Record] = field(default_factory=list)
    held: deque[tuple[int, Session, str | tuple[str, ...]]] = field(default_factory=deque)
    snapshot_version: int = 0
    snapshot_bytes: int = 0  # characters of changes stored since the last snapshot
    failing: bool = False  # being reset (a failed commit, a stalled store): nothing more is stored
    # client_id -> token_hash(resume_token) of the client bound to it, least recently used
    # first: while the room remembers a client, only that token speaks for its client_id.
    tokens: OrderedDict[ClientId, str] = field(default_factory=OrderedDict)


def _spend(bucket: TokenBucket, now: float, cost: int) -> None:
    """Take ``cost`` tokens, counting a refusal in ``collab_rate_limited_total``."""
    try:
        bucket.take(now, cost)
    except RateLimited:
        metrics.RATE_LIMITED.inc()
        raise


def _size(entry: str | tuple[str, ...]) -> int:
    return len(entry) if isinstance(entry, str) else sum(map(len, entry))


def _new_user_id() -> UserId:
    return UserId(secrets.token_hex(6))


class RoomRegistry:
    """All rooms of this process and the sessions in them. See the module docstring."""

    def __init__(
        self, settings: Settings, clock: Callable[[], float] = time.monotonic, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store if store is not None else MemoryStore()
        self.rooms: dict[RoomId, Room] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        # Rooms being opened: how many opens wait, and the lock that serves them in order.
        self._openers: dict[RoomId, int] = {}
        self._open_locks: dict[RoomId, asyncio.Lock] = {}
        # Rooms with work for the committer, and the future it sleeps on when there is none.
        self._dirty: dict[RoomId, Room] = {}
        self._commit_wanted: asyncio.Future[None] | None = None
        self._committing = False
        self._committer: asyncio.Task[None] | None = None
        self.store_ok = True  # False after a failed commit, until one succeeds
        self._shutdown_logged = False
        # Rooms in the commit being written (a load waits for it).
        self._committing_rooms: set[RoomId] = set()
        self._committed: asyncio.Future[None] | None = None  # resolved when that commit ends
        # Client addresses, least recently used first (see `Address`).
        self._addresses = AddressTable(
            settings.rate_limit_per_address_per_second, settings.rate_limit_per_address_burst
        )
        # Resolved when the retention purge batch in progress ends: a load that began meanwhile waits.
        self._purging: asyncio.Future[None] | None = None  # the purge batch in progress
        self._purge_running = False
        self.accepting = True
        # Sessions with something queued in this event-loop turn, written when the turn ends.
        self._unsent: dict[Session, None] = {}
        self._flush_scheduled = False

    # Lifecycle

    async def start(self) -> None:
        """Open the store (raises `StoreCorrupt` on bad data) and start the background tasks."""
        await self.store.open()
        self._committer = asyncio.create_task(self._commit_loop(), name="collab-committer")
        heartbeat = self.settings.heartbeat_interval_seconds
        watchdog = min(1.0, self.settings.send_timeout_seconds / 2)
        self._tasks = [
            asyncio.create_task(self._every(heartbeat, self.heartbeat, "heartbeat"), name="collab-heartbeat"),
            asyncio.create_task(self._every(watchdog, self.check_sends, "watchdog"), name="collab-send-watchdog"),
            asyncio.create_task(self._retain(), name="collab-retention"),
        ]

    def begin_shutdown(self) -> None:
        """Turn unready and refuse new sessions; the connected ones go on until `stop`."""
        self.accepting = False
        if not self._shutdown_logged:
            self._shutdown_logged = True
            log.info("shutdown_started")

    async def stop(self, code: int = CLOSE_SERVICE_RESTART, reason: str = "server restarting") -> None:
        """Refuse new sessions, tell every client to reconnect, commit every applied update,
        stop the background tasks and close the store."""
        self.begin_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        sessions = [s for room in self.rooms.values() for s in room.sessions.values()]
        for session in sessions:
            self.end(session, code, reason)
        if not await self.flush(self.settings.shutdown_timeout_seconds / 2):
            log.error("shutdown_flush_incomplete", rooms=len(self._dirty))
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.settings.send_timeout_seconds)
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        for room in list(self.rooms.values()):
            self._evict(room.room_id, force=True)
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_seconds / 2):
                await self.store.close()
        except TimeoutError:
            log.error("store_close_timed_out")

    async def open(self, room_id: RoomId, address: str = "") -> Room:
        """The room with this id, loaded from the store (or made empty) if it is not in memory.

        Opens of a room being loaded wait for that one load, and return in the order they were
        called, as does any open that comes while they wait: the caller admits its client in
        the same step, so clients join in the order their joins arrived. Raises
        `ServerStopping` while shutting down, `StorageUnavailable` when the store cannot be
        read, `TooManyNewRooms` when the room is new and ``address`` made
        ``rooms_per_address_per_minute`` rooms within the last minute, and `ServerBusy` when
        ``max_loaded_rooms`` rooms are in memory and none of them can be unloaded.
        """
        if not self.accepting:
            raise ServerStopping()
        room = self.rooms.get(room_id)
        if room is None or room_id in self._openers:
            self._openers[room_id] = self._openers.get(room_id, 0) + 1
            lock = self._open_locks.setdefault(room_id, asyncio.Lock())  # first come, first served
            try:
                async with lock:
                    room = self.rooms.get(room_id)
                    if room is None:
                        room = await self._load(room_id, address)
            finally:
                self._openers[room_id] -= 1
                if not self._openers[room_id]:
                    del self._openers[room_id]
                    del self._open_locks[room_id]
        if room.eviction is not None:
            room.eviction.cancel()
            room.eviction = None
        return room

    async def _load(self, room_id: RoomId, address: str) -> Room:
        while room_id in self._committing_rooms and self._committed is not None:
            await asyncio.shield(self._committed)  # a reset room's last commit: load what it wrote
        # A purge batch that began before this open must not delete the room under its load;
        # every later batch keeps it (it is among `_openers`), so one wait is enough.
        if self._purging is not None:
            await asyncio.shield(self._purging)
        try:
            stored = await self.store.load(room_id, self.settings.history_limit)
            room = self._restore(room_id, stored) if stored is not None else None
        except Exception as exc:
            # The store failed, or what it holds is damaged (a change that does not apply).
            log.exception("room_load_failed", room_id=room_id)
            raise StorageUnavailable() from exc
        limits = self._address(address) if room is None else None
        if limits is not None:
            try:
                limits.check_new_room(self.clock(), self.settings.rooms_per_address_per_minute)
            except TooManyNewRooms:
                metrics.RATE_LIMITED.inc()
                raise
        self._make_space()
        if room is None:
            room = self._new_room(room_id)
            if limits is not None:
                limits.new_rooms.append(self.clock())
        self.rooms[room_id] = room
        metrics.ROOMS.set(len(self.rooms))
        # The room's row is written before anyone is admitted: a new room, with its epoch, is in
        # the store before anything of it is shown (a restart brings back the epoch clients
        # know), and a loaded room's last write time tells retention it is still used.
        self._mark_dirty(room)
        return room

    def _make_space(self) -> None:
        """Unload empty, committed rooms until one more fits; `ServerBusy` when none can go."""
        limit = self.settings.max_loaded_rooms
        if len(self.rooms) < limit:
            return
        for room in list(self.rooms.values()):  # the longest loaded first
            if len(self.rooms) < limit:
                return
            if (
                not room.sessions
                and room.durable >= room.changes
                and room.room_id not in self._dirty
                and room.room_id not in self._committing_rooms
                and room.room_id not in self._openers
            ):
                self._evict(room.room_id)
        if len(self.rooms) >= limit:
            log.warning("server_busy", rooms=len(self.rooms))
            raise ServerBusy(limit)

    def _new_room(self, room_id: RoomId) -> Room:
        document = Document(
            max_chars=self.settings.max_document_chars,
            history_limit=self.settings.history_limit,
            history_limit_bytes=self.settings.history_limit_bytes,
            dedup_limit=self.settings.dedup_clients,
            diff_max_steps=self.settings.diff_max_steps,
        )
        log.info("room_created", room_id=room_id)
        language = self.settings.default_language
        return Room(room_id, document, language)

    def _restore(self, room_id: RoomId, stored: StoredRoom) -> Room:
        updates = [Update(r.version, ClientId(r.client_id), r.seq, r.change_set(), r.user_id) for r in stored.records]
        document = Document.restored(
            stored.snapshot_text,
            stored.snapshot_version,
            updates,
            {ClientId(client): last for client, last in stored.clients.items()},
            max_chars=self.settings.max_document_chars,
            history_limit=self.settings.history_limit,
            history_limit_bytes=self.settings.history_limit_bytes,
            dedup_limit=self.settings.dedup_clients,
            epoch=stored.info.epoch,
            diff_max_steps=self.settings.diff_max_steps,
        )
        room = Room(room_id, document, stored.info.language)
        room.snapshot_version = stored.snapshot_version
        for client, digest in stored.tokens.items():
            if digest:
                self._bind(room, ClientId(client), digest)
        log.info("room_loaded", room_id=room_id, version=document.version, updates=len(updates))
        return room

    # Joining and leaving

    def _admit(
        self,
        room_id: RoomId,
        transport: Transport,
        protocol: WireProtocol,
        username: object,
        client_id: ClientId | None,
        batch: bool = False,
        resume_token: str | None = None,
        color: str | None = None,
        address: str = "",
    ) -> Session:
        if not self.accepting:
            raise ServerStopping()
        room = self.rooms[room_id]  # opened by the caller, in the same step
        if len(room.sessions) >= self.settings.max_members_per_room:
            self._schedule_eviction(room)
            raise RoomFull(self.settings.max_members_per_room)
        limits = self._address(address)
        if limits is not None and limits.sessions >= self.settings.max_connections_per_address:
            # The edge counts WebSockets; this also counts pages on socket.io's long polling.
            self._schedule_eviction(room)
            raise TooManyConnections(self.settings.max_connections_per_address)
        now = self.clock()
        user_id = _new_user_id()
        session = Session(
            room=room,
            user_id=user_id,
            client_id=client_id or ClientId(f"seed-{user_id}"),
            protocol=protocol,
            transport=transport,
            bucket=TokenBucket.full(self.settings.rate_limit_per_second, self.settings.rate_limit_burst, now),
            last_seen=now,
            batch=batch,
            writer=getattr(transport, "writer", None),
            address=address,
            limits=limits,
        )
        if session.limits is not None:
            session.limits.sessions += 1
        if resume_token is not None:
            session.resume_token = resume_token
        member = room.presence.add(user_id, clean_username(username, self.settings.max_username_chars), color)
        # Announce before registering, so the joiner is not told about itself.
        self._broadcast_member_joined(room, member)
        room.sessions[user_id] = session
        if protocol is WireProtocol.VERSIONED:
            room.clients[session.client_id] = session
        session.task = asyncio.create_task(self._drain(session), name=f"collab-send-{user_id}")
        metrics.CONNECTIONS.labels(transport.name, protocol.value).inc()
        metrics.MEMBERS.inc()
        session.log.info("member_joined", protocol=protocol.value, transport=transport.name)
        return session

    async def join_full_text(self, room_id: RoomId, transport: Transport, username: object, *, address: str = "") -> Session:
        """Admit a seed-protocol client; it gets no reply, the others get ``user_joined``.

        ``address`` is the client's network address: its messages and new rooms are limited
        per address (see `Address`); "" means unknown, with no such limits."""
        await self.open(room_id, address)
        return self._admit(room_id, transport, WireProtocol.FULL_TEXT, username, None, address=address)

    async def join_versioned(
        self, room_id: RoomId, transport: Transport, hello: Hello, *, address: str = ""
    ) -> Session:
        """Admit a versioned client: ``welcome``, then every update it has not seen, in order.

        A client_id is bound to the ``resume_token`` of its first welcome for as long as the
        room remembers the client (in memory and in the store, beside its last seq): a hello
        for a bound client_id without that token is refused, so knowing a client's id is not
        enough to speak for it. A client_id speaks through one connection at a time: a hello
        for a client_id that is still connected takes the old connection over when it presents
        that connection's ``resume_token`` (the same client reconnecting before the server
        noticed the old socket die), and is refused otherwise (a second copy of the client,
        such as a duplicated tab, whose pushes would collide with the first one's). The token
        is the client's own secret when it sends one, so a reconnect whose ``welcome`` was lost
        still holds the right one. ``address`` as for `join_full_text`.
        """
        if hello.client_id.startswith(FULL_TEXT_CLIENT_PREFIX) or hello.client_id == RESTORE_CLIENT:
            raise InvalidMessage(f"client_id must not start with {FULL_TEXT_CLIENT_PREFIX!r} nor be {RESTORE_CLIENT!r}")
        room = await self.open(room_id, address)
        client_id = ClientId(hello.client_id)
        bound = room.tokens.get(client_id)
        existing = room.clients.get(client_id)
        if (
            bound is not None
            and (hello.resume_token is None or not secrets.compare_digest(token_hash(hello.resume_token), bound))
        ) or (
            existing is not None
            and (hello.resume_token is None or not secrets.compare_digest(hello.resume_token, existing.resume_token))
        ):
            # `open` stopped the room's eviction: a refused hello must not keep it loaded.
            self._schedule_eviction(room)
            raise ClientIdInUse()
        try:
            self._charge_catch_up(room, hello, address)
        except RateLimited:
            self._schedule_eviction(room)
            raise
        if existing is not None:
            self.end(existing, CLOSE_REPLACED, "replaced by a newer connection")
        session = self._admit(
            room_id,
            transport,
            WireProtocol.VERSIONED,
            hello.username,
            client_id,
            hello.batch,
            hello.resume_token,
            hello.color.lower() if hello.color else None,
            address,
        )
        try:
            self._welcome(session, hello)
        except BaseException:
            self.leave(session)  # never leave a half-joined session behind
            raise
        # A stored client without a token (a database from before tokens) binds to this one.
        self._bind(room, client_id, bound or token_hash(session.resume_token))
        return session

    def _charge_catch_up(self, room: Room, hello: Hello, address: str) -> None:
        """Charge the client's address for the catch-up its hello asks for, before it is
        admitted: encoding it costs in proportion to its parts (`RateLimited` if over)."""
        limits = self._address(address)
        document = room.document
        if limits is None or hello.version is None or hello.epoch not in (None, document.epoch):
            return
        try:
            parts = document.rebase_steps(hello.version, 0)
        except (VersionTooOld, VersionFromFuture):
            return  # a snapshot: its cost is one text
        per_token = self.settings.rebase_steps_per_token
        if per_token <= parts <= CATCH_UP_PARTS_PER_REBASE_STEP * self.settings.max_rebase_steps:
            _spend(limits.bucket, self.clock(), parts // per_token)

    def _bind(self, room: Room, client_id: ClientId, digest: str) -> None:
        """Bind a client_id to a token hash. Beyond twice ``dedup_clients`` bindings, the least
        recently used are forgotten, but never one of a client whose last seq the document
        still remembers: its seqs would otherwise be open to whoever says hello with its id.
        (The document remembers at most ``dedup_clients``, so there is always one to forget.)"""
        tokens = room.tokens
        tokens[client_id] = digest
        tokens.move_to_end(client_id)
        limit = 2 * self.settings.dedup_clients
        if len(tokens) <= limit:
            return
        # Down to three quarters of the limit in one walk, so that walks are rare: their cost
        # is spread over the hellos that fill the table again.
        document = room.document
        for candidate in list(tokens):
            if len(tokens) <= limit * 3 // 4:
                break
            if candidate != client_id and document.last_seq(candidate) is None:
                del tokens[candidate]

    @staticmethod
    def _tokens_of(room: Room, records: Sequence[Record]) -> dict[str, str]:
        """The token hashes to store with these records: those of their clients."""
        tokens = room.tokens
        return {r.client_id: tokens[ClientId(r.client_id)] for r in records if r.client_id in tokens}

    def _address(self, address: str) -> Address | None:
        """The entry of a client address (made on first use); None for an unknown address."""
        return self._addresses.get(address, self.clock())

    def charge_address(self, address: str, cost: int = 1) -> None:
        """Charge a message from ``address`` before its connection joined; `RateLimited` if
        the address is over its rate."""
        entry = self._address(address)
        if entry is not None:
            _spend(entry.bucket, self.clock(), cost)

    def _welcome(self, session: Session, hello: Hello) -> None:
        room = session.room
        document = room.document
        catch_up: list[str] | None = None
        budget = self.settings.outbound_queue_chars // 2
        if hello.version is not None and hello.epoch in (None, document.epoch):
            try:
                # A catch-up bigger than half a queue's worth of text is cheaper as a snapshot.
                # Decided from the history's size bookkeeping before anything is encoded; the
                # estimate errs high, and the encoded text is measured again, as it may not.
                # Encoding costs in proportion to the parts: at most what a rebase may walk.
                parts = document.rebase_steps(hello.version, 0)
                if parts <= CATCH_UP_PARTS_PER_REBASE_STEP * self.settings.max_rebase_steps and (
                    document.bytes_since(hello.version) <= budget
                ):
                    catch_up = [
                        self._encode_update(update, session.client_id)
                        for update in document.updates_since(hello.version)
                    ]
            except (VersionTooOld, VersionFromFuture):
                catch_up = None  # the client resets to the snapshot in `welcome`
            if catch_up and sum(map(len, catch_up)) > budget:
                catch_up = None
        welcome = Welcome(
            user_id=session.user_id,
            version=document.version if catch_up is None or hello.version is None else hello.version,
            doc=document.text if catch_up is None else None,
            members=[MemberInfo(**m.describe()) for m in room.presence],
            language=room.language,
            epoch=document.epoch,
            resume_token=session.resume_token,
            last_seq=document.last_seq(session.client_id),
            max_change_parts=self.settings.max_change_parts,
        )
        cursors = [
            CursorOut(
                user_id=member.user_id,
                anchor=member.selection.anchor,
                head=member.selection.head,
                version=document.version,
            ).encode()
            for member in room.presence
            if member.selection is not None and member.user_id != session.user_id
        ]
        # One queue entry, so that a long catch-up (up to HISTORY_LIMIT updates) is not taken
        # for a client falling behind.
        if self._enqueue(session, (welcome.encode(), *(catch_up or ()), *cursors)):
            metrics.message_counter("out", "welcome").inc()
            metrics.message_counter("out", "update").inc(len(catch_up or ()))
            metrics.message_counter("out", "cursor").inc(len(cursors))

    def leave(self, session: Session) -> None:
        """Remove a session from its room and tell the others. Safe to call more than once."""
        if session.closed:
            return
        session.closed = True
        if session.limits is not None:
            session.limits.sessions -= 1
        room = session.room
        if room.clients.get(session.client_id) is session:
            del room.clients[session.client_id]
        if room.sessions.get(session.user_id) is session:
            del room.sessions[session.user_id]
            room.presence.remove(session.user_id)
            metrics.CONNECTIONS.labels(session.transport.name, session.protocol.value).dec()
            metrics.MEMBERS.dec()
            self._broadcast_member_left(room, session.user_id)
            session.log.info("member_left")
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
        if not room.sessions:
            self._schedule_eviction(room)

    def drop(self, session: Session, reason: DropReason) -> None:
        """Disconnect a client that cannot keep up or went silent; count it and tell the others."""
        if session.closed:
            return
        metrics.DROPPED.labels(reason.value).inc()
        # A failed write is usually a client that just went away; the others mean it fell behind.
        level = "info" if reason is DropReason.SEND_FAILED else "warning"
        getattr(session.log, level)("client_dropped", reason=reason.value, queued=len(session.queue))
        self.end(session, CLOSE_TRY_AGAIN_LATER, f"dropped: {reason.value}")

    def end(self, session: Session, code: int, reason: str) -> None:
        """Leave the room and close the connection with this code (the transport may close it
        first, with the same code, from ``session.close_code``)."""
        if session.closed:
            return
        session.close_code = code
        session.close_reason = reason
        self.leave(session)
        task = asyncio.create_task(self._close(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, session: Session) -> None:
        # A generous cap only: cutting a WebSocket close short would cancel the library's own
        # close timeout, which is what aborts the TCP connection of a client that stopped reading.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await session.transport.close(session.close_code, session.close_reason)

    def _schedule_eviction(self, room: Room) -> None:
        if room.sessions or room.eviction is not None or self.rooms.get(room.room_id) is not room:
            return
        # Even with no grace the eviction waits for the current step to finish: a takeover ends
        # a room's last session and admits its successor in one step.
        grace = max(0.0, self.settings.room_grace_seconds)
        room.eviction = asyncio.get_running_loop().call_later(grace, self._evict, room.room_id)

    def _evict(self, room_id: RoomId, force: bool = False) -> None:
        room = self.rooms.get(room_id)
        if room is None or room.sessions:
            return
        if room.eviction is not None:
            room.eviction.cancel()
            room.eviction = None
        if room.durable < room.changes and not force:
            # Not committed yet: unloading now would lose it. Try again after the commit.
            room.eviction = asyncio.get_running_loop().call_later(0.1, self._evict, room_id)
            return
        del self.rooms[room_id]
        metrics.ROOMS.set(len(self.rooms))
        metrics.ROOM_EVICTIONS.inc()
        log.info("room_evicted", room_id=room_id, version=room.document.version)

    # Messages from clients

    def receive(self, session: Session, frame: str | bytes | ClientMessage) -> None:
        """Handle one frame (or an already parsed message) from a client.

        Every failure is answered in the session's protocol and none escapes. The rate limit
        is charged before parsing, so a flood of malformed frames is held to the same rate as
        valid ones.
        """
        if session.closed:
            return
        try:
            # Parsing costs in proportion to the frame: a large one costs more tokens.
            size = 0 if isinstance(frame, ClientMessage) else len(frame)
            # Never more than a full bucket, or a frame at the size cap could never pass.
            self._charge(session, min(1 + size // FRAME_BYTES_PER_TOKEN, session.bucket.burst))
            if not isinstance(frame, ClientMessage):
                frame = parse_client_message(frame, self.settings.frame_limit_bytes)
            self._dispatch(session, frame)  # type: ignore[arg-type]
        except RoomError as error:
            self.report(session, error)
        except Exception:
            # A bug, not the client's fault: keep the room going and say so.
            session.log.exception("message_failed")
            self.report(session, InternalError())

    def handle(self, session: Session, message: AnyClientMessage) -> None:
        """Apply one parsed client message. Raises `RoomError` for the caller to report."""
        if session.closed:
            return
        self._charge(session, 1)
        self._dispatch(session, message)

    def _charge(self, session: Session, cost: int) -> None:
        """Spend ``cost`` tokens of the connection's bucket and of its address's bucket, which
        every connection from that address shares (a reconnect does not refill it)."""
        now = self.clock()
        session.last_seen = now
        _spend(session.bucket, now, cost)
        if session.limits is not None:
            try:
                _spend(session.limits.bucket, now, cost)
            except RateLimited:
                session.bucket.tokens += cost  # refused: the connection spent nothing
                raise

    def _dispatch(self, session: Session, message: AnyClientMessage) -> None:
        metrics.message_counter("in", message.type).inc()
        if message.type in (VERSIONED_ONLY if session.protocol is WireProtocol.FULL_TEXT else FULL_TEXT_ONLY):
            raise InvalidMessage(
                f"{message.type} is not a message of the {session.protocol.value} protocol this connection speaks"
            )
        match message:
            case Push():
                self._push(session, message)
            case CodeChange():
                self._code_change(session, message)
            case Cursor():
                self._cursor(session, message)
            case Language():
                self._language(session, message)
            case SyncRequest():
                reply = CodeChangeOut(code=session.room.document.text, cursor_position=0, user_id=SERVER_USER_ID)
                self._send(session, reply.encode(), "code_change")
            case Ping():
                self._send(session, PONG, "pong")
            case Pong():
                pass
            case Leave():
                self.end(session, CLOSE_NORMAL, "left")
            case Join() | Hello():
                raise InvalidMessage(f"already joined; {message.type} is only valid as the first message")

    def report(self, session: Session, error: RoomError) -> None:
        """Answer a client message that failed, in the session's protocol. The connection stays."""
        metrics.REJECTED.labels(error.code).inc()
        if isinstance(error, RateLimited):
            # A flood gets one reply a second, not one per message it sent.
            now = self.clock()
            if now - session.last_rate_error < 1.0:
                return
            session.last_rate_error = now
        session.log.info("message_rejected", error_code=error.code)
        if session.protocol is WireProtocol.FULL_TEXT:
            self._send(session, FullTextError(message=str(error)).encode(), "error")
        else:
            self._send(session, ErrorOut.of(error).encode(), "error")

    def _push(self, session: Session, push: Push) -> None:
        """Apply a push, at a cost known and bounded before any of it is paid.

        Its parts are counted before a ChangeSet is built (`TooComplex` beyond the limit), and
        the rebase work (for every version behind, the push's parts plus that update's) is
        read from the history's running totals: beyond the bounds the push gets `Resync`,
        within them it is charged one more token per `REBASE_STEPS_PER_TOKEN` steps.
        """
        settings = self.settings
        parts = len(push.changes)
        document = session.room.document
        if parts > settings.max_change_parts:
            last = document.last_seq(session.client_id)
            if last == push.seq:
                # A resend of an applied push that grew while its client rebased it: ignored
                # as any resend is (its update is in the stream), not refused as new work.
                return
            if last is not None and push.seq < last:
                raise SeqReused(push.seq, last)
            error = TooComplex(parts, settings.max_change_parts)
            error.seq = push.seq
            raise error
        # Each line after an insertion's first is a newline inserted: more than a document may
        # hold is refused before the lines are read (joining them costs in proportion).
        lines = sum(len(part) - 1 for part in push.changes if type(part) is list and len(part) > 1)
        if lines > settings.max_document_chars + parts:
            raise DocumentTooLarge(lines - parts, settings.max_document_chars)
        try:
            steps = document.rebase_steps(push.version, parts)
        except (VersionTooOld, VersionFromFuture):
            steps = 0  # refused by `push` below, or an old resend it ignores
        # Its own parts are charged too: every push that is behind it later pays for them.
        extra = (min(steps, settings.max_rebase_steps) + parts) // settings.rebase_steps_per_token
        if extra:
            self._charge(session, extra)
        changes = ChangeSet.from_json(push.changes, max_parts=settings.max_change_parts)
        started = time.perf_counter()
        try:
            result = document.push(
                session.client_id,
                push.seq,
                push.version,
                changes,
                session.user_id,
                max_versions=settings.max_rebase_versions,
                max_steps=settings.max_rebase_steps,
            )
        except Resync as error:
            error.seq = push.seq
            raise
        if result is None:
            return  # a resend of an applied push: the client finds its update in the stream
        if isinstance(result, Unchanged):
            # No version, nothing stored: only the author hears of it, after anything queued
            # for it before (`_send` keeps the line of messages held until their commit).
            self._send(session, encode_ack(result.seq, result.version), "ack")
            return
        metrics.UPDATE_APPLY.observe(time.perf_counter() - started)
        self._publish(session, result, None)

    def _code_change(self, session: Session, message: CodeChange) -> None:
        room = session.room
        started = time.perf_counter()
        session.full_text_seq += 1
        update = room.document.replace(message.code, session.client_id, session.full_text_seq, session.user_id)
        if update is not None:
            metrics.UPDATE_APPLY.observe(time.perf_counter() - started)
            self._publish(session, update, message.cursor_position)
        else:
            # Same text, maybe a moved cursor: full-text clients relay it as the naive server did.
            relay = CodeChangeOut(
                code=room.document.text, cursor_position=message.cursor_position, user_id=session.user_id
            ).encode()
            for other in list(room.sessions.values()):
                if other.protocol is WireProtocol.FULL_TEXT and other is not session:
                    self._send(other, relay, "code_change")
        position = message.cursor_position
        if isinstance(position, int) and not isinstance(position, bool) and 0 <= position <= room.document.length:
            self._set_cursor(session, Selection(position, position))

    def _cursor(self, session: Session, cursor: Cursor) -> None:
        document = session.room.document
        if document.version - cursor.version > CURSOR_MAX_LAG:
            return
        # Mapping it walks every part of every update since its version: paid like a rebase,
        # and dropped (it is stale; the next move sends a fresh one) beyond a rebase's bound.
        try:
            steps = document.rebase_steps(cursor.version, 1)
        except (VersionTooOld, VersionFromFuture):
            return  # older than the kept history (or not yet there): stale, dropped too
        if steps > self.settings.max_rebase_steps:
            return
        extra = steps // self.settings.rebase_steps_per_token
        if extra:
            self._charge(session, extra)
        length = document.length_at(cursor.version)
        if cursor.anchor > length or cursor.head > length:
            raise InvalidMessage(
                f"cursor ({cursor.anchor}, {cursor.head}) is outside the document of {length} units "
                f"at version {cursor.version}"
            )
        selection = Selection(cursor.anchor, cursor.head)
        for update in document.updates_since(cursor.version):
            selection = selection.mapped(update.changes)
        self._set_cursor(session, selection)

    def _set_cursor(self, session: Session, selection: Selection) -> None:
        room = session.room
        room.presence.set_selection(session.user_id, selection)
        message = CursorOut(
            user_id=session.user_id, anchor=selection.anchor, head=selection.head, version=room.document.version
        ).encode()
        for other in list(room.sessions.values()):
            if other.protocol is WireProtocol.VERSIONED and other is not session:
                self._send(other, message, "cursor")

    def _language(self, session: Session, message: Language) -> None:
        room = session.room
        room.language = clean_language(message.language)
        self._mark_dirty(room)
        out = LanguageOut(language=room.language, user_id=session.user_id).encode()
        for other in list(room.sessions.values()):
            if other.protocol is WireProtocol.VERSIONED:
                self._send(other, out, "language")
        session.log.info("language_changed", language=room.language)

    def restore(self, session: Session, version: int, text: str) -> Update | None:
        """Make ``text`` (the room's text at ``version``) the current text, as a new update by
        the session's user: history is never rewritten. None when the text is already that."""
        if session.closed:
            return None
        self._charge(session, 1)
        room = session.room
        update = room.document.replace(text, ClientId(RESTORE_CLIENT), room.document.version + 1, session.user_id)
        if update is None:
            return None
        self._publish(session, update, None)
        session.log.info("version_restored", version=version, new_version=update.version)
        return update

    # Durability

    def _publish(self, session: Session, update: Update, cursor_position: object) -> None:
        """An update the session's client made was applied: store it, and show it once stored."""
        changes = encode_changes(update.changes.to_json())
        self._record(session, update, changes)
        # Encoded once for the author and once for everyone else, not once per recipient.
        others = encode_update(update.version, None, update.seq, changes, update.user_id)
        own = others
        if session.protocol is WireProtocol.VERSIONED and session.client_id == update.client_id:
            own = encode_update(update.version, update.client_id, update.seq, changes, update.user_id)
        self._broadcast_update(session.room, update, session, cursor_position, own, others)

    def _record(self, session: Session, update: Update, changes: str) -> None:
        """Hand an applied update to the committer, with who made it and when."""
        member = session.room.presence.get(session.user_id)
        session.room.unsynced.append(
            Record(
                version=update.version,
                client_id=update.client_id,
                seq=update.seq,
                changes=changes,
                user_id=update.user_id,
                author=member.username if member is not None else "",
                color=member.color if member is not None else "",
                time=time.time(),
            )
        )
        self._mark_dirty(session.room)

    def _mark_dirty(self, room: Room) -> None:
        """A change to store: nothing queued for the room's clients from now on is shown before
        the commit that carries it has returned."""
        room.changes += 1
        if room.failing or self.rooms.get(room.room_id) is not room:
            return  # a room being reset: its successor is loaded from the store
        self._dirty[room.room_id] = room
        if self._committer is None:  # a registry used without `start` (tests of the room logic)
            self._committer = asyncio.create_task(self._commit_loop(), name="collab-committer")
        wanted = self._commit_wanted
        if wanted is not None:
            self._commit_wanted = None
            if not wanted.done():
                wanted.set_result(None)

    def _take_write(self, room: Room) -> tuple[RoomWrite, int]:
        """What to commit for the room, and the count of its changes that commit makes durable."""
        records, room.unsynced = room.unsynced, []
        head = records[-1].version if records else room.document.version
        room.snapshot_bytes += sum(len(record.changes) for record in records)
        snapshot = None
        if records and (
            head - room.snapshot_version >= self.settings.snapshot_every
            or room.snapshot_bytes >= SNAPSHOT_BYTES_PER_DOCUMENT * self.settings.max_document_chars
        ):
            snapshot = room.document.text  # the text at `head`: every applied update is in `records`
            room.snapshot_version = head
            room.snapshot_bytes = 0
        return RoomWrite(
            room.room_id,
            room.document.epoch,
            room.language,
            records,
            snapshot,
            head,
            tokens=self._tokens_of(room, records),
        ), room.changes

    async def _commit_loop(self) -> None:
        """The committer: one `Store.commit` at a time, of everything applied since the last."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._dirty:
                self._commit_wanted = loop.create_future()
                await self._commit_wanted
            rooms = [room for room in self._dirty.values() if self.rooms.get(room.room_id) is room]
            self._dirty.clear()
            taken = [self._take_write(room) for room in rooms]
            writes = [write for write, _ in taken]
            if not writes:
                continue
            self._committing = True
            self._committing_rooms = {room.room_id for room in rooms}
            self._committed = loop.create_future()
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
                    self._fail_room(room)
                continue
            finally:
                self._committing = False
                self._committing_rooms = set()
                if not self._committed.done():
                    self._committed.set_result(None)
            metrics.STORE_COMMIT.observe(time.perf_counter() - started)
            metrics.STORE_COMMIT_UPDATES.observe(sum(len(write.records) for write in writes))
            self.store_ok = True
            for room, (_, changes) in zip(rooms, taken, strict=True):
                self._release(room, changes)

    def _fail_room(self, room: Room) -> None:
        """A commit carrying this room failed: forget the room's uncommitted state.

        Its clients are told to reconnect; they resend what was not confirmed, and the room is
        loaded again from what the store holds, which is everything anyone was shown.
        """
        room.failing = True
        if self.rooms.get(room.room_id) is room:
            # A room whose first commit failed was shown to no one (its welcomes were held for
            # that commit), so its successor may start a new epoch.
            del self.rooms[room.room_id]
            metrics.ROOMS.set(len(self.rooms))
        if self._dirty.get(room.room_id) is room:
            del self._dirty[room.room_id]
        room.held.clear()
        if room.eviction is not None:
            room.eviction.cancel()
        for session in list(room.sessions.values()):
            self.end(session, CLOSE_TRY_AGAIN_LATER, "storage unavailable")

    async def flush(self, within: float | None = None) -> bool:
        """Wait until every update applied so far is committed; False if ``within`` seconds ran out."""
        deadline = None if within is None else time.monotonic() + within
        while self._dirty or self._committing:
            if self._committer is None or self._committer.done():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # Fan-out

    @staticmethod
    def _encode_update(update: Update, recipient: ClientId | None) -> str:
        """An update as ``recipient`` gets it: with its client_id only when it is the author."""
        changes = encode_changes(update.changes.to_json())
        client_id = update.client_id if update.client_id == recipient else None
        return encode_update(update.version, client_id, update.seq, changes, update.user_id)

    def _broadcast_update(
        self, room: Room, update: Update, author: Session, cursor_position: object, own: str, versioned: str
    ) -> None:
        """Send an update to every client: ``own`` (with its client_id) to its author, the
        encoding without it to everyone else."""
        room.presence.map_selections(update.changes)
        metrics.DOCUMENT_CHARS.observe(len(room.document.text))
        seed: str | None = None  # the full text, encoded only if a full-text client needs it
        updates = 0
        for session in list(room.sessions.values()):
            if session.protocol is WireProtocol.VERSIONED:
                updates += self._enqueue(session, own if session is author else versioned)
            elif session is not author:
                if seed is None:
                    position = cursor_position if cursor_position is not None else caret_after(update.changes)
                    seed = CodeChangeOut(
                        code=room.document.text,
                        cursor_position=position,  # type: ignore[arg-type]
                        user_id=author.user_id,
                    ).encode()
                self._send(session, seed, "code_change")
        # One increment per broadcast, not per recipient: this is the hottest path.
        metrics.message_counter("out", "update").inc(updates)

    def _broadcast_member_joined(self, room: Room, member: Member) -> None:
        seed = UserJoined(user_id=member.user_id, username=member.username).encode()
        versioned = MemberJoined(user_id=member.user_id, username=member.username, color=member.color).encode()
        for session in list(room.sessions.values()):
            if session.protocol is WireProtocol.FULL_TEXT:
                self._send(session, seed, "user_joined")
            else:
                self._send(session, versioned, "member_joined")

    def _broadcast_member_left(self, room: Room, user_id: UserId) -> None:
        seed = UserLeft(user_id=user_id).encode()
        versioned = MemberLeft(user_id=user_id).encode()
        for session in list(room.sessions.values()):
            if session.protocol is WireProtocol.FULL_TEXT:
                self._send(session, seed, "user_left")
            else:
                self._send(session, versioned, "member_left")

    def _send(self, session: Session, message: str, kind: str) -> None:
        """Queue one message for a client and count it."""
        if self._enqueue(session, message):
            metrics.message_counter("out", kind).inc()

    def _enqueue(self, session: Session, message: str | tuple[str, ...]) -> bool:
        """Queue a message (or a burst) for a client, or hold it until the room's state it was
        made from is committed (see the module docstring)."""
        if session.closed:
            return False
        room = session.room
        if room.held or room.durable < room.changes:
            room.held.append((room.changes, session, message))
            if not room.failing and len(room.held) > self.settings.outbound_queue_size * max(1, len(room.sessions)):
                # The store is far behind (a stalled disk): holding more would grow without end.
                # Reset once the current step is done: it may be admitting or broadcasting.
                log.warning("store_too_slow", room_id=room.room_id, held=len(room.held))
                metrics.STORE_ERRORS.inc()
                room.failing = True
                asyncio.get_running_loop().call_soon(self._fail_room, room)
            return True
        return self._deliver(session, message)

    def _release(self, room: Room, durable: int) -> None:
        """The room's first ``durable`` changes are committed: let go of what was held for
        them, in order."""
        room.durable = max(room.durable, durable)
        held = room.held
        while held and held[0][0] <= room.durable:
            _, session, message = held.popleft()
            if not session.closed:
                self._deliver(session, message)

    def _deliver(self, session: Session, message: str | tuple[str, ...]) -> bool:
        """Put a message in a client's queue, dropping the client if its queue is full.

        An entry always fits an empty queue, however large: the limits catch a client that
        falls behind, not one big message.
        """
        queue = session.queue
        size = _size(message)
        if queue and (
            len(queue) >= self.settings.outbound_queue_size
            or session.queued_chars + size > self.settings.outbound_queue_chars
        ):
            self.drop(session, DropReason.QUEUE_OVERFLOW)
            return False
        queue.append((message, self.clock()))
        session.queued_chars += size
        if session.waiter is not None:  # the sender is idle
            if session.writer is not None:
                self._unsent[session] = None
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._flush)
            else:
                self._wake(session)
        return True

    @staticmethod
    def _wake(session: Session) -> None:
        waiter = session.waiter
        if waiter is not None:
            session.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _take(self, session: Session) -> tuple[tuple[str, ...], float]:
        """The frames to write next from the session's queue, and when the first was queued.

        A batching client gets everything queued as one frame (a JSON array); any other client,
        the first entry's frames.
        """
        queue = session.queue
        if session.batch:
            queued_at = queue[0][1]
            messages: list[str] = []
            for entry, _ in queue:
                if isinstance(entry, str):
                    messages.append(entry)
                else:
                    messages.extend(entry)
            queue.clear()
            session.queued_chars = 0
            return ("[" + ",".join(messages) + "]",) if len(messages) > 1 else (messages[0],), queued_at
        entry, queued_at = queue.popleft()
        session.queued_chars -= _size(entry)
        return (entry,) if isinstance(entry, str) else entry, queued_at

    def _flush(self) -> None:
        """Write what this event-loop turn queued, to every session whose connection takes it now."""
        self._flush_scheduled = False
        sessions, self._unsent = self._unsent, {}
        now = self.clock()
        for session in sessions:
            if session.closed or session.waiter is None or not session.queue:
                continue  # gone, or its sender is busy: the sender takes the queue itself
            assert session.writer is not None
            try:
                write = session.writer()
                if write is None:
                    self._wake(session)  # the connection's buffer is full: the sender waits for it
                    continue
                queued_at = session.queue[0][1]  # the oldest message this write carries
                while session.queue:
                    frames, _ = self._take(session)
                    for frame in frames:
                        write(frame)
            except Exception as exc:
                session.log.info("send_failed", error=type(exc).__name__)
                self.drop(session, DropReason.SEND_FAILED)
                continue
            metrics.FANOUT.observe(now - queued_at)

    async def _drain(self, session: Session) -> None:
        """The session's sender: writes its queue to the socket, one client at a time."""
        queue = session.queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    session.waiter = waiter = loop.create_future()
                    await waiter
                while queue:
                    frames, queued_at = self._take(session)
                    for frame in frames:
                        # No asyncio.timeout() here: arming a timer per frame was the largest
                        # cost of a fan-out; the watchdog checks `sending_since` once a second.
                        session.sending_since = self.clock()
                        await session.transport.send(frame)
                        session.sending_since = None
                    metrics.FANOUT.observe(self.clock() - queued_at)
        except asyncio.CancelledError:
            # `leave` cancels the sender of a session that is gone. Ending quietly keeps no
            # exception on the task: a kept one would hold this frame, the frame the session,
            # and the session the task, a cycle only a full collection of the heap frees.
            return
        except Exception as exc:
            session.log.info("send_failed", error=type(exc).__name__)
            self.drop(session, DropReason.SEND_FAILED)

    async def _retain(self) -> None:
        """Retention: `purge` once at start, then every hour; a failing run is logged."""
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("retention_failed")
            await asyncio.sleep(RETENTION_INTERVAL_SECONDS)

    async def purge(self) -> int:
        """Delete the stored rooms nobody opened for ``room_retention_days`` (0: keep forever),
        with their history; the count deleted. Rooms in memory, or being loaded, are kept. It
        goes in batches of `PURGE_BATCH` rooms, and a load waits for the batch in progress
        only (a room must not be deleted while it is being loaded)."""
        days = self.settings.room_retention_days
        if not days or self._purge_running:
            return 0
        self._purge_running = True
        loop = asyncio.get_running_loop()
        deleted = 0
        try:
            # A room open for longer than the retention period without an edit is still in use:
            # its stored row is touched, so it is not purged the moment it is unloaded.
            for room in list(self.rooms.values()):
                self._mark_dirty(room)
            before = time.time() - days * 86_400
            while True:
                self._purging = loop.create_future()
                try:
                    keep = set(self.rooms) | set(self._openers)
                    batch = await self.store.purge(before, keep, limit=PURGE_BATCH)
                finally:
                    self._purging.set_result(None)
                    self._purging = None
                deleted += len(batch)
                if len(batch) < PURGE_BATCH:
                    break
        finally:
            self._purge_running = False
        log.info("rooms_purged", count=deleted)
        return deleted

    async def _every(self, interval: float, step: Callable[[], None], name: str) -> None:
        """Run ``step`` every ``interval`` seconds; a failing step is logged, not fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                step()
            except Exception:
                log.exception(f"{name}_failed")

    def check_sends(self) -> None:
        """Drop every client whose current socket write has taken longer than the send timeout."""
        deadline = self.clock() - self.settings.send_timeout_seconds
        for room in list(self.rooms.values()):
            for session in list(room.sessions.values()):
                if session.sending_since is not None and session.sending_since < deadline:
                    self.drop(session, DropReason.SEND_TIMEOUT)

    def heartbeat(self) -> None:
        """Ping every client; drop versioned clients silent for longer than the timeout."""
        now = self.clock()
        deadline = now - self.settings.heartbeat_timeout_seconds
        for room in list(self.rooms.values()):
            for session in list(room.sessions.values()):
                if session.protocol is WireProtocol.VERSIONED and session.last_seen < deadline:
                    self.drop(session, DropReason.HEARTBEAT_TIMEOUT)
                else:
                    self._send(session, PING, "ping")
