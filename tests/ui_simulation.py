"""The pieces of NiceGUI `user`-simulation tests: a started registry, simulated users of
``tests/ui_main.py`` served by it (each notification recorded for the user whose page made it),
a raw client's transport that records what it is sent, the editor's browser half as the tests
play it (`BrowserHalf`), and a simulated browser's way through a private room's link
(`follow_link`).

``tests/conftest.py`` loads this module as a plugin, so every test module can ask for the fixtures.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from nicegui import context, core
from nicegui.testing import User
from nicegui.testing.user_notify import UserNotify
from nicegui.testing.user_simulation import user_simulation

from rooms.registry import RoomRegistry
from rooms.settings import Settings
from tests import ui_services
from ui.editor import CollabEditor
from ui.pages import Services

MAIN = Path(__file__).with_name("ui_main.py")


class Recorder:
    """A raw client's transport: keeps what the room sends it."""

    name = "test"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def open_link(user: User, link: str) -> str:
    """Open a private room's link as a browser does: ``/join/...`` keeps the secret in the room's
    cookie (in the simulated browser's cookie jar), then the room's page opens. The room id."""
    response = await user.http_client.get(link)
    assert 200 == response.status_code, response.text
    room_id = link.split("/")[2]
    await user.open(f"/room/{room_id}")
    return room_id


async def follow_link(user: User, act: Callable[[], object], then: Callable[[], Awaitable[None]] | None = None) -> str:
    """Do what makes the page navigate to a room's link (``act``, then ``then``: a name to
    choose, say), and follow it with `open_link` (the simulation opens NiceGUI pages only).
    Returns the link's path."""
    targets: list[str] = []
    user.navigate.to = lambda target, new_tab=False: targets.append(target)  # type: ignore[method-assign]
    try:
        act()
        if then is not None:
            await then()
        for _ in range(250):
            if targets:
                break
            await asyncio.sleep(0.02)
    finally:
        del user.navigate.to
    assert targets, "the page navigated nowhere"
    await open_link(user, targets[-1])
    return targets[-1]


@pytest.fixture
async def registry() -> AsyncIterator[RoomRegistry]:
    registry = RoomRegistry(Settings(room_grace_seconds=60))
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
async def users(registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[[], User]]:
    ui_services.provide(Services(registry=lambda: registry, settings=registry.settings))
    everyone: list[User] = []
    record = UserNotify.__call__

    def to_its_page(notify: UserNotify, message: str, **kwargs: Any) -> None:
        # The simulation hands `ui.notify` to the user whose attributes were read last; with
        # several users, a notification made after an await (once a change is stored) would go
        # to whoever's page spoke meanwhile. It goes to the user whose page made it.
        try:
            client = context.client
        except RuntimeError:
            client = None
        mine = next((user.notify for user in everyone if client is not None and user.client is client), notify)
        record(mine, message, **kwargs)

    monkeypatch.setattr(UserNotify, "__call__", to_its_page)
    try:
        async with user_simulation(main_file=MAIN) as first:
            made = [first]

            def next_user() -> User:
                user = (
                    made.pop()
                    if made
                    else User(httpx.AsyncClient(transport=httpx.ASGITransport(core.app), base_url="http://test"))
                )
                everyone.append(user)
                return user

            yield next_user
    finally:
        ui_services.provide(None)


async def choose_name(user: User, name: str) -> None:
    await user.should_see("Your name in rooms")
    user.find(marker="name").type(name)
    user.find(marker="save-name").click()


