"""When a room is shared by several processes: a commit that lost the race, made again.

The database decides the order of a shared room (`rooms.store.postgres`): a process commits
version N+1 only if nobody else has. A process whose commit lost reads what the others
committed since its last commit and hands it to `Rebasing.rebase_over`, which

* takes back the room's own updates not yet committed (`Document.rollback`): nobody has seen
  them, since nothing is shown before its commit;
* applies the others' updates, and shows them to every client in version order;
* makes its own updates again from what the clients sent (`Pending`): a push is rebased over
  everything committed since the version it was made at, exactly as it would have been had it
  arrived after the others' updates, so clients' own rebasing agrees; a whole text (full-text
  clients, a restore, a question's starter code) is set again;

and the driver commits the result. What was held for the updates taken back (their messages,
cursor moves made against them) is dropped and made again; a member welcomed against them is
asked to reconnect (it is welcomed again, against the committed text).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from rooms.changes import ChangeSet
from rooms.document import ClientId, Document, Unchanged, Update
from rooms.errors import RoomError
from rooms.presence import Presence, Selection, UserId
from rooms.protocol import CodeChangeOut, WireProtocol, encode_ack, encode_update
from rooms.session import CLOSE_TRY_AGAIN_LATER, Action, DropReason, Send, Session
from rooms.settings import Settings
from rooms.store import Record

# Held messages made from the text at a version (theirs, or a welcome burst's newest): those
# after the last committed version are dropped when the text after it is taken back.
_VERSIONED = frozenset({"update", "ack", "cursor", "welcome"})


def _top_version(message: str | tuple[str, ...]) -> int:
    """The newest version a held message (or burst) was made at."""
    frames = (message,) if isinstance(message, str) else message
    versions = [json.loads(frame).get("version") for frame in frames]
    return max((version for version in versions if type(version) is int), default=0)


@dataclass(frozen=True, slots=True)
class Made:
    """How an update was made, to make it again: a push as its client sent it (``base`` and
    ``changes``), or a whole text (``text``; ``if_empty``: only into an empty document, as a
    question's starter code; ``seq_is_version``: its seq is the version it makes, as a
    restore's)."""

    base: int = 0
    changes: ChangeSet | None = None
    text: str | None = None
    if_empty: bool = False
    seq_is_version: bool = False
    cursor_position: object = None


@dataclass(frozen=True, slots=True)
class Pending:
    """An update not yet committed, and how it was made."""

    version: int  # the version it made (the version it was applied at, when it made none)
    client_id: ClientId
    seq: int
    user_id: str
    made: Made
    new_version: bool = True  # False: a push that changed nothing (it was only acknowledged)


class Rebasing:
    """The part of a `Room` that makes a lost commit again (see the module docstring)."""

    document: Document
    settings: Settings
    presence: Presence
    sessions: dict[UserId, Session]
    clients: dict[ClientId, Session]
    unsynced: list[Record]
    held: deque[tuple[int, Send]]
    snapshot_version: int
    _actions: list[Action]
    # None unless the room is shared (`share`): the updates not yet committed, oldest first.
    pending: deque[Pending] | None = None

    @abstractmethod
    def _send(self, send: Send) -> None: ...

    @abstractmethod
    def _publish(self, session: Session | None, update: Update, made: Made) -> None: ...

    @abstractmethod
    def report(self, session: Session, error: RoomError) -> None: ...

    @abstractmethod
    def leave(
        self, session: Session, drop: DropReason | None = None, *, code: int = ..., reason: str = ...
    ) -> None: ...

    @abstractmethod
    def _broadcast_update(
        self, update: Update, author: Session | None, cursor_position: object, others: str, changes: str
    ) -> None: ...

    def share(self) -> None:
        """Other processes commit to this room too: remember how each update was made until
        it is committed, so that a lost commit can be made again."""
        if self.pending is None:
            self.pending = deque()
            self.document.keep_undo()

    def remember(
        self, version: int, client_id: ClientId, seq: int, user_id: str, made: Made, new_version: bool = True
    ) -> None:
        """A push or text was applied at ``version`` (``made`` says how; a push that changed
        nothing too: its acknowledgement is made again with it): kept until ``version`` is
        committed, when the room is shared."""
        if self.pending is not None:
            self.pending.append(Pending(version, client_id, seq, user_id, made, new_version))

    @property
    def committed_version(self) -> int:
        """The newest version committed: the document's, less the versions of its own updates
        not yet committed."""
        pending = self.pending
        return self.document.version - (sum(entry.new_version for entry in pending) if pending else 0)

    def settle(self, version: int) -> None:
        """Every update up to ``version`` is committed (by this process or another)."""
        pending = self.pending
        if pending is None:
            return
        while pending and pending[0].version <= version:
            pending.popleft()
        self.document.settle(version)

    def rebase_over(self, committed: int, records: Sequence[Record]) -> int:
        """This room's commit of the updates after ``committed`` lost: ``records`` are those
        the store holds after ``committed``, in version order. Take this room's own updates
        back, apply ``records``, make the room's updates again over them; the number of its
        updates that are now nothing (a resend committed elsewhere, or changes already made).

        Raises `ValueError` when the room is not shared or ``records`` do not follow
        ``committed`` (then the room must be reset)."""
        pending = self.pending
        if pending is None:
            raise ValueError("the room is not shared: there is nothing to make again")
        document = self.document
        if any(record.version != committed + 1 + index for index, record in enumerate(records)):
            raise ValueError(f"the records given do not follow version {committed}")
        again = [entry for entry in pending if entry.version > committed]
        document.rollback(committed)
        pending.clear()
        self.unsynced = []
        self.snapshot_version = min(self.snapshot_version, committed)
        welcomed = self._drop_held_made_from_text(committed)
        length = document.length
        for member in self.presence:  # moved over updates taken back: kept inside the text
            if member.selection is not None:
                selection = member.selection
                self.presence.set_selection(
                    member.user_id, Selection(min(selection.anchor, length), min(selection.head, length))
                )
        for record in records:
            update = document.append(
                Update(record.version, ClientId(record.client_id), record.seq, record.change_set(), record.user_id)
            )
            others = encode_update(update.version, None, update.seq, record.changes, update.user_id)
            self._broadcast_update(update, None, None, others, record.changes)
        document.settle(document.version)
        nothing = sum(1 for entry in again if not self._make_again(entry))
        for session in welcomed:
            self.leave(session, code=CLOSE_TRY_AGAIN_LATER, reason="the room moved on: reconnect")
        # Full-text clients: the text as it is now (an author gets no copy of its own change, and
        # may have been shown the winner's text above).
        text = CodeChangeOut(code=document.text, user_id="").encode()
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.FULL_TEXT:
                self._send(Send(session, text, "code_change"))
        return nothing

    def _drop_held_made_from_text(self, committed: int) -> list[Session]:
        """Drop the held messages made from the text after ``committed`` (being taken back):
        updates, acknowledgements, cursors and welcomes at a later version, and every
        full-text message (they carry no version: the text is sent again). The sessions whose
        welcome was dropped."""
        kept: deque[tuple[int, Send]] = deque()
        welcomed: list[Session] = []
        for count, send in self.held:
            if send.kind == "code_change":
                continue
            if send.kind in _VERSIONED and _top_version(send.message) > committed:
                if send.kind == "welcome":
                    welcomed.append(send.session)
                continue
            kept.append((count, send))
        self.held = kept
        return welcomed

    def _make_again(self, entry: Pending) -> bool:
        """Apply a pending update again on top of the document; False if it is nothing now."""
        document = self.document
        made = entry.made
        author = self.clients.get(entry.client_id) or self.sessions.get(UserId(entry.user_id))
        result: Update | Unchanged | None
        try:
            if made.changes is not None:
                settings = self.settings
                result = document.push(
                    entry.client_id,
                    entry.seq,
                    made.base,
                    made.changes,
                    entry.user_id,
                    max_versions=settings.max_rebase_versions,
                    max_steps=settings.max_rebase_steps,
                )
                if isinstance(result, Unchanged):
                    self.remember(result.version, entry.client_id, entry.seq, entry.user_id, made, new_version=False)
                    if author is not None:
                        self._send(Send(author, encode_ack(result.seq, result.version), "ack"))
                    return False
            else:
                assert made.text is not None
                if made.if_empty and document.text.strip():
                    return False
                seq = document.version + 1 if made.seq_is_version else entry.seq
                result = document.replace(made.text, entry.client_id, seq, entry.user_id)
        except RoomError as error:
            if author is not None:
                error.seq = entry.seq if made.changes is not None else None
                self.report(author, error)
            return False
        if result is None:
            return False
        self._publish(author, result, made)
        return True
