"""The collaborative editor element: a browser client of a room, over NiceGUI's bridge.

The browser half (``collab_editor.js``) runs the client algorithm of the versioned protocol with
CodeMirror's own ``ChangeSet``. This half only carries frames: ``frame`` events from the browser
go to the room registry exactly as a WebSocket frame would, and whatever the room sends goes back
with one ``receive`` call per frame. The hello asks for ``batch``, so everything queued for one
browser in one event-loop turn leaves as one frame, one NiceGUI message.

Every hello starts a new *generation*; frames of an older generation are ignored on both sides,
so a browser that reconnects (a new hello on the same page) never mixes two sessions.

The browser half also reports who is in the room, as its connection knows it (``members``
events), and the room's language and who typed in it lately (``activity`` events): the page
shows exactly what the editor was told, connected or not, and never reads the room itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from nicegui import Client, background_tasks, ui
from nicegui.events import GenericEventArguments

from rooms.errors import InternalError, InvalidMessage, RateLimited, RoomError
from rooms.limits import MessageLimit, TokenBucket, clean_language
from rooms.protocol import ErrorOut, Hello, parse_client_message
from rooms.registry import RoomRegistry
from rooms.session import Session
from rooms.settings import Settings

log = structlog.get_logger("collab.ui.editor")

# A hello leaves the room and joins it again (a welcome with the whole text to the page, a leave
# and a join to every member): a page gets a few at once (reconnects), then one every 2 s.
HELLO_RATE_PER_SECOND = 0.5
HELLO_BURST = 5
# Frames a page may send between its hello and the room being loaded (a cursor, a resend).
MAX_EARLY_FRAMES = 50
# A member list comes from the browser: it only repeats what the room told it, so anything
# longer or shaped otherwise is not from the browser half. User ids are 12 hex digits today.
USER_ID_MAX_CHARS = 64
COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# Drawing the list costs the server a few elements per member: a page that reports it (or the
# room's activity) more often than this is shown only its newest report, once per interval.
REPORT_INTERVAL_SECONDS = 0.1

T = TypeVar("T")


def _client_address(client: Client) -> str:
    """The page's network address, as for `/ws` (the request's client, which uvicorn takes
    from a trusted proxy's X-Forwarded-For); "" when the page has no request."""
    try:
        return client.ip
    except RuntimeError:
        return ""


class BrowserNotReading(ConnectionError):
    """The page has not taken its messages for too long: the room drops it like a stalled socket."""


@dataclass
class Identity:
    """Who the browser's user is: taken from their stored profile, never from the browser's frames."""

    username: str
    color: str


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One member of the room as the page's connection knows them."""

    user_id: str
    username: str
    color: str


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


