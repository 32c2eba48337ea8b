"""One room, sans I/O: every protocol decision of a room, and nothing else.

Like `websockets.protocol.Protocol`, a `Room` takes in events and gives back what to do:

* events: a client joins (`join_full_text`, `join_versioned`) or leaves (`leave`); a message
  from a client (`receive`, `handle`, `revert`); the store confirms a commit up to a point
  (`committed`) or fails it (`fail`); updates committed elsewhere arrive (`receive_committed`);
  a clock tick (`tick`);
* actions, taken with `take_actions` (see `rooms.session`): messages for clients, clients that
  left, changes to store.

It runs no tasks, writes no sockets, calls no store and counts no metrics; its clocks are
injected. The driver (`rooms.registry`) carries the actions out.

Durable before visible. Every update is applied at once (the next push rebases on it), but
nothing about it is shown to anyone, its author included, before the store has committed it:
while the room has uncommitted changes, every message for its clients waits in the ``held``
line, in order, and is let go as `committed` reports the commits. All clients therefore see
updates in version order, and everything anyone saw survives a crash.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import structlog

from rooms.access import Access, Role
from rooms.document import ClientId, Document, Update, caret_after
from rooms.errors import ClientIdInUse, InternalError, InvalidMessage, RoomError, RoomFull
from rooms.limits import MessageLimit, TokenBucket, clean_username
from rooms.presence import Presence, UserId
from rooms.protocol import (
    PING,
    AnyClientMessage,
    ClientMessage,
    CodeChangeOut,
    ErrorOut,
    FullTextError,
    Hello,
    WireProtocol,
    encode_update,
    parse_client_message,
)
from rooms.questions import Questions
from rooms.room_messages import FRAME_BYTES_PER_TOKEN, RESTORE_CLIENT, MessageHandling
from rooms.room_runs import QUESTION_CLIENT
from rooms.run_protocol import RunMessage
from rooms.session import (
    CLOSE_NORMAL,
    CLOSE_REPLACED,
    CLOSE_TRY_AGAIN_LATER,
    Action,
    Closing,
    DropReason,
    Left,
    Refused,
    Reset,
    Send,
    Session,
    token_hash,
)
from rooms.settings import Settings
from rooms.store import Record, RoomWrite

log = structlog.get_logger("collab.rooms")

RoomId = str
# The prefix of the client_id of a full-text client's updates (its own seqs count its changes).
FULL_TEXT_CLIENT_PREFIX = "seed-"
# A snapshot is also stored once the changes since the last one pass this many times the
# largest document, in characters of their JSON: reading the text at any version (the rooms
# API, loading a room) then replays a bounded amount, however the updates are sized.
SNAPSHOT_BYTES_PER_DOCUMENT = 1


def check_client_id(client_id: str) -> None:
    """`InvalidMessage` for a client_id the room keeps for itself."""
    if client_id.startswith(FULL_TEXT_CLIENT_PREFIX) or client_id in (RESTORE_CLIENT, QUESTION_CLIENT):
        raise InvalidMessage(
            f"client_id must not start with {FULL_TEXT_CLIENT_PREFIX!r} nor be {RESTORE_CLIENT!r} "
            f"or {QUESTION_CLIENT!r}"
        )


class UpdatesMissing(Exception):
    """Updates committed elsewhere arrived with a gap: those after ``after`` must be read first."""

    def __init__(self, after: int, first: int) -> None:
        self.after = after
        self.first = first
        super().__init__(f"the room is at version {after}, the next update given is {first}")


class UncommittedUpdates(Exception):
    """Updates committed elsewhere arrived while the room has updates of its own not yet
    committed: their versions may be the same. Its commit reads them if it lost (`rebase_over`)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"the room has uncommitted updates up to version {version}")


