"""The room registry: the asyncio driver around every sans-I/O `Room` of this process.

A `Room` decides; the registry does. It loads rooms from the store and unloads them, feeds each
room the events of its clients (joins, frames, leaves) and of time (heartbeats), and carries out
what the room answers (`_carry_out`): messages go to each connection's `Outbox`, changes to the
group `Committer`, clients that left have their connection closed. It also keeps what spans
rooms: per-address limits, the send watchdog, retention, metrics.

Lifecycle: a room is loaded on first use (`open`, from `join_full_text` or `join_versioned`), a
session leaves it in the transport's ``finally`` (`leave`, idempotent), and a room left empty is
unloaded after ``room_grace_seconds`` unless someone comes back first, and never before all its
changes are committed. Transports (the raw WebSocket endpoint, the browser bridge) meet rooms
through the small `Transport` protocol, so the registry is tested with in-memory fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from observability import metrics
from rooms.addresses import Address, AddressTable
from rooms.cluster import Cluster
from rooms.committer import Committer
from rooms.document import ClientId, Update
from rooms.errors import (
    RateLimited,
    RoomError,
    ServerStopping,
    TooManyConnections,
    UnknownRoom,
)
from rooms.lifecycle import LoadedRooms
from rooms.limits import TokenBucket, address_key
from rooms.outbox import Outbox, Outboxes, Transport
from rooms.private_rooms import PrivateRooms
from rooms.protocol import ClientMessage, Hello
from rooms.questions import SHIPPED, Questions
from rooms.retention import RETENTION_INTERVAL_SECONDS, Retention
from rooms.room import Room, RoomId, check_client_id
from rooms.session import (
    CLOSE_SERVICE_RESTART,
    Action,
    DropReason,
    Left,
    Refused,
    Reset,
    Send,
    Session,
    Shared,
    Store,
)
from rooms.settings import Settings
from rooms.store import Store as RoomStore
from rooms.store.memory import MemoryStore

log = structlog.get_logger("collab.rooms")

# A close waits at most this long: cutting a WebSocket close shorter would cancel the library's
# own close timeout, which is what aborts the TCP connection of a client that stopped reading.
CLOSE_TIMEOUT_SECONDS = 30.0

# Every drop reason has a series from the start, at 0: a rate() panel then shows 0 rather than
# "no data", and an alert on the rate sees a value before the first drop.
for _reason in DropReason:
    metrics.DROPPED.labels(_reason.value)


class RoomRegistry(PrivateRooms):
    """All rooms of this process and the connections in them. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        store: RoomStore | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store if store is not None else MemoryStore()
        # Every room's question catalog: the shipped questions, and the operator's over them.
        self.questions = Questions.load(SHIPPED, *([settings.questions_dir] if settings.questions_dir else []))
        self.accepting = True
        self.outboxes = Outboxes()
        self.committer = Committer(
            self.store,
            is_loaded=self._is_loaded,
            on_committed=self._committed,
            on_failed=self._fail_room,
            on_changed=self._carry_out,
            catch_up_limit=settings.history_limit,
        )
        self.loaded = LoadedRooms(
            settings,
            self.store,
            self.committer,
            clock=clock,
            address=self._address,
            carry_out=self._carry_out,
            questions=self.questions,
        )
        self.rooms = self.loaded.rooms
        self.retention = self.loaded.retention = Retention(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._addresses = AddressTable(
            settings.rate_limit_per_address_per_second, settings.rate_limit_per_address_burst
        )
        self._shutdown_logged = False
        # Rooms shared with other processes (`REDIS_URL`): None in a single process.
        self.cluster = Cluster.joining(self) if settings.redis_url else None

    # Lifecycle

    async def start(self) -> None:
        """Open the store (raises `StoreCorrupt` on bad data) and start the background tasks."""
        await self.store.open()
        heartbeat = self.settings.heartbeat_interval_seconds
        watchdog = min(1.0, self.settings.send_timeout_seconds / 2)
        self._tasks = [
            asyncio.create_task(self._every(heartbeat, self.heartbeat, "heartbeat"), name="collab-heartbeat"),
            asyncio.create_task(self._every(watchdog, self.check_sends, "watchdog"), name="collab-send-watchdog"),
            asyncio.create_task(self.retention.run(RETENTION_INTERVAL_SECONDS), name="collab-retention"),
        ]
        if self.cluster is not None:
            await self.cluster.start()

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
        for room in list(self.rooms.values()):
            for session in list(room.sessions.values()):
                room.leave(session, code=code, reason=reason)
            self._carry_out(room)
        if not await self.wait_committed(self.settings.shutdown_timeout_seconds / 2):
            log.error("shutdown_flush_incomplete")
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.settings.send_timeout_seconds)
        await self.committer.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        for room_id in list(self.rooms):
            self.loaded.evict(room_id, force=True)
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_seconds / 2):
                await self.store.close()
        except TimeoutError:
            log.error("store_close_timed_out")

    async def wait_committed(self, within: float | None = None) -> bool:
        """Wait until every change applied so far is committed; False if ``within`` ran out."""
        return await self.committer.wait_committed(within)

    async def settled(self) -> None:
        """Return once every change so far is committed, every queued frame written (or waiting
        on a connection that cannot take it now) and every connection to close is closed: an
        event to wait on, where counting event-loop turns would tie a test to how many a step
        takes. Never returns while a commit cannot finish (a stalled store)."""
        while True:
            await self.committer.wait_committed()
            if self._closing:
                await asyncio.wait(set(self._closing))
            writing = self.outboxes.flushing or any(
                outbox.queue and outbox.sending_since is None for outbox in self.outboxes.by_session.values()
            )
            if not writing and not self._closing and self.committer.idle:
                return
            await asyncio.sleep(0)  # let the senders and the flush run

    async def open(self, room_id: RoomId, address: str = "", *, create: bool = True, private: bool = False) -> Room:
        """The room with this id, loaded if need be (see `LoadedRooms.open`); `ServerStopping`
        while shutting down."""
        if not self.accepting:
            raise ServerStopping()
        return await self.loaded.open(room_id, address, create=create, private=private)

    def opening(self) -> set[RoomId]:
        """The rooms being opened now (retention keeps them)."""
        return self.loaded.opening()

    def _is_loaded(self, room: Room) -> bool:
        return self.rooms.get(room.room_id) is room

    # Joining and leaving

    async def join_full_text(
        self, room_id: RoomId, transport: Transport, username: object, *, address: str = ""
    ) -> Session:
        """Admit a full-text client (see `Room.join_full_text`). ``address`` is the client's
        network address: its messages, sessions and new rooms are limited per address (see
        `Address`); "" means unknown, with no such limits."""
        room = await self.open(room_id, address)
        return self._admit(room, transport, address, lambda shared: room.join_full_text(username, shared))

    async def join_versioned(
        self, room_id: RoomId, transport: Transport, hello: Hello, *, address: str = ""
    ) -> Session:
        """Admit a versioned client (see `Room.join_versioned`); ``address`` as for
        `join_full_text`."""
        check_client_id(hello.client_id)  # before `open`: a refused hello makes no room
        attempt = self._link_attempt(address) if hello.token is not None else None
        try:
            # A link is checked against the access state as stored now, not as last heard of.
            stored = await self.cluster.stored_access(room_id) if self.cluster and hello.token else None
            try:
                # A link never makes a room (one of a room deleted since would make an open one).
                room = await self.open(room_id, address, create=hello.token is None)
            except UnknownRoom:
                if attempt is not None:
                    attempt.failed("unknown")
                raise
            if self.cluster is not None:
                reopen = lambda: self.open(room_id, address, create=hello.token is None)  # noqa: E731
                room = await self.cluster.admitting(room, hello, stored, reopen, self.loaded.schedule_eviction)
            # A reconnect that takes its own connection over does not count that connection twice.
            replaces = room.clients.get(ClientId(hello.client_id))

            def join(shared: TokenBucket | None) -> Session:
                self._admission(room.access, hello.token, attempt)  # counted here; the room decides again
                return room.join_versioned(hello, shared)

            return self._admit(room, transport, address, join, replaces)
        finally:
            if attempt is not None:
                attempt.settle()

    def _admit(
        self,
        room: Room,
        transport: Transport,
        address: str,
        join: Callable[[TokenBucket | None], Session],
        replaces: Session | None = None,
    ) -> Session:
        try:
            if not self.accepting:
                raise ServerStopping()
            limits = self._address(address)
            replaced = self.outboxes.by_session.get(replaces) if replaces is not None else None
            taken = limits.sessions - (replaced is not None and replaced.address is limits) if limits else 0
            if limits is not None and taken >= self.settings.max_connections_per_address:
                # The edge counts WebSockets; this also counts pages on socket.io's long polling.
                raise TooManyConnections(self.settings.max_connections_per_address)
            try:
                session = join(limits.bucket if limits is not None else None)
            except RateLimited:
                metrics.RATE_LIMITED.inc()
                raise
            session.address = address_key(address) if address else ""
        except BaseException:
            # `open` stopped the room's eviction: a refused client must not keep it loaded.
            self._carry_out(room)
            self.loaded.schedule_eviction(room)
            raise
        outbox = Outbox(
            session,
            transport,
            max_messages=self.settings.outbound_queue_size,
            max_chars=self.settings.outbound_queue_chars,
            clock=self.clock,
            on_drop=self.drop,
            address=limits,
        )
        if limits is not None:
            limits.sessions += 1
        self.outboxes.by_session[session] = outbox
        outbox.task = asyncio.create_task(outbox.run(), name=f"collab-send-{session.user_id}")
        metrics.CONNECTIONS.labels(transport.name, session.protocol.value).inc()
        metrics.MEMBERS.inc()
        self._carry_out(room)
        return session

    def leave(self, session: Session) -> None:
        """Remove a session from its room and tell the others. Safe to call more than once."""
        room = session.room
        room.leave(session)
        self._carry_out(room)

    def drop(self, session: Session, reason: DropReason) -> None:
        """Disconnect a client that cannot keep up or went silent; counted, and told to the others."""
        room = session.room
        room.leave(session, reason)
        self._carry_out(room)

    def _left(self, session: Session, drop: DropReason | None) -> None:
        outbox = self.outboxes.by_session.pop(session, None)
        if outbox is None:
            return
        if outbox.address is not None:
            outbox.address.sessions -= 1
        metrics.CONNECTIONS.labels(outbox.transport.name, session.protocol.value).dec()
        metrics.MEMBERS.dec()
        if drop is not None:
            metrics.DROPPED.labels(drop.value).inc()
            # A failed write is usually a client that just went away; the others mean it fell behind.
            level = "info" if drop is DropReason.SEND_FAILED else "warning"
            getattr(log, level)(
                "client_dropped",
                room_id=session.room.room_id,
                user_id=session.user_id,
                reason=drop.value,
                queued=len(outbox.queue),
            )
        if outbox.task is not None and outbox.task is not asyncio.current_task():
            outbox.task.cancel()
        task = asyncio.create_task(self._close(outbox.transport, session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if not session.room.sessions:
            self.loaded.schedule_eviction(session.room)

    @staticmethod
    async def _close(transport: Transport, session: Session) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await transport.close(session.close_code, session.close_reason)

    # Messages from clients

    def receive(self, session: Session, frame: str | bytes | ClientMessage) -> None:
        """Handle one frame (or an already parsed message) from a client; every failure is
        answered in the session's protocol and none escapes (see `Room.receive`)."""
        room = session.room
        version = room.document.version
        started = time.perf_counter()
        kind = room.receive(session, frame)
        if kind is not None:
            metrics.message_counter("in", kind).inc()
            if room.document.version != version:
                metrics.UPDATE_APPLY.observe(time.perf_counter() - started)
                metrics.DOCUMENT_CHARS.observe(len(room.document.text))
        self._carry_out(room)

    def handle(self, session: Session, message: ClientMessage) -> None:
        """Apply one parsed client message. Raises `RoomError` for the caller to `report`."""
        room = session.room
        try:
            room.handle(session, message)
            metrics.message_counter("in", message.type).inc()  # type: ignore[attr-defined]
        finally:
            self._carry_out(room)

    def report(self, session: Session, error: RoomError) -> None:
        """Answer a client message that failed, in the session's protocol."""
        session.room.report(session, error)
        self._carry_out(session.room)

    def revert(self, session: Session, version: int, text: str) -> Update | None:
        """Make ``text`` (the room's text at ``version``) the current text, as a new update by
        the session's user (see `Room.revert`). Raises `RoomError`."""
        room = session.room
        try:
            update = room.revert(session, version, text)
        except RateLimited:
            metrics.RATE_LIMITED.inc()
            raise
        finally:
            self._carry_out(room)
        if update is not None:
            metrics.DOCUMENT_CHARS.observe(len(room.document.text))
            log.info(
                "version_restored",
                room_id=room.room_id,
                user_id=session.user_id,
                version=version,
                new_version=update.version,
            )
        return update

    def _address(self, address: str) -> Address | None:
        """The entry of a client address (made on first use); None for an unknown address."""
        return self._addresses.get(address, self.clock())

    def charge_address(self, address: str, cost: int = 1) -> None:
        """Charge a message from ``address`` before its connection joined; `RateLimited` if
        the address is over its rate."""
        entry = self._address(address)
        if entry is not None:
            try:
                entry.bucket.take(self.clock(), cost)
            except RateLimited:
                metrics.RATE_LIMITED.inc()
                raise

    # Carrying out what rooms decide

    def _carry_out(self, room: Room) -> None:
        """Do what the room asked for since last time, in order (see `rooms.session`). What
        carrying out an action makes the room ask (a client dropped for a full queue) is done
        in the next turn of the loop. Nothing done here feeds the room another event through
        `_carry_out` (drops come from senders, the flush and the watchdog, outside it), so
        actions are never carried out out of order."""
        while actions := room.take_actions():
            self._do(room, actions)

    def _do(self, room: Room, actions: list[Action]) -> None:
        by_session = self.outboxes.by_session
        put = self.outboxes.put
        counts: dict[str, int] = {}
        for action in actions:
            if type(action) is Send:  # by far the most common: first, and with the least work
                session = action.session
                outbox = by_session.get(session)
                if outbox is None or session.closed:
                    continue  # dropped earlier in this batch: its connection is closing
                if not put(outbox, action.message):
                    room.leave(session, DropReason.QUEUE_OVERFLOW)
                    continue
                kind = action.kind
                counts[kind] = counts.get(kind, 0) + 1
                if action.extra:
                    for kind, count in action.extra:
                        counts[kind] = counts.get(kind, 0) + count
            elif type(action) is Left:
                self._left(action.session, action.drop)
            elif type(action) is Refused:
                metrics.REJECTED.labels(action.error.code).inc()
                if isinstance(action.error, RateLimited):
                    metrics.RATE_LIMITED.inc()
            elif type(action) is Store:
                self.committer.want(room)
            elif type(action) is Shared:
                if self.cluster is not None:
                    self.cluster.tell(room, action)
            elif type(action) is Reset:
                metrics.STORE_ERRORS.inc()
                # Once the current step is done: it may be admitting or broadcasting.
                asyncio.get_running_loop().call_soon(self._fail_room, room)
        # One increment per kind, not per recipient: this is the hottest path.
        for kind, count in counts.items():
            metrics.message_counter("out", kind).inc(count)

    def _committed(self, room: Room, count: int) -> None:
        room.committed(count)
        self._carry_out(room)

    def _fail_room(self, room: Room) -> None:
        """A commit carrying this room failed (or its store fell too far behind): reset it.

        Its clients are told to reconnect; they resend what was not confirmed, and the room is
        loaded again from what the store holds, which is everything anyone was shown.
        """
        # A room whose first commit failed was shown to no one (its welcomes were held for that
        # commit), so its successor may start a new epoch.
        self.loaded.unload(room)
        self.committer.forget(room)
        room.fail()
        self._carry_out(room)

    # Time

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
        for outbox in list(self.outboxes.by_session.values()):
            if outbox.sending_since is not None and outbox.sending_since < deadline:
                self.drop(outbox.session, DropReason.SEND_TIMEOUT)

    def heartbeat(self) -> None:
        """A clock tick for every room: pings, and drops of silent clients (`Room.tick`)."""
        for room in list(self.rooms.values()):
            room.tick()
            self._carry_out(room)

    def touch_loaded(self) -> None:
        """Store every loaded room's row again (retention keeps rooms written recently)."""
        for room in list(self.rooms.values()):
            room.mark_changed()
            self._carry_out(room)

    async def purge(self) -> int:
        """Delete the rooms nobody opened for ``room_retention_days`` (see `Retention.purge`)."""
        return await self.retention.purge()