def _short_string(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{what} must be at most {max_chars} characters, got {len(value)}")
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
    ``max_members`` members, or with a string longer than its kind ever is.
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
        entries.append(RosterEntry(user_id, username, color))
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


class Newest(Generic[T]):
    """Hands reports from the browser to the page at most once per `REPORT_INTERVAL_SECONDS`:
    the first at once, then the newest of those that came during the interval."""

    def __init__(self, show: Callable[[T], None] | None) -> None:
        self.show = show
        self.latest: T | None = None  # the newest report, shown or about to be
        self._shown_at = float("-inf")
        self._waiting = False  # a handler waits out the interval to show the newest report

    async def report(self, value: T, alive: Callable[[], bool]) -> None:
        self.latest = value
        if self._waiting:
            return  # the handler already waiting shows this newer report
        wait = self._shown_at + REPORT_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            self._waiting = True
            try:
                await asyncio.sleep(wait)
            finally:
                self._waiting = False
        latest = self.latest
        if self.show is None or latest is None or not alive():
            return
        self._shown_at = time.monotonic()
        self.show(latest)


class BrowserTransport:
    """One generation of a page's editor as a room `Transport`."""

    name = "browser"

    def __init__(self, editor: CollabEditor, gen: int, max_backlog: int) -> None:
        self.editor = editor
        self.gen = gen
        self.max_backlog = max_backlog
        self.detached = False  # a newer hello replaced this generation

    async def send(self, message: str) -> None:
        self._write(message)

    def writer(self) -> Callable[[str], None]:
        """Queueing in NiceGUI's outbox never waits: the room always writes at once."""
        return self._write

    def _write(self, message: str) -> None:
        # NiceGUI's outbox holds what a disconnected page has not taken yet; a page that stays
        # away (or cannot keep up) is dropped instead of growing it without end.
        if len(self.editor.client.outbox.messages) >= self.max_backlog:
            raise BrowserNotReading(f"{self.max_backlog} messages waiting for the page")
        self.editor.call("receive", self.gen, message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.detached:
            self.editor.call("closed", self.gen, code, reason)


class CollabEditor(ui.element, component="collab_editor.js", dependencies=["collab_client.js", "collab_carets.js"]):
    """The shared editor of one room for one browser page."""

    def __init__(
        self,
        registry: Callable[[], RoomRegistry],
        settings: Settings,
        room_id: str,
        identity: Callable[[], Identity],
        *,
        language: str,
        theme: str = "light",
        on_members: Callable[[Roster], None] | None = None,
        on_activity: Callable[[RoomActivity], None] | None = None,
    ) -> None:
        """``on_members`` is called with the room's member list, and ``on_activity`` with its
        language and who typed lately, whenever the browser half reports them (each at most
        once per `REPORT_INTERVAL_SECONDS`, the newest)."""
        super().__init__()
        self._registry = registry
        self._settings = settings
        self._identity = identity
        self.room_id = room_id
        self.session: Session | None = None
        self.transport: BrowserTransport | None = None
        self._early: list[str] = []  # frames of the current generation sent before its join completed
        self._props["room-id"] = room_id
        self._props["language"] = language
        self._props["theme"] = theme
        self._props["max-chars"] = settings.max_document_chars
        self._hellos = MessageLimit(own=TokenBucket.full(HELLO_RATE_PER_SECOND, HELLO_BURST, time.monotonic()))
        self._address = _client_address(self.client)
        self._rosters = Newest(on_members)
        self._activities = Newest(on_activity)
        self.on("frame", self._on_frame)
        self.on("members", self._on_members_event)
        self.on("activity", self._on_activity_event)

    # Server -> browser

    def call(self, method: str, *args: Any) -> None:
        """``run_method`` without its background task: one outbox message, fire and forget.

        The outbox keeps this element's messages in order and replays them to a page that
        reconnects within NiceGUI's reconnect timeout.
        """
        if self.is_deleted or self.client.is_deleted:
            return
        # An expression, not `return ...`: NiceGUI evals the code as it is first and parses it
        # again in a function only when that fails, which a frame would pay for twice.
        code = f"runMethod({self.id}, {json.dumps(method)}, {json.dumps(args)})"
        self.client.outbox.enqueue_message("run_javascript", {"code": code}, self.client.id)

    # Browser -> server

    def _on_frame(self, event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        gen = args.get("gen")
        data = args.get("data")
        if not isinstance(gen, int) or not isinstance(data, str):
            log.info("bad_bridge_frame", room_id=self.room_id)
            return
        if self.transport is not None and gen == self.transport.gen:
            if self.session is not None:
                self._registry().receive(self.session, data)
            elif len(self._early) < MAX_EARLY_FRAMES:
                self._early.append(data)  # the join is waiting for the room to load
            return
        if self.transport is not None and gen < self.transport.gen:
            return  # a late frame of an earlier generation
        self._hello(gen, data)

    def _hello(self, gen: int, data: str) -> None:
        """A new generation: leave the old session (if any) and join again."""
        registry = self._registry()
        now = time.monotonic()
        try:
            self._hellos.charge(now)
            registry.charge_address(self._address)
        except RateLimited as limited:
            # A flood of hellos gets one reply a second, as on every other transport.
            if self._hellos.reply_due(limited, now):
                self.call("receive", gen, ErrorOut.of(limited).encode())
            return
        self._leave()
        transport = BrowserTransport(self, gen, self._settings.outbound_queue_size)
        try:
            message = parse_client_message(data, self._settings.frame_limit_bytes)
            if not isinstance(message, Hello):
                raise InvalidMessage(f"send hello before {message.type}")
            who = self._identity()
            hello = message.model_copy(update={"username": who.username, "color": who.color, "batch": True})
        except Exception as exc:
            self._refuse(transport, exc)
            return
        self.transport = transport
        self._early = []
        background_tasks.create(self._join(registry, transport, hello), name=f"collab-join-{self.room_id}")

    async def _join(self, registry: RoomRegistry, transport: BrowserTransport, hello: Hello) -> None:
        try:
            session = await registry.join_versioned(self.room_id, transport, hello, address=self._address)
        except Exception as exc:
            self._refuse(transport, exc)
            return
        if transport.detached or transport is not self.transport or self.is_deleted:
            registry.leave(session)  # a newer hello, or the page is gone
            return
        self.session = session
        early, self._early = self._early, []
        for data in early:
            registry.receive(session, data)

    async def _on_members_event(self, event: GenericEventArguments) -> None:
        try:
            gen, roster = parse_members(
                event.args,
                max_members=self._settings.max_members_per_room,
                max_username_chars=self._settings.max_username_chars,
            )
        except ValueError as exc:
            log.info("bad_members_event", room_id=self.room_id, reason=str(exc))
            return
        if self._is_current(gen):  # only the current connection's list is shown
            await self._rosters.report(roster, self._is_alive)

    async def _on_activity_event(self, event: GenericEventArguments) -> None:
        try:
            gen, activity = parse_activity(event.args, max_members=self._settings.max_members_per_room)
        except ValueError as exc:
            log.info("bad_activity_event", room_id=self.room_id, reason=str(exc))
            return
        if self._is_current(gen):
            await self._activities.report(activity, self._is_alive)

    def _is_current(self, gen: int) -> bool:
        return self.transport is not None and gen == self.transport.gen

    def _is_alive(self) -> bool:
        return not self.is_deleted

    def _refuse(self, transport: BrowserTransport, exc: Exception) -> None:
        if not isinstance(exc, RoomError):
            log.exception("browser_join_failed", room_id=self.room_id)
        refusal = exc if isinstance(exc, RoomError) else InternalError()
        self.call("receive", transport.gen, ErrorOut.of(refusal).encode())

    def _leave(self) -> None:
        if self.transport is not None:
            self.transport.detached = True
        if self.session is not None:
            self._registry().leave(self.session)
            self.session = None

    def _handle_delete(self) -> None:
        self._leave()
        super()._handle_delete()

    # For the page

    def rejoin(self) -> None:
        """Say hello again (after the user changed their name or colour)."""
        self.run_method("rejoin")

    def set_text(self, text: str) -> None:
        """Replace the whole text, as a local edit of this page (merged like any other)."""
        self.run_method("setText", text)

    def download(self, filename: str) -> None:
        """Save the page's current text (unsent edits included) as a file."""
        self.run_method("download", filename)

    def set_theme(self, theme: str) -> None:
        self._props["theme"] = theme
        self.update()

    def set_language(self, language: str) -> None:
        """Keep the prop in step with the room (for a remount); the browser half already applies
        the room's language from the protocol, so nothing is sent."""
        self._props["language"] = language


class ConnectionBadge(ui.element, component="collab_status.js"):
    """Connected / reconnecting / offline with the count of unsent edits, rendered by the browser."""
