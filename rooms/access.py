"""Who may do what in a room: roles, the permission table, and the links that grant roles.

A room is *open* (anyone who knows its id joins, and may do everything but control it: the
full-text protocol and raw clients that name a room) or *private* (created from the start page:
only a link's secret admits, and the link says the role). The permission table is `allowed`;
`Room` asks it for every message, so a role that changes while connected (a lock, the end of
the interview) takes effect for the next message.

A link's secret is random (256 bits) and never stored: the store keeps only its SHA-256
(`Link.digest`), which is what a presented secret is checked against, with the link's role and
the times it was made and revoked. A room remembers the secrets of the links it made while it is
in memory, to show them to interviewers; after a restart it cannot show them again (renewing a
link makes a new one). Revoking a link keeps its row, so a revoked secret is refused as revoked
rather than unknown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from rooms.errors import Forbidden, NoOpenRooms, ReadOnly

# 32 random bytes, URL-safe base64 without padding: 43 characters, 256 bits.
LINK_SECRET_BYTES = 32
LINK_SECRET_CHARS = 43
LINK_ID_BYTES = 12
# A room keeps at most this many revoked links (the oldest go first): revoking in a loop must
# not grow the room's stored state without end.
MAX_REVOKED_LINKS = 50


class Role(StrEnum):
    INTERVIEWER = "interviewer"  # owns the room: everything
    CANDIDATE = "candidate"  # edits, unless the room is locked or ended
    OBSERVER = "observer"  # watches: text, cursors, presence; never changes anything


class Act(StrEnum):
    """What a message asks to do, as the permission table knows it."""

    EDIT = "edit"  # push, code_change
    LANGUAGE = "language"
    RESTORE = "restore"  # make an earlier version the current text
    CURSOR = "cursor"
    HISTORY = "history"  # read the history (API, playback view)
    NOTES = "notes"  # read and write the interviewers' notes
    CONTROL = "control"  # lock, remove, revoke, end, allow_runs
    RUN = "run"  # start a run (its output and end belong to the run's own runner)
    QUESTION = "question"  # pick the room's question
    ANSWERS = "answers"  # be sent test cases' expected values (and runs' args and actual values)


# Roles whose links an interviewer hands out (and may revoke or renew).
SHARED_ROLES = (Role.CANDIDATE, Role.OBSERVER)


def allowed(
    role: Role | None, act: Act, *, locked: bool = False, ended: bool = False, runs_allowed: bool = True
) -> bool:
    """The permission table. ``role`` is None for a member of an open room.

    ============  ====  ========  =======  ======  =======  =====  =======  ===  ========  =======
    role          edit  language  restore  cursor  history  notes  control  run  question  answers
    ============  ====  ========  =======  ======  =======  =====  =======  ===  ========  =======
    open room     yes   yes       yes      yes     yes      no     no       [3]  yes       yes
    interviewer   yes   yes       yes      yes     yes      yes    yes      yes  yes       yes
    candidate     [1]   [1]       no       [2]     no       no     no       [4]  no        no
    observer      no    no        no       no      no       no     no       no   no        no
    ============  ====  ========  =======  ======  =======  =====  =======  ===  ========  =======

    [1] unless the room is locked or ended. [2] unless the room is ended. [3] unless runs are
    not allowed. [4] unless runs are not allowed or the room is ended.
    """
    if role is None:
        if act is Act.RUN:
            return runs_allowed
        return act not in (Act.NOTES, Act.CONTROL)
    if role is Role.INTERVIEWER:
        return True
    if role is Role.CANDIDATE:
        if act in (Act.EDIT, Act.LANGUAGE):
            return not (locked or ended)
        if act is Act.CURSOR:
            return not ended
        if act is Act.RUN:
            return runs_allowed and not ended
    return False


def refusal(role: Role | None, act: Act) -> Forbidden:
    """The error for a message the table does not allow: `ReadOnly` for an edit."""
    who = "a member of an open room" if role is None else f"the {role.value} role"
    if act is Act.EDIT:
        return ReadOnly(f"the editor is read-only for {who} now; the change was not applied")
    if act is Act.RUN:
        return Forbidden(f"running code is not allowed for {who} now; the run was not started")
    return Forbidden(f"{act.value} is not allowed for {who}")


def admit(access: Access, token: str | None, *, open_rooms: bool) -> tuple[Role | None, Link | None]:
    """The role (and link) a client presenting ``token`` joins with; `Forbidden` when it may
    not join. An open room takes anyone (``open_rooms``), whatever token it brings."""
    if not access.private:
        if not open_rooms:
            raise NoOpenRooms()
        return None, None
    if token is None:
        raise Forbidden("this room is private: join with the token of a link to it")
    link = access.link_for(token)
    if link is None:
        raise Forbidden("this link is not one of this room's")
    if link.revoked is not None:
        raise Forbidden("this link was revoked: ask the interviewer for a new one")
    if access.ended and link.role is Role.CANDIDATE:
        raise Forbidden("the interview has ended")
    return link.role, link


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(slots=True)
class Link:
    link_id: str
    role: Role
    digest: str  # SHA-256 of the secret, hex
    created: float  # Unix time
    revoked: float | None = None
    # The version at which the first member came in through it: members of roles that may not
    # read the history are caught up from there at the earliest (`Room.may_catch_up`).
    first_shown: int | None = None


@dataclass(slots=True)
class Access:
    """A room's access state: private or open, locked, ended, and its links; whether its
    members may run code, and its question (stored with it, in a private room or not)."""

    private: bool = False
    locked: bool = False
    ended: bool = False
    links: list[Link] = field(default_factory=list)
    runs_allowed: bool = True
    question: str | None = None  # the id of the room's question (`rooms.questions`)

    def link_for(self, secret: str) -> Link | None:
        """The link a secret belongs to, revoked or not; None when it is none of this room's."""
        if not secret or len(secret) > 2 * LINK_SECRET_CHARS:
            return None
        digest = secret_digest(secret)
        for link in self.links:
            if hmac.compare_digest(link.digest, digest):
                return link
        return None

    def current(self, role: Role) -> Link | None:
        """The live link of a role (the newest not revoked), if it has one."""
        for link in reversed(self.links):
            if link.role is role and link.revoked is None:
                return link
        return None

    def add_link(self, role: Role, now: float) -> tuple[Link, str]:
        """A new live link for a role, and its secret (random; only its hash is kept)."""
        secret = secrets.token_urlsafe(LINK_SECRET_BYTES)
        link = Link(secrets.token_urlsafe(LINK_ID_BYTES), role, secret_digest(secret), now)
        self.links.append(link)
        return link, secret

    def revoke(self, role: Role, now: float) -> list[str]:
        """Revoke every live link of a role; the ids of those revoked."""
        revoked = []
        for link in self.links:
            if link.role is role and link.revoked is None:
                link.revoked = now
                revoked.append(link.link_id)
        dead = [link for link in self.links if link.revoked is not None]
        for link in dead[: max(0, len(dead) - MAX_REVOKED_LINKS)]:
            self.links.remove(link)
        return revoked

    def by_id(self, link_id: str | None) -> Link | None:
        return next((link for link in self.links if link.link_id == link_id), None)

    def is_live(self, link_id: str | None) -> bool:
        return any(link.link_id == link_id and link.revoked is None for link in self.links)

    def to_json(self) -> str:
        return json.dumps(
            {
                "private": self.private,
                "locked": self.locked,
                "ended": self.ended,
                "links": [[x.link_id, x.role.value, x.digest, x.created, x.revoked, x.first_shown] for x in self.links],
                "runs_allowed": self.runs_allowed,
                "question": self.question,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Access:
        """What `to_json` wrote; "" is an open room. Raises `ValueError` on anything else."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            links = [
                Link(str(i), Role(r), str(d), float(c), None if v is None else float(v), _version(rest))
                for i, r, d, c, v, *rest in data["links"]
            ]
            # Absent from what was stored before rooms ran code: allowed, no question.
            runs_allowed, question = data.get("runs_allowed", True), data.get("question")
            if type(runs_allowed) is not bool or not (question is None or type(question) is str):
                raise ValueError("runs_allowed must be a boolean and question a string or null")
            return cls(bool(data["private"]), bool(data["locked"]), bool(data["ended"]), links, runs_allowed, question)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable access state: {type(exc).__name__}") from None


def merge(base: Access, mine: Access, theirs: Access) -> Access:
    """The access state of a room whose state ``base`` two processes changed at once (``mine``
    here, ``theirs`` stored by the other): each setting takes the side that changed it (ours
    when both did), an interview ended on either side is ended, a link revoked on either side
    is revoked, the first version shown through a link is the earlier, and links made on
    either side are kept."""

    def changed(name: str) -> object:
        return getattr(mine, name) if getattr(mine, name) != getattr(base, name) else getattr(theirs, name)

    ours = {link.link_id: link for link in mine.links}
    known = {link.link_id for link in base.links}
    links: list[Link] = []
    for link in theirs.links:
        own = ours.get(link.link_id)
        if own is None and link.link_id in known:
            continue  # dropped here: revoked, beyond the revoked links kept
        if own is not None:
            revoked = [when for when in (own.revoked, link.revoked) if when is not None]
            shown = [version for version in (own.first_shown, link.first_shown) if version is not None]
            link = Link(
                link.link_id, link.role, link.digest, link.created, min(revoked, default=None), min(shown, default=None)
            )
        links.append(link)
    stored = {link.link_id for link in theirs.links}
    links += [link for link in mine.links if link.link_id not in stored and link.link_id not in known]  # made here
    dead = [link for link in links if link.revoked is not None]
    for link in dead[: max(0, len(dead) - MAX_REVOKED_LINKS)]:
        links.remove(link)
    return Access(
        private=mine.private or theirs.private,
        locked=bool(changed("locked")),
        ended=mine.ended or theirs.ended,
        links=links,
        runs_allowed=bool(changed("runs_allowed")),
        question=changed("question"),  # type: ignore[arg-type]
    )


def _version(rest: list[object]) -> int | None:
    """A link's ``first_shown`` as stored (absent from links stored before it existed)."""
    if not rest or rest[0] is None:
        return None
    value = rest[0]
    if type(value) is not int:
        raise ValueError(f"first_shown must be an integer, got {type(value).__name__}")
    return value
