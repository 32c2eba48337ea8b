"""The client side of the versioned protocol: one replica of a room's document.

This is the reference implementation of the algorithm every client runs: the browser's
``ui/collab_client.js`` does the same with CodeMirror's own ChangeSet, and
``tests/test_client_differential.py`` holds the two to the same answers; the tests and the load
generator use it to drive real servers. It is pure: messages in, messages to send out.

State: ``version`` (the last server version applied), ``base`` (the server's text at ``version``),
``inflight`` (one sent batch, not yet confirmed, with its ``seq``) and ``pending`` (local changes
composed, not yet sent). A remote update ``U`` is rebased past local work with the same tie-break
as the server (the earlier-committed insert first), so every replica converges on the server's text::

    inflight' = inflight.map(U);  U1 = U.map(inflight, before=True)
    pending'  = pending.map(U1);  U2 = U1.map(pending, before=True);  apply U2

A push that changes nothing on the server is confirmed by an ``ack`` instead of an ``update``.
A batch with more parts than the server takes (``max_change_parts`` in ``welcome``) is sent as
one replacement of the span it touches; a ``resync`` error is answered by catching up with
``hello`` and sending the same batch again (`resync`). In a private room the welcome's ``role``
and the room's lock and end decide what is sent; a hello refused as ``forbidden`` is final.

Two ways to drive it: message by message (`welcome`, `update`, `ack`: each returns the push that
became due, and refuses a message that does not fit), or frame by frame as the browser does
(`receive`: every message of a frame, answering errors and gaps with a new ``hello``, and the
pushes that are due once the whole frame is handled).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rooms.access import SHARED_ROLES, Act, Role, allowed
from rooms.changes import ChangeSet, utf16_len, utf16_to_index
from rooms.errors import InvalidMessage

# Errors whose answer needs a clock (a retry later): the caller's. All but `rate_limited` end
# the conversation until a new hello.
CALLER_ERRORS = frozenset({"rate_limited", "internal_error", "room_full", "server_restarting"})
# The server refused our batch: start again from a snapshot (and offer our text).
REFUSED = frozenset({"version_too_old", "invalid_changes", "too_large", "invalid_version", "too_complex", "read_only"})


@dataclass(frozen=True, slots=True)
class Inflight:
    """A sent batch. Its ``changes`` are kept rebased onto the replica's current ``version``.
    ``coarse``: already resent as one replacement after ``too_complex`` (never twice)."""

    seq: int
    changes: ChangeSet
    coarse: bool = False


@dataclass(frozen=True, slots=True)
class Offer:
    """Local text the room will not get (``reason``: stale, reset, history, duplicate)."""

    reason: str
    text: str


@dataclass(slots=True)
class Received:
    """What one frame asks of the replica's driver."""

    send: list[dict[str, Any]] = field(default_factory=list)
    hello: bool = False  # say hello again (`hello`): the conversation so far is over
    offer: Offer | None = None
    notice: str | None = None  # the code of an error to tell the user about
    error: dict[str, Any] | None = None  # an error to retry after a delay (`CALLER_ERRORS`)
    language: str | None = None
    authors: list[str] = field(default_factory=list)  # the user_id of each update applied, in order
    due: bool = False  # unconfirmed work goes out once the frame is handled
    notes: str | None = None  # the interviewers' notes (sent to interviewers only)
    links: dict[str, str | None] = field(default_factory=dict)  # role -> its link's secret (None: no live link)
    denied: str | None = None  # why our hello was refused for good (`forbidden`): no hello follows


def _new_identity() -> tuple[str, str]:
    return "r-" + secrets.token_hex(12), secrets.token_urlsafe(16)


def map_pos_back(changes: ChangeSet, pos: int) -> int:
    """Where ``pos`` in the text after ``changes`` was before them: CodeMirror's
    ``changes.invertedDesc.mapPos(pos, -1)`` (an inserted position goes to the insertion point)."""
    for from_a, _, from_b, to_b, _ in changes.iter_changes(individual=True):
        if pos < from_b:
            return from_a - (from_b - pos)
        if pos < to_b or pos == from_b == to_b:
            return from_a
    return min(changes.length, pos + changes.length - changes.new_length)


