"""What the editor's browser half reports to the page, read and checked.

The browser half only repeats what the room told its connection: who is in the room
(``members``), the room's language and who typed lately (``activity``), the member's role and
whether the room is locked or ended (``access``), the interviewers' notes (``notes``), each
change to a shared role's link (``link``, to interviewers only), the room's question
(``question``: its id only, the page reads the rest from the server's catalog) and whether its
members may run code (``runs``). Each
report is checked against the shapes the room gives them, so a page never draws something the
room could not have said; `Newest` hands the page at most one report per interval.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rooms.access import SHARED_ROLES, Role
from rooms.errors import InvalidMessage
from rooms.limits import clean_language
from rooms.run_protocol import QUESTION_ID
from ui.access import LINK_SECRET

# User ids are 12 hex digits today: anything much longer is not from the browser half.
USER_ID_MAX_CHARS = 64
COLOR = re.compile(r"#[0-9a-fA-F]{6}")
ROLE_NAMES = tuple(role.value for role in Role)
# Drawing a report costs the server a few elements per member: a page that reports more often
# than this is shown only its newest report, once per interval.
REPORT_INTERVAL_SECONDS = 0.1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One member of the room as the page's connection knows them (``role``: in a private room)."""

    user_id: str
    username: str
    color: str
    role: Role | None = None


@dataclass(frozen=True, slots=True)
class Roster:
    """Who is in the room as the page's connection knows it (its welcome, then each join and
    leave); no members while it is not connected. ``own_id`` is this page's own member."""

    own_id: str
    members: tuple[RosterEntry, ...]


@dataclass(frozen=True, slots=True)
class RoomActivity:
    """The room as the page's connection last heard of it, besides its members: its language
    (None until the first welcome) and the members whose updates arrived in the last 2 s."""

    language: str | None
    typing: frozenset[str]  # user ids


@dataclass(frozen=True, slots=True)
class AccessState:
    """The member's role (None: an open room) and the room's lock and end, as the page's
    connection last heard them (its welcome, then each ``locked`` and ``ended``)."""

    role: Role | None
    locked: bool
    ended: bool


