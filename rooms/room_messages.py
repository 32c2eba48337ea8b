"""What a room does with each message of a client: the message half of `rooms.room.Room`.

Every cost is known and bounded before it is paid: a push's parts are counted before a
ChangeSet is built, and the work of rebasing it (or of mapping a cursor) is read from the
history's running totals and charged to the client's buckets before any of it is done.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Callable

import structlog

from rooms.access import Act, refusal
from rooms.changes import ChangeSet
from rooms.document import ClientId, Document, Unchanged, Update
from rooms.errors import (
    DocumentTooLarge,
    InvalidMessage,
    Resync,
    SeqReused,
    TooComplex,
    VersionFromFuture,
    VersionTooOld,
)
from rooms.limits import TokenBucket, clean_language
from rooms.presence import Member, Presence, Selection, UserId
from rooms.protocol import (
    FULL_TEXT_ONLY,
    PONG,
    VERSIONED_ONLY,
    AnyClientMessage,
    CodeChange,
    CodeChangeOut,
    Cursor,
    CursorOut,
    End,
    Hello,
    Join,
    Language,
    LanguageOut,
    Leave,
    Lock,
    MemberInfo,
    MemberJoined,
    MemberLeft,
    Notes,
    Ping,
    Pong,
    Push,
    Remove,
    Revoke,
    SyncRequest,
    UserJoined,
    UserLeft,
    Welcome,
    WireProtocol,
    encode_ack,
    encode_changes,
    encode_update,
)
from rooms.room_access import ACTS, OPEN_ROOM_CHECKED
from rooms.room_rebase import Made, Rebasing
from rooms.room_remote import RemoteMembers
from rooms.room_runs import RunControl
from rooms.run_protocol import AllowRuns, RunEnd, RunMessage, RunOutput, RunStart, SetQuestion
from rooms.session import CLOSE_NORMAL, STORE, Action, DropReason, Send, Session
from rooms.settings import Settings
from rooms.store import Record

log = structlog.get_logger("collab.rooms")

# The user_id of messages the server itself makes (a `sync_request`'s answer).
SERVER_USER_ID = "server"
# The client_id of updates that restore an earlier version (their seq is the version they make).
RESTORE_CLIENT = "restore"
# Every this many bytes of a frame cost one more rate-limit token (parsing is in proportion).
FRAME_BYTES_PER_TOKEN = 64 * 1024
# A resume is caught up with updates only while they hold at most this many parts per rebase
# step a push may take (`MAX_REBASE_STEPS`); beyond, a snapshot costs less to send.
CATCH_UP_PARTS_PER_REBASE_STEP = 1
# A cursor further behind than this is dropped instead of mapped: it is stale, and the client
# sends a fresh one with its next move.
CURSOR_MAX_LAG = 100
# How the protocols are named in errors.
_PROTOCOL_NAMES = {WireProtocol.FULL_TEXT: "full-text", WireProtocol.VERSIONED: "versioned"}


class MessageHandling(RunControl, Rebasing, RemoteMembers):
    """The decisions a `Room` makes about its clients' messages (see the module docstring);
    who may send which is `AccessControl`'s, running code `RunControl`'s."""

    room_id: str
    document: Document
    language: str
    settings: Settings
    presence: Presence
    sessions: dict[UserId, Session]
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    changes_made: int
    unsynced: list[Record]
    held: deque[tuple[int, Send]]
    failing: bool
    language_unstored: bool
    _actions: list[Action]

    @abstractmethod
    def _send(self, send: Send) -> None: ...

    @abstractmethod
    def charge(self, session: Session, cost: int) -> None: ...

    @abstractmethod
    def leave(
        self, session: Session, drop: DropReason | None = None, *, code: int = CLOSE_NORMAL, reason: str = ""
    ) -> None: ...

    @abstractmethod
    def _broadcast_update(
        self, update: Update, author: Session | None, cursor_position: object, others: str, changes: str
    ) -> None: ...

    def _charge_catch_up(self, hello: Hello, shared: TokenBucket) -> None:
        """Encoding a catch-up costs in proportion to its parts: charged before admission."""
        document = self.document
        if hello.version is None or hello.epoch not in (None, document.epoch):
            return
        try:
            parts = document.rebase_steps(hello.version, 0)
        except (VersionTooOld, VersionFromFuture):
            return  # a snapshot: its cost is one text
        per_token = self.settings.rebase_steps_per_token
        if per_token <= parts <= CATCH_UP_PARTS_PER_REBASE_STEP * self.settings.max_rebase_steps:
            shared.take(self.clock(), parts // per_token)

    def _welcome(self, session: Session, hello: Hello) -> None:
        document = self.document
        catch_up: list[str] | None = None
        budget = self.settings.outbound_queue_chars // 2
        if hello.version is not None and hello.epoch in (None, document.epoch) and self.may_catch_up(session, hello):
            try:
                # A catch-up bigger than half a queue's worth of text is cheaper as a snapshot.
                # Decided from the history's size bookkeeping before anything is encoded; the
                # estimate errs high, and the encoded text is measured again, as it may not.
                # Encoding costs in proportion to the parts: at most what a rebase may walk.
                parts = document.rebase_steps(hello.version, 0)
                if parts <= CATCH_UP_PARTS_PER_REBASE_STEP * self.settings.max_rebase_steps and (
                    document.bytes_since(hello.version) <= budget
                ):
                    catch_up = [encode_update_for(u, session.client_id) for u in document.updates_since(hello.version)]
            except (VersionTooOld, VersionFromFuture):
                catch_up = None  # the client resets to the snapshot in `welcome`
            if catch_up and sum(map(len, catch_up)) > budget:
                catch_up = None
        welcome = Welcome(
            user_id=session.user_id,
            version=document.version if catch_up is None or hello.version is None else hello.version,
            doc=document.text if catch_up is None else None,
            members=[MemberInfo(**m.describe()) for m in self.presence],
            language=self.language,
            epoch=document.epoch,
            resume_token=session.resume_token,
            last_seq=document.last_seq(session.client_id),
            max_change_parts=self.settings.max_change_parts,
            **self.welcome_access(session),
            **self.welcome_runs(),
        )
        cursors = [
            CursorOut(
                user_id=member.user_id,
                anchor=member.selection.anchor,
                head=member.selection.head,
                version=document.version,
            ).encode()
            for member in self.presence
            if member.selection is not None and member.user_id != session.user_id
        ]
        # One burst, so that a long catch-up (up to HISTORY_LIMIT updates) is not taken for a
        # client falling behind.
        self.shown(session, welcome.version)
        after = [(kind, message) for kind, message in self._after_welcome(session) if message is not None]
        burst = (welcome.encode(), *(catch_up or ()), *cursors, *(message for _, message in after))
        counts: dict[str, int] = {"update": len(catch_up or ()), "cursor": len(cursors)}
        for kind, _ in after:
            counts[kind] = counts.get(kind, 0) + 1
        self._send(Send(session, burst, "welcome", extra=tuple(counts.items())))

    def _after_welcome(self, session: Session) -> list[tuple[str, str | None]]:
        """The messages about the room that end a welcome burst, by type (None: none for it):
        its notes, its question, then the runs going (`RunControl.welcome_runs_going`)."""
        return [
            ("notes", self.welcome_notes(session)),
            ("question", self.welcome_question(session)),
            *self.welcome_runs_going(),
        ]

    def dispatch(self, session: Session, message: AnyClientMessage | RunMessage) -> None:
        """Apply one parsed, charged message. Raises `RoomError` for the caller to report."""
        if message.type in (VERSIONED_ONLY if session.protocol is WireProtocol.FULL_TEXT else FULL_TEXT_ONLY):
            raise InvalidMessage(
                f"{message.type} is not a message of the {_PROTOCOL_NAMES[session.protocol]} protocol "
                "this connection speaks"
            )
        # A member of an open room (no role) may send anything but what only interviewers may,
        # and runs while they are allowed: one test on the path every push takes, the table for
        # everything else.
        act = ACTS.get(message.type) if session.role is not None or message.type in OPEN_ROOM_CHECKED else None
        if act is not None and not self.may(session, act):
            error = refusal(session.role, act)
            if isinstance(message, Push):
                error.seq = message.seq  # the client learns which batch was refused
            elif isinstance(message, RunStart):
                error.run_id = message.run_id
            raise error
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
                reply = CodeChangeOut(code=self.document.text, cursor_position=0, user_id=SERVER_USER_ID)
                self._send(Send(session, reply.encode(), "code_change"))
            case Ping():
                self._send(Send(session, PONG, "pong"))
            case Pong():
                pass
            case Leave():
                self.leave(session, code=CLOSE_NORMAL, reason="left")
            case Lock() | Remove() | Revoke() | End() | Notes():
                self.control(session, message)
            case RunStart() | RunOutput() | RunEnd() | SetQuestion() | AllowRuns():
                self.run_message(session, message)
            case Join() | Hello():
                raise InvalidMessage(f"already joined; {message.type} is only valid as the first message")

    def _push(self, session: Session, push: Push) -> None:
        """Apply a push, at a cost known and bounded before any of it is paid: beyond
        ``max_change_parts`` parts it gets `TooComplex`, beyond the rebase bounds `Resync`;
        within them it costs one more token per ``rebase_steps_per_token`` steps."""
        settings = self.settings
        parts = len(push.changes)
        document = self.document
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
            self.charge(session, extra)
        changes = ChangeSet.from_json(push.changes, max_parts=settings.max_change_parts)
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
            made = Made(push.version, changes)
            self.remember(result.version, session.client_id, result.seq, session.user_id, made, new_version=False)
            self._send(Send(session, encode_ack(result.seq, result.version), "ack"))
            return
        self._publish(session, result, Made(push.version, changes))

    def _code_change(self, session: Session, message: CodeChange) -> None:
        session.full_text_seq += 1
        document = self.document
        update = document.replace(message.code, session.client_id, session.full_text_seq, session.user_id)
        if update is not None:
            self._publish(session, update, Made(text=message.code, cursor_position=message.cursor_position))
        else:
            # Same text, maybe a moved cursor: full-text clients relay it as the original did.
            relay = CodeChangeOut(
                code=document.text, cursor_position=message.cursor_position, user_id=session.user_id
            ).encode()
            for other in list(self.sessions.values()):
                if other.protocol is WireProtocol.FULL_TEXT and other is not session:
                    self._send(Send(other, relay, "code_change"))
        position = message.cursor_position
        if isinstance(position, int) and not isinstance(position, bool) and 0 <= position <= document.length:
            self._set_cursor(session, Selection(position, position))

    def _cursor(self, session: Session, cursor: Cursor) -> None:
        document = self.document
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
            self.charge(session, extra)
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
        self.presence.set_selection(session.user_id, selection)
        cursor = CursorOut(
            user_id=session.user_id, anchor=selection.anchor, head=selection.head, version=self.document.version
        )
        message = cursor.encode()
        if self.remote is not None:
            at = {"anchor": selection.anchor, "head": selection.head, "version": cursor.version}
            self.tell_others("cursor", user_id=session.user_id, **at)
        for other in list(self.sessions.values()):
            if other.protocol is WireProtocol.VERSIONED and other is not session:
                self._send(Send(other, message, "cursor"))

    def _language(self, session: Session, message: Language) -> None:
        self.language = clean_language(message.language)
        self.language_unstored = True
        self.mark_changed()
        out = LanguageOut(language=self.language, user_id=session.user_id).encode()
        self.tell_others("language", language=self.language, user_id=session.user_id)
        for other in list(self.sessions.values()):
            if other.protocol is WireProtocol.VERSIONED:
                self._send(Send(other, out, "language"))
        log.info("language_changed", room_id=self.room_id, user_id=session.user_id, language=self.language)

    def revert(self, session: Session, version: int, text: str) -> Update | None:
        """Make ``text`` (the room's text at ``version``) the current text, as a new update by
        the session's user: history is never rewritten. None when the text is already that.
        Raises `RoomError` (`RateLimited`, `DocumentTooLarge`...)."""
        if session.closed:
            return None
        self.charge(session, 1)
        self.check(session, Act.RESTORE)
        document = self.document
        update = document.replace(text, ClientId(RESTORE_CLIENT), document.version + 1, session.user_id)
        if update is None:
            return None
        self._publish(session, update, Made(text=text, seq_is_version=True))
        return update

    def _publish(self, session: Session | None, update: Update, made: Made) -> None:
        """An update a client made (``made`` says how) was applied: store it, and show it once
        stored. ``session`` is its author's, None when the author left (`Rebasing`)."""
        changes = encode_changes(update.changes.to_json())
        member = self.presence.get(UserId(update.user_id))
        self.unsynced.append(
            Record(
                version=update.version,
                client_id=update.client_id,
                seq=update.seq,
                changes=changes,
                user_id=update.user_id,
                author=member.username if member is not None else "",
                color=member.color if member is not None else "",
                time=self.wall_clock(),
            )
        )
        self.remember(update.version, update.client_id, update.seq, update.user_id, made)
        self.mark_changed()
        # Encoded once for everyone but its author, not once per recipient.
        others = encode_update(update.version, None, update.seq, changes, update.user_id)
        self._broadcast_update(update, session, made.cursor_position, others, changes)

    def mark_changed(self) -> None:
        """A change to store: nothing shown to the room's clients from now on is shown before
        the commit that carries it has returned."""
        self.changes_made += 1
        if not self.failing:
            self._actions.append(STORE)

    def _announce_joined(self, member: Member) -> None:
        full_text = UserJoined(user_id=member.user_id, username=member.username).encode()
        versioned = MemberJoined(
            user_id=member.user_id, username=member.username, color=member.color, role=member.role
        ).encode()
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.FULL_TEXT:
                self._send(Send(session, full_text, "user_joined"))
            else:
                self._send(Send(session, versioned, "member_joined"))

    def _announce_left(self, user_id: UserId) -> None:
        full_text = UserLeft(user_id=user_id).encode()
        versioned = MemberLeft(user_id=user_id).encode()
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.FULL_TEXT:
                self._send(Send(session, full_text, "user_left"))
            else:
                self._send(Send(session, versioned, "member_left"))


def encode_update_for(update: Update, recipient: ClientId | None) -> str:
    """An update as ``recipient`` gets it: with its client_id only when it is the author."""
    changes = encode_changes(update.changes.to_json())
    client_id = update.client_id if update.client_id == recipient else None
    return encode_update(update.version, client_id, update.seq, changes, update.user_id)
