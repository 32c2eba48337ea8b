"""Members on other processes: a shared room's presence, whatever process a member is on.

When several processes serve a room (`rooms.cluster`), each knows its own members as sessions
and the others' as remote members: entries of the room's `Presence` without a session, shown to
its clients like any member (in welcomes, ``member_joined``/``member_left``, cursors).

* Out: what this process's members do that the others must show (joins, leaves, cursor moves,
  language changes) is given to the driver as `Shared` actions; it carries them to the other
  processes (`rooms.shared_presence`).
* In: the same events from the others (`remote_joined`, `remote_left`, `remote_cursor`,
  `remote_language`), and, at every heartbeat, the whole list of the others' members
  (`sync_remote`). The list is the truth: an event lost on the way (cursors travel on a lossy
  channel) is made good by the next list, and members of a process that stopped heartbeating
  are left out of it, so they leave every room within the presence timeout.

Everything from another process is checked as a client's message would be: bounded strings,
positions inside the text.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

from rooms.document import Document
from rooms.errors import InvalidMessage, VersionFromFuture, VersionTooOld
from rooms.limits import clean_language, clean_username
from rooms.presence import Member, Presence, Selection, UserId
from rooms.protocol import CursorOut, LanguageOut, WireProtocol
from rooms.session import Action, Send, Session, Shared
from rooms.settings import Settings

_ROLES = frozenset({"interviewer", "candidate", "observer"})
_MAX_ID_CHARS = 64
_COLOR_CHARS = 7  # #rrggbb


class RemoteMembers:
    """The part of a `Room` that shows members of other processes (see the module docstring)."""

    document: Document
    settings: Settings
    language: str
    presence: Presence
    sessions: dict[UserId, Session]
    _actions: list[Action]
    # The ids of the members on other processes, when the room is shared (`share_presence`).
    remote: set[UserId] | None = None

    @abstractmethod
    def _send(self, send: Send) -> None: ...

    @property
    @abstractmethod
    def committed_version(self) -> int: ...

    @abstractmethod
    def _announce_joined(self, member: Member) -> None: ...

    @abstractmethod
    def _announce_left(self, user_id: UserId) -> None: ...

    def share_presence(self) -> None:
        if self.remote is None:
            self.remote = set()
            self.cursors_waiting: dict[UserId, tuple[int, int, int]] = {}

    def tell_others(self, kind: str, **payload: Any) -> None:
        """Something the other processes serving the room must show (only when shared)."""
        if self.remote is not None:
            self._actions.append(Shared(kind, payload))

    def remote_joined(self, info: Mapping[str, object]) -> None:
        """A member joined on another process (ignored when it is known already)."""
        remote = self.remote
        if remote is None:
            return
        user_id, username, color, role = _member_fields(info, self.settings.max_username_chars)
        if user_id in self.presence or len(remote) >= self.settings.max_members_per_room:
            return  # known, or more than a room holds: not shown (the others are)
        member = self.presence.add(user_id, username, color, role)
        remote.add(user_id)
        self._announce_joined(member)

    def remote_left(self, user_id: object) -> None:
        remote = self.remote
        if remote is None or not isinstance(user_id, str) or UserId(user_id) not in remote:
            return
        remote.discard(UserId(user_id))
        self.presence.remove(UserId(user_id))
        self._announce_left(UserId(user_id))

    def sync_remote(self, members: Mapping[str, Mapping[str, object]]) -> None:
        """Every member the other processes have now: those missing here join, those gone leave."""
        remote = self.remote
        if remote is None:
            return
        for user_id in list(remote):
            if user_id not in members:
                self.remote_left(user_id)
        for info in members.values():
            try:
                self.remote_joined(info)
            except InvalidMessage:
                continue  # one bad entry does not keep the others out

    def remote_cursor(self, user_id: object, anchor: object, head: object, version: object) -> None:
        """A member of another process moved its cursor at ``version``: mapped over the updates
        since (when this room has them), kept inside the text, shown to this process's members."""
        remote = self.remote
        if remote is None or not isinstance(user_id, str) or UserId(user_id) not in remote:
            return
        if not all(type(value) is int for value in (anchor, head, version)):
            return
        assert isinstance(anchor, int) and isinstance(head, int) and isinstance(version, int)
        document = self.document
        if version > self.committed_version:
            # Told before the update it was made after reached this process (cursors travel
            # faster than commits): shown once it has (`cursors_due`), the newest per member.
            self.cursors_waiting[UserId(user_id)] = (anchor, head, version)
            return
        selection = Selection(anchor, head)
        try:
            if document.version - version <= self.settings.max_rebase_versions:
                for update in document.updates_since(version):
                    selection = selection.mapped(update.changes)
        except (VersionTooOld, VersionFromFuture):
            pass  # not comparable: kept as it is, inside the text
        length = document.length
        selection = Selection(max(0, min(selection.anchor, length)), max(0, min(selection.head, length)))
        self.presence.set_selection(UserId(user_id), selection)
        message = CursorOut(
            user_id=user_id, anchor=selection.anchor, head=selection.head, version=document.version
        ).encode()
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.VERSIONED:
                self._send(Send(session, message, "cursor"))

    def cursors_due(self) -> None:
        """Show the waiting cursors of members of other processes whose version is here now."""
        waiting = self.cursors_waiting
        for user_id, (anchor, head, version) in list(waiting.items()):
            if version <= self.committed_version or user_id not in (self.remote or ()):
                del waiting[user_id]
                self.remote_cursor(user_id, anchor, head, version)

    def remote_language(self, language: object, user_id: object) -> None:
        """The room's language was changed on another process (which stored it)."""
        if self.remote is None:
            return
        name = clean_language(language)
        if name == self.language:
            return
        self.language = name
        by = user_id if isinstance(user_id, str) and len(user_id) <= _MAX_ID_CHARS else None
        out = LanguageOut(language=name, user_id=by).encode()
        for session in list(self.sessions.values()):
            if session.protocol is WireProtocol.VERSIONED:
                self._send(Send(session, out, "language"))


def _member_fields(info: Mapping[str, object], max_username: int) -> tuple[UserId, str, str | None, str | None]:
    user_id, username, color, role = (info.get(key) for key in ("user_id", "username", "color", "role"))
    if not isinstance(user_id, str) or not 0 < len(user_id) <= _MAX_ID_CHARS:
        raise InvalidMessage("a remote member needs a user_id")
    if not isinstance(username, str) or len(username) > max_username:
        raise InvalidMessage("a remote member needs a username")
    username = clean_username(username, max_username)  # as its own process did: checked again
    if not (isinstance(color, str) and len(color) == _COLOR_CHARS and color.startswith("#")):
        color = None
    if role not in _ROLES:
        role = None
    return UserId(user_id), username, color, role
