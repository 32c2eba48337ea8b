"""Who may do what in a room, decided per message: the access half of `rooms.room.Room`.

A private room admits a versioned client only with a live link's secret (`admission`), and the
link decides its role. Every message is checked against the permission table
(`rooms.access.allowed`) when it arrives, so a lock, a revocation or the end of the interview
takes effect for the next message of everyone concerned. Interviewers control the room with
``lock``, ``remove``, ``revoke`` and ``end``, and share notes that no other role's connection is
ever sent. Access changes and notes are stored with the room, like its language: durable
before anyone is told.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from rooms.access import SHARED_ROLES, Access, Act, Role, admit, allowed, merge, refusal
from rooms.document import Document
from rooms.errors import Forbidden, InvalidMessage
from rooms.presence import Presence, UserId
from rooms.protocol import (
    End,
    EndedOut,
    Hello,
    LinkOut,
    Lock,
    LockedOut,
    Notes,
    NotesOut,
    Remove,
    Revoke,
    WireProtocol,
)
from rooms.run_protocol import RunsAllowedOut
from rooms.session import CLOSE_REVOKED, Closing, Send, Session
from rooms.settings import Settings

log = structlog.get_logger("collab.rooms")

# The act of each message type the permission table decides; the others are always allowed.
ACTS = {
    "push": Act.EDIT,
    "code_change": Act.EDIT,
    "language": Act.LANGUAGE,
    "cursor": Act.CURSOR,
    "notes": Act.NOTES,
    "lock": Act.CONTROL,
    "remove": Act.CONTROL,
    "revoke": Act.CONTROL,
    "end": Act.CONTROL,
    "allow_runs": Act.CONTROL,
    "run_start": Act.RUN,
    "question": Act.QUESTION,
}
# The message types a member of an open room may be refused (the others it may always send):
# NOTES and CONTROL never, RUN while runs are not allowed.
OPEN_ROOM_CHECKED = frozenset(kind for kind, act in ACTS.items() if not allowed(None, act, runs_allowed=False))


class AccessControl:
    """The access decisions of a `Room` (see the module docstring)."""

    room_id: str
    document: Document
    settings: Settings
    sessions: dict[UserId, Session]
    wall_clock: Callable[[], float]
    access: Access
    notes: str
    link_secrets: dict[str, str]
    closing: deque[tuple[int, Closing]]
    changes_made: int
    # The access state and notes as last stored (loaded, or written by this room): what a write
    # of this room's changes replaces, and what `refresh_access` compares with.
    access_stored: str = ""
    notes_stored: str = ""
    # The count of changes (`changes_made`) of the last write that carried the access state:
    # until it is committed, what is stored may be about to be replaced by it.
    access_written: int = 0
    changes_durable: int
    presence: Presence
    remote: set[UserId] | None
    access_changed: bool

    @abstractmethod
    def _send(self, send: Send) -> None: ...

    @abstractmethod
    def mark_changed(self) -> None: ...

    @abstractmethod
    def leave(self, session: Session, drop: None = None, *, code: int = ..., reason: str = ...) -> None: ...

    def make_private(self) -> dict[Role, str]:
        """Make the room private, with a live link for every role; the secret of each. Only a
        room nobody has joined yet can be made private."""
        if self.sessions or self.access.private or self.document.version:
            raise Forbidden("only a new room can be made private")
        now = self.wall_clock()
        self.access.private = True
        secrets = {}
        for role in Role:
            link, secrets[role] = self.access.add_link(role, now)
            self.link_secrets[link.link_id] = secrets[role]
        self._access_changed()
        return secrets

    def secret_of(self, role: Role) -> str | None:
        """The secret of the role's live link, if it has one (for interviewers' eyes only)."""
        link = self.access.current(role)
        if link is None:
            return None
        return self.link_secrets.get(link.link_id)  # not after a restart: only hashes are stored

    def admission(self, token: str | None) -> tuple[Role | None, str | None]:
        """The role and link a joining client gets; `Forbidden` when it may not join."""
        role, link = admit(self.access, token, open_rooms=self.settings.open_rooms)
        return role, None if link is None else link.link_id

    def may(self, session: Session, act: Act) -> bool:
        access = self.access
        return not session.revoked and allowed(
            session.role, act, locked=access.locked, ended=access.ended, runs_allowed=access.runs_allowed
        )

    def check(self, session: Session, act: Act) -> None:
        """`Forbidden` (`ReadOnly` for an edit) unless the session's role may do ``act`` now."""
        if not self.may(session, act):
            raise refusal(session.role, act)

    def control(self, session: Session, message: Lock | Remove | Revoke | End | Notes) -> None:
        """Apply an interviewer's control message (already checked against the table)."""
        if not self.access.private:
            raise Forbidden(f"{message.type} needs a private room")
        match message:
            case Lock():
                self._lock(session, message.locked)
            case Remove():
                self._remove(session, UserId(message.user_id))
            case Revoke():
                self._revoke(session, Role(message.role), message.renew)
            case End():
                self._end(session)
            case Notes():
                self._set_notes(session, message.text)

    def _lock(self, session: Session, locked: bool) -> None:
        if self.access.ended:
            raise Forbidden("the interview has ended: the room stays read-only")
        if self.access.locked == locked:
            return
        self.access.locked = locked
        self._access_changed()
        self._to_all(LockedOut(locked=locked, user_id=session.user_id).encode(), "locked")
        log.info("room_locked" if locked else "room_unlocked", room_id=self.room_id, user_id=session.user_id)

    def _remove(self, session: Session, user_id: UserId) -> None:
        target = self.sessions.get(user_id)
        role = target.role if target is not None else None
        if target is None:  # a member connected to another process: its role is in the presence
            member = self.presence.get(user_id) if user_id in (self.remote or ()) else None
            if member is None:
                raise InvalidMessage(f"no member {user_id[:64]!r} in this room")
            role = Role(member.role) if member.role in {r.value for r in Role} else None
        if role is Role.INTERVIEWER or role is None:
            raise Forbidden("interviewers cannot be removed")
        # Its link is revoked: the member cannot come back through it (nor anyone else), and
        # the process it is connected to closes it when it reads the revocation.
        self._revoke(session, role, renew=False, reason="removed from the room")
        log.info("member_removed", room_id=self.room_id, user_id=session.user_id, removed=user_id)

    def _revoke(self, session: Session, role: Role, renew: bool, reason: str = "link revoked") -> None:
        if role not in SHARED_ROLES:
            raise Forbidden(f"the {role.value} link cannot be revoked")
        if renew and role is Role.CANDIDATE and self.access.ended:
            raise Forbidden("the interview has ended: no new candidate link")
        now = self.wall_clock()
        revoked = self.access.revoke(role, now)
        if not revoked and not renew:
            return  # no live link: nothing to store or tell
        if renew:
            link, secret = self.access.add_link(role, now)
            self.link_secrets[link.link_id] = secret
        self._access_changed()
        self._end_sessions(set(revoked), reason)
        self._to_interviewers(LinkOut(role=role.value, token=self.secret_of(role)).encode(), "link")
        log.info("link_revoked", room_id=self.room_id, user_id=session.user_id, role=role.value, renewed=renew)

    def _end(self, session: Session) -> None:
        if self.access.ended:
            return
        self.access.ended = True
        revoked = self.access.revoke(Role.CANDIDATE, self.wall_clock())
        self._access_changed()
        self._to_all(EndedOut(user_id=session.user_id).encode(), "ended")
        self._end_sessions(set(revoked), "the interview has ended")
        self._to_interviewers(LinkOut(role=Role.CANDIDATE.value).encode(), "link")
        log.info("interview_ended", room_id=self.room_id, user_id=session.user_id)

    def _set_notes(self, session: Session, text: str) -> None:
        limit = self.settings.max_notes_chars
        if len(text) > limit:
            raise InvalidMessage(f"notes are {len(text)} characters, the limit is {limit}; they were not saved")
        if text == self.notes:
            return
        out = NotesOut(text=text, user_id=session.user_id).encode()  # before anything changes
        self.notes = text
        self._access_changed()
        for other in list(self.sessions.values()):
            if other is not session and other.role is Role.INTERVIEWER:
                self._send(Send(other, out, "notes"))

    def may_catch_up(self, session: Session, hello: Hello) -> bool:
        """Whether a joining member may be sent the updates since ``hello.version`` rather than
        the text: always for a role that may read the history; otherwise only from the version
        at which the first member came in through its link, so that no hello asking for an
        older version gets the history from before (what an interviewer typed and deleted
        before sharing the link, or before renewing it) in its catch-up."""
        if hello.version is None or self.may(session, Act.HISTORY):
            return True
        link = self.access.by_id(session.link_id)
        return link is not None and link.first_shown is not None and hello.version >= link.first_shown

    def shown(self, session: Session, version: int) -> None:
        """A member was welcomed at ``version``: the first through its link sets the link's
        floor for catch-ups (`may_catch_up`), stored with the room before it is welcomed."""
        link = self.access.by_id(session.link_id)
        if link is not None and link.first_shown is None and not self.may(session, Act.HISTORY):
            link.first_shown = version
            self._access_changed()

    def welcome_access(self, session: Session) -> dict[str, Any]:
        """The welcome's fields about access: none in an open room."""
        access = self.access
        if not access.private:
            return {}
        fields: dict[str, Any] = {"role": session.role, "locked": access.locked, "ended": access.ended}
        if session.role is Role.INTERVIEWER:
            fields["links"] = {role.value: self.secret_of(role) for role in SHARED_ROLES}
        return fields

    def welcome_notes(self, session: Session) -> str | None:
        """The notes message a joining interviewer gets after its welcome; None for any other."""
        if session.role is not Role.INTERVIEWER:
            return None
        return NotesOut(text=self.notes).encode()

    def _end_sessions(self, link_ids: set[str], reason: str) -> None:
        """End the sessions of revoked links: refused everything from now on, closed once the
        revocation is committed. Closed before, a failed commit would reload the room with the
        link live again, and its member could come back as if never removed."""
        for other in list(self.sessions.values()):
            if other.link_id is not None and other.link_id in link_ids and not other.revoked:
                other.revoked = True
                self.closing.append((self.changes_made, Closing(other, CLOSE_REVOKED, reason)))

    @abstractmethod
    def question_message(self, session: Session, user_id: str | None) -> str: ...

    def refresh_access(self, stored: str, notes: str) -> None:
        """The access state and notes another process stored for this room (several processes
        serve it, `rooms.cluster`) become this room's, and what changed is done here too (see
        `_take_access`). Ignored while this room has an access change of its own to store or
        being stored: that write is checked against what is stored, and merged with it
        (`merge_access`)."""
        own_unstored = self.access_changed or self.changes_durable < self.access_written
        if (stored, notes) == (self.access_stored, self.notes_stored) or own_unstored:
            return
        self._take_access(Access.from_json(stored), notes)  # ValueError: damaged, nothing changes
        self.access_stored, self.notes_stored = stored, notes
        log.info("access_refreshed", room_id=self.room_id)

    def merge_access(self, base: tuple[str, str], stored: tuple[str, str]) -> tuple[str, str]:
        """This room's write replaced ``base`` (access state, notes), but another process stored
        ``stored`` meanwhile: both changes are kept (`rooms.access.merge`; the notes of whoever
        changed them, ours when both did), what the other changed is done here, and the merged
        state is what to write over ``stored``."""
        merged = merge(Access.from_json(base[0]), self.access, Access.from_json(stored[0]))
        notes = self.notes if self.notes != base[1] else stored[1]
        self._take_access(merged, notes)
        written = (merged.to_json(), notes)
        self.access_stored, self.notes_stored = written
        log.info("access_merged", room_id=self.room_id)
        return written

    def _take_access(self, new: Access, notes: str) -> None:
        """Make ``new`` (and ``notes``) the room's, doing here what changed: members whose link
        is no longer live are closed out, the lock, the end, the question and whether runs are
        allowed are told, interviewers hear of the notes and of links changed elsewhere (whose
        secret only the process that made them knows: here the link shows as none)."""
        old = self.access
        self.access = new
        for other in list(self.sessions.values()):
            if other.link_id is not None and not new.is_live(other.link_id) and not other.revoked:
                other.revoked = True
                self.leave(other, code=CLOSE_REVOKED, reason="link revoked")
        if new.locked != old.locked:
            self._to_all(LockedOut(locked=new.locked, user_id="").encode(), "locked")
        if new.ended and not old.ended:
            self._to_all(EndedOut(user_id="").encode(), "ended")
        if new.question != old.question:
            for other in list(self.sessions.values()):
                if other.protocol is WireProtocol.VERSIONED:
                    self._send(Send(other, self.question_message(other, None), "question"))
        if new.runs_allowed != old.runs_allowed:
            self._to_versioned(RunsAllowedOut(allowed=new.runs_allowed, user_id="").encode(), "runs_allowed")
        for role in SHARED_ROLES:
            before, after = old.current(role), new.current(role)
            if (before and before.link_id) != (after and after.link_id):
                self._to_interviewers(LinkOut(role=role.value, token=self.secret_of(role)).encode(), "link")
        if notes != self.notes:
            self.notes = notes
            self._to_interviewers(NotesOut(text=notes).encode(), "notes")

    def _access_changed(self) -> None:
        self.access_changed = True
        self.mark_changed()

    def _to_all(self, message: str, kind: str) -> None:
        for other in list(self.sessions.values()):
            self._send(Send(other, message, kind))

    def _to_versioned(self, message: str, kind: str, but: Session | None = None) -> None:
        """To every member on the versioned protocol (full-text clients know no such message),
        ``but`` one when given."""
        for other in list(self.sessions.values()):
            if other.protocol is WireProtocol.VERSIONED and other is not but:
                self._send(Send(other, message, kind))

    def _to_interviewers(self, message: str, kind: str) -> None:
        for other in list(self.sessions.values()):
            if other.role is Role.INTERVIEWER:
                self._send(Send(other, message, kind))