class Room(MessageHandling):
    """One room: its document, language and members, and every decision about them."""

    def __init__(
        self,
        room_id: RoomId,
        document: Document,
        language: str,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        snapshot_version: int = 0,
        questions: Questions | None = None,
    ) -> None:
        self.room_id = room_id
        self.document = document
        self.language = language
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.presence = Presence()
        self.sessions: dict[UserId, Session] = {}
        # Versioned sessions by client_id: one live connection per client_id at a time.
        self.clients: dict[ClientId, Session] = {}
        # client_id -> token_hash(resume_token) of the client bound to it, least recently used
        # first: while the room remembers a client, only that token speaks for its client_id.
        self.tokens: OrderedDict[ClientId, str] = OrderedDict()
        # Durability: `changes_made` counts the changes to store (updates, language changes),
        # `changes_durable` how many of those are committed; `unsynced` holds the updates not
        # yet taken by `take_write`, `held` the messages (`closing` the sessions to close)
        # waiting for the commit of the change they were made after (with that change's count).
        self.changes_made = 0
        self.changes_durable = 0
        self.unsynced: list[Record] = []
        self.held: deque[tuple[int, Send]] = deque()
        self.closing: deque[tuple[int, Closing]] = deque()
        self.snapshot_version = snapshot_version
        self.snapshot_bytes = 0  # characters of changes stored since the last snapshot
        self.failing = False  # being reset: nothing more is stored or shown
        # Who may do what (`rooms.room_access`): stored with the room when it changes.
        self.access = Access()
        self.notes = ""
        self.link_secrets: dict[str, str] = {}  # link_id -> secret, of links made while loaded
        self.access_changed = self.language_unstored = False  # (`RoomWrite.language_changed`)
        self._actions: list[Action] = []
        self.init_runs(questions)  # the question catalog, and the runs going on (`RunControl`)

    def take_actions(self) -> list[Action]:
        """What the events since the last call ask the driver to do, in order."""
        actions, self._actions = self._actions, []
        return actions

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        return log.bind(room_id=self.room_id)  # type: ignore[no-any-return]

    # Joining and leaving

    def join_full_text(self, username: object, shared: TokenBucket | None = None) -> Session:
        """Admit a full-text client; it gets no reply, the others get ``user_joined``.

        ``shared`` is the bucket of the client's address (every connection from it spends
        from it too); None when the address is unknown. Raises `RoomFull`, and `Forbidden` in
        a private room (the full-text protocol has no credentials)."""
        self.admission(None)
        return self._admit(WireProtocol.FULL_TEXT, username, None, shared)

    def join_versioned(self, hello: Hello, shared: TokenBucket | None = None) -> Session:
        """Admit a versioned client: ``welcome``, then every update it has not seen, in order.

        A client_id is bound to the ``resume_token`` of its first welcome for as long as the
        room remembers the client (in memory and in the store, beside its last seq): a hello
        for a bound client_id without that token is refused, so knowing a client's id is not
        enough to speak for it. A client_id speaks through one connection at a time: a hello
        for a client_id still connected takes the old connection over when it presents that
        connection's ``resume_token`` (the same client reconnecting before the server noticed
        the old socket die), and is refused otherwise (a second copy of the client, such as a
        duplicated tab, whose pushes would collide with the first one's). The catch-up the
        hello asks for is charged to ``shared`` before the client is admitted. Raises
        `InvalidMessage`, `ClientIdInUse`, `RateLimited` or `RoomFull`, and `Forbidden` when
        the room is private and ``hello.token`` is no live link of it (the link gives the role).
        """
        check_client_id(hello.client_id)
        role, link_id = self.admission(hello.token)
        client_id = ClientId(hello.client_id)
        bound = self.tokens.get(client_id)
        existing = self.clients.get(client_id)
        token = hello.resume_token
        if (bound is not None and (token is None or not secrets.compare_digest(token_hash(token), bound))) or (
            existing is not None and (token is None or not secrets.compare_digest(token, existing.resume_token))
        ):
            raise ClientIdInUse()
        if shared is not None:
            self._charge_catch_up(hello, shared)
        if existing is not None:
            self.leave(existing, code=CLOSE_REPLACED, reason="replaced by a newer connection")
        session = self._admit(WireProtocol.VERSIONED, hello.username, client_id, shared, hello, role)
        session.link_id = link_id
        try:
            self._welcome(session, hello)
        except BaseException:
            self.leave(session)  # never leave a half-joined session behind
            raise
        # A stored client without a token (a database from before tokens) binds to this one.
        self.bind(client_id, bound or token_hash(session.resume_token))
        return session

    def _admit(
        self,
        protocol: WireProtocol,
        username: object,
        client_id: ClientId | None,
        shared: TokenBucket | None,
        hello: Hello | None = None,
        role: Role | None = None,
    ) -> Session:
        settings = self.settings
        if len(self.sessions) >= settings.max_members_per_room:
            raise RoomFull(settings.max_members_per_room)
        now = self.clock()
        user_id = UserId(secrets.token_hex(6))
        own = TokenBucket.full(settings.rate_limit_per_second, settings.rate_limit_burst, now)
        session = Session(
            room=self,
            user_id=user_id,
            client_id=client_id or ClientId(f"{FULL_TEXT_CLIENT_PREFIX}{user_id}"),
            protocol=protocol,
            limit=MessageLimit(own, shared),
            last_seen=now,
            batch=hello is not None and hello.batch,
            role=role,
        )
        if hello is not None and hello.resume_token is not None:
            session.resume_token = hello.resume_token
        color = hello.color.lower() if hello is not None and hello.color else None
        name = clean_username(username, settings.max_username_chars)
        member = self.presence.add(user_id, name, color, None if role is None else role.value)
        self._announce_joined(member)  # before registering: the joiner is not told about itself
        self.tell_others("joined", **member.describe())
        self.sessions[user_id] = session
        if protocol is WireProtocol.VERSIONED:
            self.clients[session.client_id] = session
        log.info(
            "member_joined",
            room_id=self.room_id,
            user_id=user_id,
            protocol=protocol.value,
            role=None if role is None else role.value,
        )
        return session

    def bind(self, client_id: ClientId, digest: str) -> None:
        """Bind a client_id to a token hash. Beyond twice ``dedup_clients`` bindings, the least
        recently used are forgotten, but never one of a client whose last seq the document
        still remembers: its seqs would otherwise be open to whoever says hello with its id.
        (The document remembers at most ``dedup_clients``, so there is always one to forget.)"""
        tokens = self.tokens
        tokens[client_id] = digest
        tokens.move_to_end(client_id)
        limit = 2 * self.settings.dedup_clients
        if len(tokens) <= limit:
            return
        # Down to three quarters of the limit in one walk, so that walks are rare: their cost
        # is spread over the hellos that fill the table again.
        document = self.document
        for candidate in list(tokens):
            if len(tokens) <= limit * 3 // 4:
                break
            if candidate != client_id and document.last_seq(candidate) is None:
                del tokens[candidate]

    def leave(
        self, session: Session, drop: DropReason | None = None, *, code: int = CLOSE_NORMAL, reason: str = ""
    ) -> None:
        """Remove a session and tell the others; its connection is to close with ``code``
        (`Left`). ``drop`` says why the driver disconnects a client against its will. Safe to
        call more than once: only the first call counts."""
        if session.closed:
            return
        session.closed = True
        session.close_code = code if drop is None else CLOSE_TRY_AGAIN_LATER
        session.close_reason = reason if drop is None else f"dropped: {drop.value}"
        if self.clients.get(session.client_id) is session:
            del self.clients[session.client_id]
        if self.sessions.get(session.user_id) is session:
            del self.sessions[session.user_id]
            self.presence.remove(session.user_id)
            self._announce_left(session.user_id)
            self.tell_others("left", user_id=session.user_id)
            log.info("member_left", room_id=self.room_id, user_id=session.user_id)
        self.end_runs_of(session)
        self._actions.append(Left(session, drop))

    def tick(self) -> None:
        """The heartbeat: ping every client, and drop versioned clients silent for longer than
        ``heartbeat_timeout_seconds`` (full-text clients need not answer: the transport's own
        pings find their dead sockets)."""
        self.end_overdue_runs()
        deadline = self.clock() - self.settings.heartbeat_timeout_seconds
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.VERSIONED and session.last_seen < deadline:
                self.leave(session, DropReason.HEARTBEAT_TIMEOUT)
            else:
                self._send(Send(session, PING, "ping"))

    # Messages from clients (the dispatch itself is in `MessageHandling`)

    def receive(self, session: Session, frame: str | bytes | ClientMessage) -> str | None:
        """Handle one frame (or an already parsed message) from a client; the type of the
        message, once known.

        Every failure is answered in the session's protocol and none escapes. The rate limit
        is charged before parsing, so a flood of malformed frames is held to the same rate as
        valid ones, and a large frame costs more (parsing is in proportion to it).
        """
        if session.closed:
            return None
        message: AnyClientMessage | RunMessage | None = None
        try:
            size = 0 if isinstance(frame, ClientMessage) else len(frame)
            # Never more than a full bucket, or a frame at the size cap could never pass.
            self.charge(session, min(1 + size // FRAME_BYTES_PER_TOKEN, session.limit.own.burst))
            if isinstance(frame, ClientMessage):
                message = frame  # type: ignore[assignment]
            else:
                message = parse_client_message(frame, self.settings.frame_limit_bytes)
            self.dispatch(session, message)  # type: ignore[arg-type]
        except RoomError as error:
            self.report(session, error)
        except Exception:
            # A bug, not the client's fault: keep the room going and say so.
            log.exception("message_failed", room_id=self.room_id, user_id=session.user_id)
            self.report(session, InternalError())
        return None if message is None else message.type

    def handle(self, session: Session, message: ClientMessage) -> None:
        """Apply one parsed client message. Raises `RoomError` for the caller to `report`."""
        if session.closed:
            return
        self.charge(session, 1)
        self.dispatch(session, message)  # type: ignore[arg-type]

    def charge(self, session: Session, cost: int) -> None:
        """Spend ``cost`` of the session's own and shared buckets (`RateLimited` if short)."""
        now = self.clock()
        session.last_seen = now
        session.limit.charge(now, cost)

    def report(self, session: Session, error: RoomError) -> None:
        """Answer a client message that failed, in the session's protocol; the connection stays.
        A flood gets one reply a second, not one per message it sent."""
        self._actions.append(Refused(session, error))
        if session.closed or not session.limit.reply_due(error, self.clock()):
            return
        log.info("message_rejected", room_id=self.room_id, user_id=session.user_id, error_code=error.code)
        if session.protocol is WireProtocol.FULL_TEXT:
            self._send(Send(session, FullTextError(message=str(error)).encode(), "error"))
        else:
            self._send(Send(session, ErrorOut.of(error).encode(), "error"))

    # Durability

    def take_write(self) -> tuple[RoomWrite, int]:
        """What to commit for the room, and the count of its changes that commit makes durable."""
        records, self.unsynced = self.unsynced, []
        runs, self.finished_runs = self.finished_runs, []
        document = self.document
        document.mark_settle_point()  # this write's head: settled when it is committed
        head = records[-1].version if records else document.version
        self.snapshot_bytes += sum(len(record.changes) for record in records)
        snapshot = None
        settings = self.settings
        if records and (
            head - self.snapshot_version >= settings.snapshot_every
            or self.snapshot_bytes >= SNAPSHOT_BYTES_PER_DOCUMENT * settings.max_document_chars
        ):
            snapshot = document.text  # the text at `head`: every applied update is in `records`
            self.snapshot_version, self.snapshot_bytes = head, 0
        bound = {r.client_id: self.tokens[ClientId(r.client_id)] for r in records if r.client_id in self.tokens}
        access, access_base = None, (self.access_stored, self.notes_stored)
        if self.access_changed or self.language_unstored:  # stored when this write is committed
            self.access_written = self.changes_made
        if self.access_changed:
            access, self.access_changed = self.access.to_json(), False
            self.access_stored, self.notes_stored = access, self.notes
        write = RoomWrite(
            self.room_id,
            document.epoch,
            self.language,
            records,
            snapshot,
            head,
            bound,
            access,
            self.notes,
            access_base=access_base,
            language_changed=self.language_unstored,
            runs=runs,
        )
        self.language_unstored = False
        return write, self.changes_made

    def committed(self, count: int) -> None:
        """The room's first ``count`` changes are durable: let go of what was held for them."""
        self.changes_durable = max(self.changes_durable, count)
        held = self.held
        while held and held[0][0] <= self.changes_durable:
            send = held.popleft()[1]
            session = send.session
            if not (session.closed or session.revoked):  # a revoked one is closed below, told nothing
                self._actions.append(send)
        closing = self.closing
        while closing and closing[0][0] <= self.changes_durable:
            end = closing.popleft()[1]
            self.leave(end.session, code=end.code, reason=end.reason)

    def fail(self) -> None:
        """A commit carrying this room failed, or its store is too far behind: forget what is
        not committed. Every client is told to reconnect; they resend what was not confirmed,
        to a room loaded again from what the store holds, which is everything anyone saw."""
        self.failing = True
        self.held.clear()
        self.closing.clear()
        for session in list(self.sessions.values()):
            self.leave(session, code=CLOSE_TRY_AGAIN_LATER, reason="storage unavailable")

    @property
    def all_durable(self) -> bool:
        return self.changes_durable >= self.changes_made

    def receive_committed(self, records: Sequence[Record]) -> None:
        """Updates committed elsewhere (by another process sharing the room), in version order:
        apply those this room does not have, and show them to every client. Versions it has are
        skipped; a gap raises `UpdatesMissing` (read the missing ones from the store first),
        and a room with changes of its own not yet committed raises `UncommittedUpdates`."""
        document = self.document
        if records and (self.unsynced or not self.all_durable):
            raise UncommittedUpdates(document.version)
        for record in records:
            if record.version <= document.version:
                continue
            if record.version != document.version + 1:
                raise UpdatesMissing(document.version, record.version)
            update = document.append(
                Update(record.version, ClientId(record.client_id), record.seq, record.change_set(), record.user_id)
            )
            others = encode_update(update.version, None, update.seq, record.changes, update.user_id)
            self._broadcast_update(update, None, None, others, record.changes)
        if records:  # then nothing of its own was uncommitted: everything it holds is committed
            self.settle(document.version)

    # Fan-out

    def _send(self, send: Send) -> None:
        """Queue a message for a client, or hold it until the state it was made from is durable."""
        if send.session.closed:
            return
        if self.held or self.changes_durable < self.changes_made:
            self.held.append((self.changes_made, send))
            if not self.failing and len(self.held) > self.settings.outbound_queue_size * max(1, len(self.sessions)):
                # The store is far behind (a stalled disk): holding more would grow without end.
                log.warning("store_too_slow", room_id=self.room_id, held=len(self.held))
                self.failing = True
                self._actions.append(Reset("store too slow"))
            return
        self._actions.append(send)

    def _broadcast_update(
        self, update: Update, author: Session | None, cursor_position: object, others: str, changes: str
    ) -> None:
        """Send an update to every client: with its client_id to the connection of its author's
        client_id (wherever the update was made: a client that moved to this process learns
        here that its push landed), without it to the other versioned clients, and as the
        whole text to full-text clients other than its author."""
        self.presence.map_selections(update.changes)
        full_text: str | None = None  # encoded only if a full-text client needs it
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.VERSIONED:
                if session.client_id == update.client_id:
                    own = encode_update(update.version, update.client_id, update.seq, changes, update.user_id)
                    self._send(Send(session, own, "update"))
                else:
                    self._send(Send(session, others, "update"))
            elif session is not author:
                if full_text is None:
                    position = cursor_position if cursor_position is not None else caret_after(update.changes)
                    user_id = author.user_id if author is not None else update.user_id
                    full_text = CodeChangeOut(
                        code=self.document.text,
                        cursor_position=position,  # type: ignore[arg-type]
                        user_id=user_id,
                    ).encode()
                self._send(Send(session, full_text, "code_change"))