class Replica:
    """One client's copy of a room's document."""

    def __init__(self, client_id: str, text: str = "", version: int = 0, next_seq: int = 1) -> None:
        self.client_id = client_id
        self.text = text
        self.version = version
        self.next_seq = next_seq
        self.inflight: Inflight | None = None
        self.pending: ChangeSet | None = None
        # The document's epoch from the last welcome (a version means nothing in another one),
        # and our own secret that lets a reconnect take over a connection the server still holds.
        self.epoch: str | None = None
        self.resume_token = secrets.token_urlsafe(16)
        # The most parts the server takes in one push (from `welcome`); None: no limit known.
        self.max_change_parts: int | None = None
        # Pushes go out only between a welcome and the next hello. A replica made at a version
        # speaks as welcomed until its first hello.
        self.live = True
        # Our text no longer fits the server's: the next hello asks for a snapshot.
        self.needs_snapshot = False
        self.user_id: str | None = None
        # Other members' selections (anchor, head) in the replica's text, moved by every change.
        self.cursors: dict[str, tuple[int, int]] = {}
        # A private room's role for this member, and whether the room is locked or ended.
        self.role: Role | None = None
        self.locked = self.ended = False
        # A new (client_id, resume_token), for when the server says another client holds ours.
        self.new_identity: Callable[[], tuple[str, str]] = _new_identity
        # `base` is needed only to coarsen a batch in flight, and equals `text` while nothing is
        # unconfirmed; otherwise it is the text at the first unconfirmed edit and the changes
        # confirmed since, applied when asked for (a replica that keeps no text never pays).
        self._base: str | None = None
        self._base_behind: list[ChangeSet] = []

    def __copy__(self) -> Replica:
        """An independent copy (a saved session): ChangeSets are immutable and shared."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.cursors = dict(self.cursors)
        twin._base_behind = list(self._base_behind)
        return twin

    @property
    def has_unconfirmed(self) -> bool:
        return self.inflight is not None or self.pending is not None

    @property
    def base(self) -> str:
        """The server's text at ``version``."""
        if self._base is None:
            return self.text
        for changes in self._base_behind:
            self._base = changes.apply(self._base)
        self._base_behind.clear()
        return self._base

    def _settle_base(self) -> None:
        if not self.has_unconfirmed:
            self._base = None
            self._base_behind.clear()

    @property
    def synced_version(self) -> int | None:
        """The version a hello resumes from; None when a snapshot is due."""
        return None if self.needs_snapshot else self.version

    @property
    def unconfirmed(self) -> ChangeSet | None:
        """Every local change the server has not confirmed, from ``base`` to ``text``."""
        if self.inflight is not None and self.pending is not None:
            return self.inflight.changes.compose(self.pending)
        return self.inflight.changes if self.inflight is not None else self.pending

    def hello(self, username: str, *, resume: bool = True) -> dict[str, Any]:
        self.live = False
        resume = resume and not self.needs_snapshot
        message: dict[str, Any] = {"type": "hello", "client_id": self.client_id, "username": username}
        message["version"] = self.version if resume else None
        if resume and self.epoch is not None:
            message["epoch"] = self.epoch
        message["resume_token"] = self.resume_token
        return message

    def edit(self, changes: ChangeSet) -> dict[str, Any] | None:
        """Apply a local edit; returns the push to send, if nothing is in flight."""
        if not self.has_unconfirmed:
            self._base, self._base_behind = self.text, []
        self._apply(changes)
        self._move_cursors(changes)
        self.pending = changes if self.pending is None else self.pending.compose(changes)
        return self.flush()

    def flush(self) -> dict[str, Any] | None:
        """Send pending work if nothing is in flight."""
        if not self.live or self.inflight is not None or self.pending is None:
            return None
        pending = self.pending
        if self.max_change_parts is not None and pending.part_count > self.max_change_parts:
            pending = self._coarsened(pending, self.text)  # nothing in flight: text = base + pending
        self.inflight, self.pending = Inflight(self.next_seq, pending), None
        self.next_seq += 1
        return self._push(self.inflight)

    @staticmethod
    def _coarsened(changes: ChangeSet, after: str) -> ChangeSet:
        """``changes`` (which made ``after``) as one replacement of the span they touch (at most
        three parts, never too complex): all between the first and last change is inserted again."""
        touched = [(from_a, to_a) for from_a, to_a, _, _, _ in changes.iter_changes()]
        if not touched:
            return changes
        start, end = touched[0][0], touched[-1][1]  # in the document before the changes
        new_end = changes.new_length - (changes.length - end)
        inserted = after[utf16_to_index(after, start) : utf16_to_index(after, new_end)]
        return ChangeSet.of_replace(changes.length, start, end, inserted)

    def resync(self, username: str) -> dict[str, Any]:
        """After a ``resync`` error: the ``hello`` that catches up; the refused batch stays in flight, for
        `resend` once the catch-up is applied (`welcome` resends it, or reports it lost given a snapshot)."""
        return self.hello(username)

    def resend(self) -> dict[str, Any] | None:
        """After a reconnect: the in-flight batch again, same seq (the server applies it once)."""
        if not self.live:
            return None
        return self.flush() if self.inflight is None else self._push(self.inflight)

    def _push(self, inflight: Inflight) -> dict[str, Any]:
        # The changes were rebased over every update received since they were made, so they
        # apply to the current version; a resend the server already applied is ignored by seq.
        return {"type": "push", "version": self.version, "seq": inflight.seq, "changes": inflight.changes.to_json()}

    def cursor(self, anchor: int, head: int) -> dict[str, Any] | None:
        """Our selection as a ``cursor`` message: in the server's text at ``version``, back
        through our unconfirmed changes."""
        if not self.live or not allowed(self.role, Act.CURSOR, locked=self.locked, ended=self.ended):
            return None  # the server would refuse it
        local = self.unconfirmed
        if local is not None:
            anchor, head = map_pos_back(local, anchor), map_pos_back(local, head)
        return {"type": "cursor", "version": self.version, "anchor": anchor, "head": head}

    # ---- message by message -------------------------------------------------------------------

    def welcome(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Handle ``welcome``; returns the resend of unconfirmed work, if any. A ``doc`` (the
        server could not resume from our version) drops local work it does not already hold,
        which cannot be rebased onto it: `UnconfirmedWorkLost`."""
        self.epoch = message.get("epoch", self.epoch)
        self.max_change_parts = message.get("max_change_parts", self.max_change_parts)
        last_seq = message.get("last_seq")
        if last_seq is not None:  # never reuse a seq the server applied (seq_reused), even if our state was lost
            self.next_seq = max(self.next_seq, int(last_seq) + 1)
        self.cursors.clear()
        doc = message.get("doc")
        if doc is not None:
            lost = self._lost_to_snapshot(last_seq)
            self._snapshot(doc, int(message["version"]))
            self.live = True
            if lost:
                raise UnconfirmedWorkLost(self.version)
            return None
        if int(message["version"]) != self.version:
            raise InvalidMessage(f"welcome resumes at {message['version']}, the replica is at {self.version}")
        self.live = True
        if self.inflight is not None:
            # The server's history must reach back to our in-flight base for a resend to rebase.
            return self._push(self.inflight)
        return self.flush()

    def update(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one server ``update``; returns the next push, when one becomes due."""
        version = int(message["version"])
        if version != self.version + 1:
            raise InvalidMessage(f"update {version} does not follow version {self.version}")
        return self.flush() if self._update(message) else None

    def ack(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Handle ``ack``: the in-flight batch changed nothing on the server (no version was
        made); it is confirmed as it is and pending work is sent. Returns the next push."""
        inflight = self.inflight
        if inflight is None or message.get("seq") != inflight.seq:
            return None  # an ack of a batch already confirmed (a resend acked twice)
        if int(message["version"]) != self.version:
            raise InvalidMessage(f"ack at version {message['version']}, the replica is at {self.version}")
        if not inflight.changes.is_empty:
            raise InvalidMessage(f"ack of seq {inflight.seq}, whose changes are not empty here")
        self.inflight = None
        self._settle_base()
        return self.flush()

    # ---- frame by frame -------------------------------------------------------------------------

    def receive(self, messages: list[dict[str, Any]]) -> Received:
        """Handle one frame as the browser does. Handling stops at the first message that asks
        for a new hello (the rest belongs to a conversation that is over); a message that fails
        asks for a snapshot. Unconfirmed work due after the frame (after a welcome: once the
        catch-up that follows it is applied) is in ``send``."""
        out = Received()
        for message in messages:
            try:
                self._handle(message, out)
            except Exception:  # whatever failed, our text may no longer fit the server's
                self.needs_snapshot = True
                out.hello = True
            if out.hello or out.denied is not None:
                self.live = False
                return out
        if out.due and (push := self.resend()) is not None:
            out.send.append(push)
        return out

    def _handle(self, message: dict[str, Any], out: Received) -> None:
        kind = message.get("type")
        if kind == "welcome":
            self._on_welcome(message, out)
        elif kind == "update":
            version = int(message["version"])
            if not self.needs_snapshot and version <= self.version:
                return  # a repeated message
            if self.needs_snapshot or version != self.version + 1:
                out.hello = True  # a gap: the catch-up fills it
            else:
                out.due = self._update(message) or out.due
                if isinstance(author := message.get("user_id"), str) and author:
                    out.authors.append(author)
        elif kind == "ack":
            inflight = self.inflight
            if inflight is not None and message.get("seq") == inflight.seq and message.get("version") == self.version:
                self.inflight = None
                self._settle_base()
                out.due = True
        elif kind == "cursor":
            self._on_cursor(message)
        elif kind == "member_left":
            self.cursors.pop(message["user_id"], None)
        elif kind == "language":
            out.language = message["language"]
        elif kind == "locked":
            self.locked = message.get("locked") is True
        elif kind == "ended":
            self.ended = True
        elif kind == "notes" and isinstance(message.get("text"), str):
            out.notes = message["text"]
        elif kind == "link" and message.get("role") in SHARED_ROLES and isinstance(message.get("token"), str | None):
            out.links[message["role"]] = message.get("token")  # to interviewers, once the change is stored
        elif kind == "ping" and self.live:
            out.send.append({"type": "pong"})
        elif kind == "error":
            self._on_error(message, out)

    def _on_welcome(self, message: dict[str, Any], out: Received) -> None:
        self.user_id = message.get("user_id")
        self.max_change_parts = message.get("max_change_parts", self.max_change_parts)
        last_seq = message.get("last_seq")
        had_work = self.has_unconfirmed
        if last_seq is not None and not self.needs_snapshot and last_seq >= self.next_seq:
            # The room applied a push of ours that this state never made: it is an older copy of
            # it (a restored session). Its unconfirmed work may be in the room already.
            self.inflight = self.pending = None
            self._settle_base()
            self.next_seq = last_seq + 1
            self.needs_snapshot = out.hello = True
            if had_work:
                out.offer = Offer("stale", self.text)
            return
        new_epoch = self.epoch is not None and self.epoch != message.get("epoch")
        self.epoch = message.get("epoch")
        if last_seq is not None:
            self.next_seq = max(self.next_seq, last_seq + 1)
        self.cursors.clear()
        self.role = Role(message["role"]) if message.get("role") is not None else None
        self.locked, self.ended = message.get("locked") is True, message.get("ended") is True
        doc = message.get("doc")
        if doc is not None:
            lost = self._lost_to_snapshot(last_seq)
            shown = self.text
            self._snapshot(doc, int(message["version"]))
            if shown != doc and new_epoch:
                out.offer = Offer("reset", shown)
            elif shown != doc and lost:
                out.offer = Offer("history", shown)
        elif self.needs_snapshot or message["version"] != self.version:
            self.needs_snapshot = out.hello = True
            return
        self.live = True
        out.language = message.get("language")
        out.due = True

    def _on_cursor(self, message: dict[str, Any]) -> None:
        if message["user_id"] == self.user_id or self.needs_snapshot or message["version"] != self.version:
            return
        local, length = self.unconfirmed, self.length

        def to_local(pos: int) -> int:
            return min(local.map_pos(pos, -1) if local is not None else pos, length)

        self.cursors[message["user_id"]] = (to_local(message["anchor"]), to_local(message["head"]))

    def _on_error(self, message: dict[str, Any], out: Received) -> None:
        code = message.get("code")
        inflight = self.inflight
        seq = message.get("seq")
        if code in CALLER_ERRORS:
            if code != "rate_limited":
                self.live = False
            out.error = message
        elif code == "resync":
            # Kept as it is and sent again after the catch-up: one replacement made now would be
            # merged over the whole catch-up and could bring back text others deleted meanwhile.
            if seq is None or (inflight is not None and seq == inflight.seq):
                out.hello = True
        elif code == "too_complex" and inflight is not None:
            # Sent again as one replacement, once: a second answer is to an earlier send of the
            # same batch, and an answer about another seq is a late one.
            if (seq is None or seq == inflight.seq) and not inflight.coarse:
                coarse = self._coarsened(inflight.changes, inflight.changes.apply(self.base))
                self.inflight = Inflight(inflight.seq, coarse, coarse=True)
                out.due = True
        elif code == "invalid_message" and inflight is not None:
            self.needs_snapshot = out.hello = True
        elif code in ("client_id_in_use", "seq_reused"):
            # Another copy of this client holds our client_id: carry on as a new client; our
            # unconfirmed text is offered, since sent under a new id it could be applied twice.
            had_work = self.has_unconfirmed
            self.client_id, self.resume_token = self.new_identity()
            self.epoch = self.inflight = self.pending = None
            self._settle_base()
            self.next_seq = 1
            self.cursors.clear()
            self.needs_snapshot = out.hello = True
            if had_work:
                out.offer = Offer("duplicate", self.text)
        elif code == "forbidden" and not self.live:
            out.denied = str(message.get("message") or "")  # a revoked link, the end of the interview
        elif code in REFUSED:
            out.notice = code
            self.needs_snapshot = out.hello = True
        else:
            out.notice = code

    # ---- shared -------------------------------------------------------------------------------

    def _update(self, message: dict[str, Any]) -> bool:
        """Apply the update that follows ``version``; True when it confirms our batch."""
        inflight = self.inflight
        # Only the author's copy of an update carries its client_id.
        if inflight is not None and message.get("client_id") == self.client_id and message["seq"] == inflight.seq:
            # The server applied our batch as `changes`, which the replica already shows.
            self._base_behind.append(inflight.changes)
            self.version = int(message["version"])
            self.inflight = None
            self._settle_base()
            return True
        # Worked out before anything changes, so a failure leaves the replica as it was.
        received = remote = ChangeSet.from_json(message["changes"])
        rebased = None
        if inflight is not None:
            rebased = Inflight(inflight.seq, inflight.changes.map(remote), inflight.coarse)
            remote = remote.map(inflight.changes, True)
        pending = None
        if self.pending is not None:
            pending = self.pending.map(remote)
            remote = remote.map(self.pending, True)
        self._apply(remote)
        self._move_cursors(remote)
        self.version, self.inflight, self.pending = int(message["version"]), rebased, pending
        self._base_behind.append(received)
        self._settle_base()
        return False

    def _lost_to_snapshot(self, last_seq: int | None) -> bool:
        """Whether a snapshot loses local work: it holds the batch in flight if the server
        applied it; anything else cannot be rebased onto it."""
        applied = self.inflight is not None and last_seq is not None and self.inflight.seq <= last_seq
        return self.pending is not None or (self.inflight is not None and not applied)

    def _apply(self, changes: ChangeSet) -> None:
        """Show changes made at the replica's current text (local, or remote and rebased)."""
        self.text = changes.apply(self.text)

    def _move_cursors(self, changes: ChangeSet) -> None:
        for user_id, (anchor, head) in self.cursors.items():
            self.cursors[user_id] = (changes.map_pos(anchor, -1), changes.map_pos(head, -1))

    def _reset(self, doc: str) -> None:
        """Start over from a snapshot of the server's text."""
        self.text = doc

    def _snapshot(self, doc: str, version: int) -> None:
        self._reset(doc)
        self.version, self.inflight, self.pending, self.needs_snapshot = version, None, None, False
        self._settle_base()

    @property
    def length(self) -> int:
        return utf16_len(self.text)


class UnconfirmedWorkLost(Exception):
    """The server reset this replica to a snapshot; its unconfirmed edits could not be kept."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"the server no longer has the history to rebase local edits (reset to version {version})")