def _short_string(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{what} must be at most {max_chars} characters, got {len(value)}")
    return value


def _role(value: object) -> Role | None:
    if value is None:
        return None
    if isinstance(value, str) and value in ROLE_NAMES:
        return Role(value)
    shown = repr(value)[:24] if isinstance(value, str) else type(value).__name__
    raise ValueError(f"role must be null or one of {', '.join(ROLE_NAMES)}, got {shown}")


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {type(value).__name__}")
    return value


def _event_gen(args: object, event: str) -> tuple[dict[str, Any], int]:
    if not isinstance(args, dict):
        raise ValueError(f"{event} event must be an object, got {type(args).__name__}")
    gen = args.get("gen")
    if not isinstance(gen, int) or isinstance(gen, bool):
        raise ValueError(f"gen must be an integer, got {type(gen).__name__}")
    return args, gen


def parse_members(args: object, *, max_members: int, max_username_chars: int) -> tuple[int, Roster]:
    """The generation and the member list of a ``members`` event from the browser.

    Raises `ValueError` saying what is wrong with a list of another shape, of more than
    ``max_members`` members, with a string longer than its kind ever is, or a role the room
    does not have.
    """
    args, gen = _event_gen(args, "members")
    # null until the connection's first welcome: no own member yet.
    own = args.get("self")
    own_id = "" if own is None else _short_string(own, "self", USER_ID_MAX_CHARS)
    members = args.get("members")
    if not isinstance(members, list):
        raise ValueError(f"members must be a list, got {type(members).__name__}")
    if len(members) > max_members:
        raise ValueError(f"members must hold at most {max_members} members, got {len(members)}")
    entries = []
    for member in members:
        if not isinstance(member, dict):
            raise ValueError(f"a member must be an object, got {type(member).__name__}")
        user_id = _short_string(member.get("user_id"), "user_id", USER_ID_MAX_CHARS)
        username = _short_string(member.get("username"), "username", max_username_chars)
        color = _short_string(member.get("color"), "color", 7)
        # The colour ends up in a style attribute: only #rrggbb, as the room gives them.
        if not COLOR.fullmatch(color):
            raise ValueError(f"color must be #rrggbb, got {color!r}")
        entries.append(RosterEntry(user_id, username, color, _role(member.get("role"))))
    return gen, Roster(own_id, tuple(entries))


def parse_activity(args: object, *, max_members: int) -> tuple[int, RoomActivity]:
    """The generation and the room's activity of an ``activity`` event from the browser.

    The browser only repeats what the room told it: a language the room would not take (see
    `clean_language`), or more members typing than a room holds, is not from the browser half.
    Raises `ValueError` saying what is wrong.
    """
    args, gen = _event_gen(args, "activity")
    language = args.get("language")
    if language is not None:
        try:
            language = clean_language(language)
        except InvalidMessage as exc:
            raise ValueError(str(exc)) from None
    typing = args.get("typing")
    if not isinstance(typing, list):
        raise ValueError(f"typing must be a list, got {type(typing).__name__}")
    if len(typing) > max_members:
        raise ValueError(f"typing must hold at most {max_members} user ids, got {len(typing)}")
    user_ids = frozenset(_short_string(user_id, "a typing user_id", USER_ID_MAX_CHARS) for user_id in typing)
    return gen, RoomActivity(language, user_ids)


def parse_access(args: object) -> tuple[int, AccessState]:
    """The generation and the access state of an ``access`` event from the browser; raises
    `ValueError` saying what is wrong."""
    args, gen = _event_gen(args, "access")
    return gen, AccessState(
        _role(args.get("role")), _flag(args.get("locked"), "locked"), _flag(args.get("ended"), "ended")
    )


def parse_notes(args: object, *, max_chars: int) -> tuple[int, str]:
    """The generation and the text of a ``notes`` event from the browser (the interviewers'
    notes, at most ``max_chars`` long as the room keeps them); raises `ValueError`."""
    args, gen = _event_gen(args, "notes")
    return gen, _short_string(args.get("text"), "text", max_chars)


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A shared role's link was revoked or renewed, as the room told the page's connection once
    the change was stored: the secret of the role's live link now, or None when it has none."""

    role: Role
    token: str | None


def parse_link(args: object) -> tuple[int, LinkChange]:
    """The generation and the change of a ``link`` event from the browser: ``role`` is a shared
    role (candidate or observer), ``token`` a link's secret, or absent when the role has no live
    link. Raises `ValueError` saying what is wrong."""
    args, gen = _event_gen(args, "link")
    role = args.get("role")
    if not isinstance(role, str) or role not in SHARED_ROLES:
        shown = repr(role)[:24] if isinstance(role, str) else type(role).__name__
        raise ValueError(f"role must be one of {', '.join(SHARED_ROLES)}, got {shown}")
    token = args.get("token")
    if token is not None and not (isinstance(token, str) and LINK_SECRET.fullmatch(token)):
        shown = f"{len(token)} characters" if isinstance(token, str) else type(token).__name__
        raise ValueError(f"token must be absent or 1 to 128 letters, digits, '-' or '_', got {shown}")
    return gen, LinkChange(Role(role), token)


def parse_question(args: object) -> tuple[int, str | None]:
    """The generation and the room's question id of a ``question`` event from the browser (None:
    the room has no question). Only an id is taken: the page shows the question from the
    server's own catalog, never what the browser sent. Raises `ValueError` saying what is wrong."""
    args, gen = _event_gen(args, "question")
    question_id = args.get("question_id")
    if question_id is not None and not (isinstance(question_id, str) and QUESTION_ID.fullmatch(question_id)):
        shown = f"{len(question_id)} characters" if isinstance(question_id, str) else type(question_id).__name__
        raise ValueError(f"question_id must be null or 1 to 64 of a-z, 0-9 and '-', got {shown}")
    return gen, question_id


def parse_runs(args: object) -> tuple[int, bool]:
    """The generation and whether the room's members may run code, of a ``runs`` event from the
    browser; raises `ValueError` saying what is wrong."""
    args, gen = _event_gen(args, "runs")
    return gen, _flag(args.get("allowed"), "allowed")


class Newest(Generic[T]):
    """Hands reports from the browser to the page at most once per `REPORT_INTERVAL_SECONDS`:
    the first at once, then the newest of those that came during the interval."""

    def __init__(self, show: Callable[[T], None] | None) -> None:
        self.show = show
        self._newest: tuple[T] | None = None  # the newest report (None itself may be one)
        self._shown_at = float("-inf")
        self._waiting = False  # a handler waits out the interval to show the newest report

    @property
    def latest(self) -> T | None:
        """The newest report, shown or about to be; None before the first."""
        return None if self._newest is None else self._newest[0]

    async def report(self, value: T, alive: Callable[[], bool]) -> None:
        self._newest = (value,)
        if self._waiting:
            return  # the handler already waiting shows this newer report
        wait = self._shown_at + REPORT_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            self._waiting = True
            try:
                await asyncio.sleep(wait)
            finally:
                self._waiting = False
        newest = self._newest
        if self.show is None or newest is None or not alive():
            return
        self._shown_at = time.monotonic()
        self.show(newest[0])
