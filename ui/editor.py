"""The collaborative editor element: a browser client of a room, over NiceGUI's bridge.

The browser half (``collab_editor.js``) runs the client algorithm of the versioned protocol with
CodeMirror's own ``ChangeSet``. This half only carries frames: ``frame`` events from the browser
go to the room registry exactly as a WebSocket frame would, and whatever the room sends goes back
with one ``receive`` call per frame. The hello asks for ``batch``, so everything queued for one
browser in one event-loop turn leaves as one frame, one NiceGUI message. In a private room the
hello carries the link's secret, added here: the browser's scripts never see it.

Every hello starts a new *generation*; frames of an older generation are ignored on both sides,
so a browser that reconnects (a new hello on the same page) never mixes two sessions.

The browser half also reports who is in the room, as its connection knows it (``members``
events), the room's language and who typed in it lately (``activity``), the member's role and
the room's lock and end (``access``), the interviewers' notes (``notes``), and each change to a
shared role's link (``link``, to interviewers, once the room has stored it): the page shows
exactly what the editor was told, connected or not, and never reads the room itself (see
`ui.reports`). A join the room refuses for good (`Forbidden`: a revoked link, the end of the
interview) and a connection it ends for the same reasons (`CLOSE_REVOKED`) are told to the page
here, where they happen (``on_denied``). Whenever the room closes the current generation's
session (whatever the code), ``session`` is None until the next join: the page's own messages
(an interviewer's controls) are never handed to a closed session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from nicegui import Client, background_tasks, ui
from nicegui.events import GenericEventArguments

from api.credentials import client_address
from rooms.errors import Forbidden, InternalError, InvalidMessage, RateLimited, ReadOnly, RoomError
from rooms.limits import MessageLimit, TokenBucket
from rooms.protocol import ErrorOut, Hello, parse_client_message
from rooms.registry import RoomRegistry
from rooms.session import CLOSE_REVOKED, Session
from rooms.settings import Settings
from ui.reports import (
    AccessState,
    LinkChange,
    Newest,
    RoomActivity,
    Roster,
    RosterEntry,
    parse_access,
    parse_activity,
    parse_link,
    parse_members,
    parse_notes,
    parse_question,
    parse_runs,
)

__all__ = [
    "AccessState",
    "BrowserNotReading",
    "BrowserTransport",
    "CollabEditor",
    "ConnectionBadge",
    "Identity",
    "RoomActivity",
    "Roster",
    "RosterEntry",
    "parse_activity",
    "parse_members",
]

log = structlog.get_logger("collab.ui.editor")

# A hello leaves the room and joins it again (a welcome with the whole text to the page, a leave
# and a join to every member): a page gets a few at once (reconnects), then one every 2 s.
HELLO_RATE_PER_SECOND = 0.5
HELLO_BURST = 5
# Frames a page may send between its hello and the room being loaded (a cursor, a resend).
MAX_EARLY_FRAMES = 50

T = TypeVar("T")


def _page_address(client: Client) -> str:
    """The page's network address, as for `/ws` (see `client_address`); "" when the page has
    no request."""
    try:
        return client_address(client.request)
    except RuntimeError:
        return ""


class BrowserNotReading(ConnectionError):
    """The page has not taken its messages for too long: the room drops it like a stalled socket."""


@dataclass
class Identity:
    """Who the browser's user is: taken from their stored profile, never from the browser's frames."""

    username: str
    color: str


class BrowserTransport:
    """One generation of a page's editor as a room `Transport`."""

    name = "browser"

    def __init__(self, editor: CollabEditor, gen: int, max_backlog: int) -> None:
        self.editor = editor
        self.gen = gen
        self.max_backlog = max_backlog
        self.detached = False  # a newer hello replaced this generation
        self.closed = False  # the room closed this generation's session

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
        if self.detached:
            return
        self.closed = True
        self.editor.call("closed", self.gen, code, reason)
        if self.editor.transport is self:
            # Whatever the code (a store reset, a full queue, a restart): nothing more goes to
            # this session, and the page says it is not connected until the next join.
            self.editor.session = None
        if code == CLOSE_REVOKED:  # removed, its link revoked, the interview ended: for good
            self.editor.deny(self, reason)


