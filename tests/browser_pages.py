"""The people of an interview in a real browser: each in a browser context of their own, joining
as a newcomer does (the start page, or a link opened), with a record of everything their page's
socket received and of what its console warned.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from playwright.sync_api import Browser, Locator, Page, ViewportSize, WebSocket, expect
from websockets.sync.client import connect as ws_connect

from api.credentials import cookie_name
from tests.conftest import LiveServer
from tests.test_browser import Pad

DESKTOP: ViewportSize = {"width": 1100, "height": 620}
ROOM_URL = re.compile(r".*/room/[A-Za-z0-9_-]+$")
# How long a run may take to end: each Python run gets a worker of its own, which loads Pyodide
# unless the warm one the page started after its last run is ready (3-6 s, more on a busy
# machine). The room itself ends a run "lost" after its time limit and 30 s for that loading.
RUN_MS = 45_000
KEPT_RUNS = 20  # the run panel shows the newest this many (ui/collab_runs.js)


@dataclass
class Person(Pad):
    """One person's page in a private room."""

    received: list[str] = field(default_factory=list)  # every socket.io frame the page received
    warnings: list[str] = field(default_factory=list)  # the console's warnings and errors
    errors: list[str] = field(default_factory=list)  # uncaught exceptions of the page

    def watch(self) -> None:
        """Record from now on (before the first navigation, so that nothing is missed)."""

        def socket(ws: WebSocket) -> None:
            ws.on("framereceived", lambda payload: self.received.append(_text(payload)))

        self.page.on("websocket", socket)
        self.page.on("console", lambda m: self.warnings.append(m.text) if m.type in ("warning", "error") else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    @property
    def room_id(self) -> str:
        return self.page.url.rsplit("/", 1)[-1]

    def secret(self) -> str:
        """The link secret this person's browser keeps for the room (in an HttpOnly cookie)."""
        name = cookie_name(self.room_id)
        return next(cookie["value"] for cookie in self.context.cookies() if cookie["name"] == name)

    def set_name(self) -> None:
        self.page.locator(".collab-name-input input").fill(self.name)
        self.page.locator(".collab-save-name").click()

    def type_at_end(self, text: str) -> None:
        """Real key presses, at the end of the text."""
        self.page.locator(".cm-content").click()
        self.page.keyboard.press("Control+End")
        self.page.keyboard.type(text)

    def uses_a_websocket(self) -> bool:
        """Whether the page's socket.io runs over a WebSocket (the frames `received` records)."""
        return bool(self.page.evaluate("window.socket.io.engine.transport.name === 'websocket'"))

    def received_text(self) -> str:
        return "\n".join(self.received)

    def set_code(self, code: str) -> None:
        """The whole text replaced, as a paste would, and confirmed by the room."""
        self.page.evaluate("(code) => window.collabEditor.setText(code)", code)
        self.wait_text("t === arg", code)
        self.wait_settled()

    def pick_question(self, title: str) -> None:
        """The header's question button, and the question of this title in its dialog."""
        self.page.locator(".collab-question-pick").click()
        picker = self.page.locator(".collab-question-picker")
        picker.locator(".q-item", has_text=title).click()
        expect(picker).to_have_count(0)

    def runs(self) -> Locator:
        """The runs in the page's run panel, oldest first."""
        return self.page.locator(".collab-run")

    def press_run(self, button: str = ".collab-run-button") -> str:
        """Press Run (or ``.collab-run-tests``) once the page lets its user run; the new run's id."""
        before = self.runs().count()
        control = self.page.locator(button)
        expect(control).to_be_enabled(timeout=10_000)
        control.click()
        expect(self.runs()).to_have_count(min(before + 1, KEPT_RUNS))
        run_id = self.runs().last.get_attribute("data-run-id")
        assert run_id is not None
        return run_id

    def run_ended(self, run_id: str, status: str = "ok", timeout: float = RUN_MS) -> Locator:
        """The run in the page's run panel, once it ended with ``status``."""
        run = self.page.locator(f".collab-run[data-run-id='{run_id}']")
        expect(run).to_have_attribute("data-status", re.compile(r"^(?!starting$|running$)"), timeout=timeout)
        expect(run).to_have_attribute("data-status", status)
        return run


def _text(payload: str | bytes) -> str:
    return payload if isinstance(payload, str) else payload.decode(errors="replace")


@dataclass
class People:
    """The browser contexts of one test (closed by `close`)."""

    browser: Browser
    live: LiveServer
    pages: list[Page] = field(default_factory=list)
    persons: list[Person] = field(default_factory=list)

    def person(self, name: str, viewport: ViewportSize = DESKTOP, **options: Any) -> Person:
        context = self.browser.new_context(viewport=viewport, **options)
        who = Person(context.new_page(), context, name)
        who.watch()
        self.persons.append(who)
        return who

    def stranger(self) -> Page:
        """A page in a fresh browser: no cookie, no name."""
        page = self.browser.new_context().new_page()
        self.pages.append(page)
        return page

    def create_room(self, name: str, viewport: ViewportSize = DESKTOP) -> Person:
        """A newcomer makes a private room on the start page (asked for a name on the way) and
        lands in it as its interviewer."""
        who = self.person(name, viewport)
        who.page.goto(self.live.http)
        who.page.locator(".collab-create").click()
        who.set_name()
        who.page.wait_for_url(ROOM_URL)
        who.wait_live()
        return who

    def interview(self) -> dict[str, str]:
        """A private room made with the API: the link of each role."""
        response = httpx.post(f"{self.live.http}/api/rooms", timeout=10)
        assert 201 == response.status_code, response.text
        links: dict[str, str] = response.json()["links"]
        return links

    def join(self, link: str, name: str, viewport: ViewportSize = DESKTOP, **options: Any) -> Person:
        """Someone opens a link they were sent, and gives their name."""
        who = self.person(name, viewport, **options)
        who.page.goto(link)
        who.page.wait_for_url(ROOM_URL)
        who.set_name()
        who.wait_live()
        assert [] == who.errors
        return who

    def close(self) -> None:
        for page in self.pages:
            page.context.close()
        for who in self.persons:
            who.close()


def share_links(interviewer: Person) -> dict[str, str]:
    """The candidate's and the observer's links, as the share dialog shows them; the dialog is
    left open."""
    page = interviewer.page
    if not page.locator(".collab-share").is_visible():
        page.locator(".collab-share-open").click()
    page.locator(".collab-share").wait_for()
    return {role: page.locator(f".collab-link-{role} input").input_value() for role in ("candidate", "observer")}


def close_share(interviewer: Person) -> None:
    dialog = interviewer.page.locator(".collab-share")
    dialog.locator("button:has(i:text('close'))").click()
    dialog.wait_for(state="hidden")


def room_text(live: LiveServer, room_id: str, secret: str) -> str:
    """The room's text as the server keeps it, read by a connection joined with ``secret``."""
    with ws_connect(live.ws(room_id)) as raw:
        raw.send(json.dumps({"type": "hello", "client_id": "reader", "version": None, "token": secret}))
        welcome = json.loads(raw.recv(timeout=10))
        assert "welcome" == welcome["type"], welcome
        return str(welcome["doc"])


def wait_for_notes(live: LiveServer, room_id: str, interviewer_secret: str, notes: str, timeout: float = 10) -> None:
    """Until the room has ``notes``: as another interviewer's connection is sent them."""
    with ws_connect(live.ws(room_id)) as raw:
        hello = {"type": "hello", "client_id": "notes-reader", "username": "Notes reader", "version": None}
        raw.send(json.dumps({**hello, "token": interviewer_secret}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(raw.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("type") == "notes" and message.get("text") == notes:
                return