async def wait_for_notice(user: User, text: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if user.notify.contains(text):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no notification {text!r}; got {user.notify.messages}")


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def browser_hello(user: User, client_id: str, gen: int = 1) -> None:
    """What the editor's browser half sends first (the server fills in name and colour)."""
    hello = {"type": "hello", "client_id": client_id, "version": None, "resume_token": "t" * 16, "batch": True}
    user.find(CollabEditor).trigger("frame", {"gen": gen, "data": json.dumps(hello)})


class BrowserHalf:
    """Keeps what the room sends the page and reports it as the editor's browser half does: the
    member list (its welcome, then each member_joined and member_left) with a ``members`` event
    (unless ``members`` is false), the room's language and the other authors of updates with an
    ``activity`` event, the role and the room's lock and end with an ``access`` event, the
    interviewers' notes with a ``notes`` event, and each change to a shared role's link with a
    ``link`` event; it keeps each ``closed`` call too. The browser's 2 s expiry of an author is
    not simulated."""

    def __init__(self, user: User, *, members: bool = True) -> None:
        self.user = user
        self.editor = user.find(CollabEditor).elements.pop()
        self.own_id = ""
        self.members: dict[str, dict[str, str]] = {}
        self.reported: list[dict[str, Any]] = []
        self.report_members = members
        self.language: str | None = None
        self.typing: list[str] = []
        self.activity: dict[str, Any] | None = None  # the last activity event
        self.access: dict[str, Any] | None = None  # the last access event
        self.errors: list[dict[str, Any]] = []  # every error the room sent
        self.closes: list[tuple[int, int, str]] = []  # (gen, code, reason) of each closed session
        send = self.editor.call

        def call(method: str, *args: Any) -> None:
            send(method, *args)
            if method == "receive":
                self.receive(*args)
            elif method == "closed":
                self.closes.append(args)

        self.editor.call = call  # type: ignore[method-assign]

    def receive(self, gen: int, data: str) -> None:
        parsed = json.loads(data)
        before = (self.own_id, dict(self.members))
        messages = parsed if isinstance(parsed, list) else [parsed]
        welcomed = any(message["type"] == "welcome" for message in messages)
        access = dict(self.access or {"role": None, "locked": False, "ended": False}, gen=gen)
        notes = []
        links: dict[str, str | None] = {}
        for message in messages:
            if message["type"] == "welcome":
                self.own_id = message["user_id"]
                self.members = {member["user_id"]: member for member in message["members"]}
                self.language = message["language"]
                access.update({key: message.get(key) or default for key, default in access_fields()})
            elif message["type"] == "member_joined":
                self.members[message["user_id"]] = message
            elif message["type"] == "member_left":
                self.members.pop(message["user_id"], None)
            elif message["type"] == "language":
                self.language = message["language"]
            elif message["type"] in ("locked", "ended"):
                access[message["type"]] = message.get("locked", True)
            elif message["type"] == "notes":
                notes.append(message["text"])
            elif message["type"] == "link":
                links[message["role"]] = message.get("token")
            elif message["type"] == "error":
                self.errors.append(message)
            elif message["type"] == "update" and not welcomed:  # a catch-up is not typing
                author = message.get("user_id")
                if author and author != self.own_id and author not in self.typing:
                    self.typing.append(author)
        if self.editor.is_deleted:
            return
        if self.report_members and (self.own_id, self.members) != before:
            members = [
                {key: m.get(key) for key in ("user_id", "username", "color", "role")} for m in self.members.values()
            ]
            args = {"gen": gen, "self": self.own_id, "members": members}
            self.reported.append(args)
            self.user.find(CollabEditor).trigger("members", args)
        activity = {"gen": gen, "language": self.language, "typing": sorted(self.typing)}
        if activity != self.activity:
            self.activity = activity
            self.user.find(CollabEditor).trigger("activity", activity)
        if welcomed or access != self.access:
            self.access = access
            self.user.find(CollabEditor).trigger("access", access)
        for text in notes:
            self.user.find(CollabEditor).trigger("notes", {"gen": gen, "text": text})
        for role, token in links.items():
            link = {"gen": gen, "role": role} if token is None else {"gen": gen, "role": role, "token": token}
            self.user.find(CollabEditor).trigger("link", link)


def access_fields() -> list[tuple[str, Any]]:
    """The welcome's fields of an ``access`` event, with their values in an open room."""
    return [("role", None), ("locked", False), ("ended", False)]