class CollabEditor(
    ui.element,
    component="collab_editor.js",
    dependencies=["collab_client.js", "collab_carets.js", "collab_tabs.js", "collab_access.js"],
):
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
        token: str | None = None,
        read_only: bool = False,
        on_members: Callable[[Roster], None] | None = None,
        on_activity: Callable[[RoomActivity], None] | None = None,
        on_access: Callable[[AccessState], None] | None = None,
        on_notes: Callable[[str], None] | None = None,
        on_link: Callable[[LinkChange], None] | None = None,
        on_question: Callable[[str | None], None] | None = None,
        on_runs_allowed: Callable[[bool], None] | None = None,
        on_denied: Callable[[str], None] | None = None,
    ) -> None:
        """``token`` is the secret of the private room's link the page was opened with (None:
        an open room); ``read_only``: the editor starts read-only, until the room says.

        ``on_members`` is called with the room's member list, ``on_activity`` with its
        language and who typed lately, ``on_access`` with the member's role and the room's
        lock and end, ``on_notes`` with the interviewers' notes, ``on_link`` with a change to
        a shared role's link, ``on_question`` with the id of the room's question (None: it has
        none) and ``on_runs_allowed`` with whether its members may run code, whenever the
        browser half reports them (each at most once per `REPORT_INTERVAL_SECONDS`, the newest:
        a page redraws its links from the room anyway).
        ``on_denied`` is called with the reason when the room refuses this page for good."""
        super().__init__()
        self._registry = registry
        self._settings = settings
        self._identity = identity
        self._token = token
        self._on_denied = on_denied
        self.room_id = room_id
        self.session: Session | None = None
        self.transport: BrowserTransport | None = None
        self._early: list[str] = []  # frames of the current generation sent before its join completed
        self._props["room-id"] = room_id
        self._props["language"] = language
        self._props["theme"] = theme
        self._props["max-chars"] = settings.max_document_chars
        self._props["read-only"] = read_only
        self._hellos = MessageLimit(own=TokenBucket.full(HELLO_RATE_PER_SECOND, HELLO_BURST, time.monotonic()))
        self._address = _page_address(self.client)
        self._rosters = Newest(on_members)
        self._activities = Newest(on_activity)
        self._accesses = Newest(on_access)
        self._notes = Newest(on_notes)
        self._link_changes = Newest(on_link)
        self._questions: Newest[str | None] = Newest(on_question)
        self._runs_allowed = Newest(on_runs_allowed)
        self.on("frame", self._on_frame)
        self.on("members", self._on_members_event)
        self.on("activity", self._on_activity_event)
        self.on("access", self._on_access_event)
        self.on("notes", self._on_notes_event)
        self.on("link", self._on_link_event)
        self.on("question", self._on_question_event)
        self.on("runs", self._on_runs_event)

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
            elif not self.transport.closed and len(self._early) < MAX_EARLY_FRAMES:
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
            # The link's secret is the page's, never the browser's: any token it sent is replaced.
            update = {"username": who.username, "color": who.color, "batch": True, "token": self._token}
            hello = message.model_copy(update=update)
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
        if transport.closed:
            return  # closed by the room already (the browser was told): not the page's session
        self.session = session
        early, self._early = self._early, []
        for data in early:
            registry.receive(session, data)

    async def _on_members_event(self, event: GenericEventArguments) -> None:
        settings = self._settings

        def parse(args: object) -> tuple[int, Roster]:
            return parse_members(
                args, max_members=settings.max_members_per_room, max_username_chars=settings.max_username_chars
            )

        await self._report("members", event, parse, self._rosters)

    async def _on_activity_event(self, event: GenericEventArguments) -> None:
        max_members = self._settings.max_members_per_room
        await self._report(
            "activity", event, lambda args: parse_activity(args, max_members=max_members), self._activities
        )

    async def _on_access_event(self, event: GenericEventArguments) -> None:
        await self._report("access", event, parse_access, self._accesses)

    async def _on_notes_event(self, event: GenericEventArguments) -> None:
        max_chars = self._settings.max_notes_chars
        await self._report("notes", event, lambda args: parse_notes(args, max_chars=max_chars), self._notes)

    async def _on_link_event(self, event: GenericEventArguments) -> None:
        await self._report("link", event, parse_link, self._link_changes)

    async def _on_question_event(self, event: GenericEventArguments) -> None:
        await self._report("question", event, parse_question, self._questions)

    async def _on_runs_event(self, event: GenericEventArguments) -> None:
        await self._report("runs", event, parse_runs, self._runs_allowed)

    async def _report(
        self, kind: str, event: GenericEventArguments, parse: Callable[[object], tuple[int, T]], newest: Newest[T]
    ) -> None:
        try:
            gen, value = parse(event.args)
        except ValueError as exc:
            log.info(f"bad_{kind}_event", room_id=self.room_id, reason=str(exc))
            return
        if self._is_current(gen):  # only the current connection's reports are shown
            await newest.report(value, self._is_alive)

    @property
    def reported_access(self) -> AccessState | None:
        """The member's access as the browser half last reported it (maybe not shown yet, see
        `Newest`); None before its first report."""
        return self._accesses.latest

    def _is_current(self, gen: int) -> bool:
        return self.transport is not None and gen == self.transport.gen

    def _is_alive(self) -> bool:
        return not self.is_deleted

    def _refuse(self, transport: BrowserTransport, exc: Exception) -> None:
        if not isinstance(exc, RoomError):
            log.exception("browser_join_failed", room_id=self.room_id)
        refusal = exc if isinstance(exc, RoomError) else InternalError()
        self.call("receive", transport.gen, ErrorOut.of(refusal).encode())
        if isinstance(refusal, Forbidden) and not isinstance(refusal, ReadOnly):
            self.deny(transport, str(refusal))  # the browser half stops saying hello too

    def deny(self, transport: BrowserTransport, reason: str) -> None:
        """The room refused (or ended) this generation for good: tell the page why."""
        if transport is not self.transport or self.is_deleted:
            return  # an earlier generation's, or the page is gone
        self.session = None
        if self._on_denied is not None:
            self._on_denied(reason)

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
