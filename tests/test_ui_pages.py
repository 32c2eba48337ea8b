"""Page logic with NiceGUI's simulated `user` (no browser): create and join, the name dialog,
the presence list, the shared language. The browser half of the editor is covered by
``test_browser.py``; here the editor's hello is sent the way the browser sends it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from nicegui.testing import User

from rooms.protocol import Hello
from rooms.registry import RoomRegistry
from tests.ui_simulation import Recorder
from ui.editor import BrowserNotReading, BrowserTransport, CollabEditor
from ui.pages import ROOM_ID, room_id_from


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


def browser_hello(user: User, client_id: str) -> None:
    """What the editor's browser half sends first (the server fills in name and colour)."""
    hello = {"type": "hello", "client_id": client_id, "version": None, "resume_token": "t" * 16, "batch": True}
    user.find(CollabEditor).trigger("frame", {"gen": 1, "data": json.dumps(hello)})


@pytest.mark.parametrize(
    ("pasted", "room_id"),
    [
        ("http://127.0.0.1:8080/room/Ab3_-x", "Ab3_-x"),
        ("https://pad.example.com/room/abc/", "abc"),
        ("/room/abc", "abc"),
        ("  abc  ", "abc"),
        ("https://pad.example.com/other/abc", None),
        ("not a room!", None),
        ("", None),
        ("x" * 65, None),
    ],
)
def test_a_pasted_link_or_id_gives_the_room_id(pasted: str, room_id: str | None) -> None:
    assert room_id == room_id_from(pasted)


async def test_create_asks_for_a_name_once_and_opens_a_new_unguessable_room(users: Callable[[], User]) -> None:
    user = users()
    await user.open("/")
    await user.should_see("You have not chosen a name yet.")
    user.find(marker="create-room").click()
    await choose_name(user, "Ann")
    await user.should_see(kind=CollabEditor)
    path = user.back_history[-1]
    room_id = path.removeprefix("/room/")
    assert path.startswith("/room/") and ROOM_ID.fullmatch(room_id) and len(room_id) >= 16
    await user.should_see("Ann")
    # Remembered: the start page knows the name, and a second room opens without asking.
    await user.open("/")
    await user.should_see("You appear as")
    await user.should_see("Ann")
    user.find(marker="create-room").click()
    await user.should_see(kind=CollabEditor)
    assert user.back_history[-1] != path
    await user.should_not_see("Your name in rooms")


async def test_join_by_pasted_link_and_refuse_garbage(users: Callable[[], User]) -> None:
    user = users()
    await user.open("/")
    user.find(marker="room-link").type("this is no link")
    user.find(marker="join-room").click()
    await wait_for_notice(user, "That is not a room link or id.")
    user.find(marker="room-link").clear().type("http://pad.example/room/team-42")
    user.find(marker="join-room").click()
    await choose_name(user, "Bob")
    await user.should_see(kind=CollabEditor)
    assert "/room/team-42" == user.back_history[-1]
    await user.should_see("team-42")


async def test_an_invalid_room_id_gets_a_clear_page(users: Callable[[], User]) -> None:
    user = users()
    await user.open("/room/no.dots.here")
    await user.should_see("This is not a valid room link.")
    await user.should_not_see(kind=CollabEditor)


async def test_presence_list_shows_members_with_their_names_live(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await ann.open("/room/presence")
    await choose_name(ann, "Ann")
    browser_hello(ann, "ann-tab")
    await ann.should_see("In this room (1)", retries=30)
    await ann.should_see("(you)")
    # Another member arrives (a raw client), with a name that is markup: shown as text.
    name = "<b>Mallory</b>"
    other = await registry.join_versioned(
        "presence", Recorder(), Hello(type="hello", client_id="raw", username=name, version=None)
    )
    await ann.should_see("In this room (2)", retries=30)
    await ann.should_see(name, retries=30)
    await wait_for_notice(ann, f"{name} joined")
    registry.leave(other)
    await ann.should_see("In this room (1)", retries=30)
    await wait_for_notice(ann, f"{name} left")


async def test_the_language_is_shared_by_the_room(users: Callable[[], User], registry: RoomRegistry) -> None:
    ann, bob = users(), users()
    await ann.open("/room/lang")
    await choose_name(ann, "Ann")
    browser_hello(ann, "ann-tab")
    await bob.open("/room/lang")
    await choose_name(bob, "Bob")
    browser_hello(bob, "bob-tab")
    await bob.should_see("In this room (2)", retries=30)
    ann.find(marker="language").elements.pop().set_value("rust")
    await bob.should_see("Rust", retries=30)
    assert "rust" == registry.rooms["lang"].language
    assert "rust" == bob.find(marker="language").elements.pop().value
    assert "rust" == bob.find(CollabEditor).elements.pop().props["language"]


async def test_changing_the_name_renames_the_member(users: Callable[[], User], registry: RoomRegistry) -> None:
    ann = users()
    await ann.open("/room/rename")
    await choose_name(ann, "Ann")
    browser_hello(ann, "ann-tab")
    await ann.should_see("In this room (1)", retries=30)
    ann.find(marker="me").click()
    await ann.should_see("Your name in rooms")
    ann.find(marker="name").clear().type("Annie")
    ann.find(marker="save-name").click()
    await ann.should_see("Annie")
    # The page asks its browser half to say hello again; that hello carries the new name.
    user_editor = ann.find(CollabEditor).elements.pop()
    user_editor._hello(2, json.dumps({"type": "hello", "client_id": "ann-tab", "version": 0, "resume_token": "t" * 16}))
    for _ in range(100):  # the join is a task: the room may have to be loaded first
        if user_editor.session is not None and user_editor.transport is not None and user_editor.transport.gen == 2:
            break
        await asyncio.sleep(0.02)
    assert ["Annie"] == [member.username for member in registry.rooms["rename"].presence]
    assert re.fullmatch(r"#[0-9a-f]{6}", next(iter(registry.rooms["rename"].presence)).color)
    # The page's own leave and join (a new session under the new name) are not announced to it.
    await asyncio.sleep(1.0)
    assert not [message for message in ann.notify.messages if "joined" in message or "left" in message]


async def test_a_page_that_stops_taking_its_messages_is_dropped_by_the_room() -> None:
    sent: list[tuple[str, tuple[object, ...]]] = []
    outbox = SimpleNamespace(messages=[])
    editor = SimpleNamespace(client=SimpleNamespace(outbox=outbox), call=lambda *args: sent.append(args))
    transport = BrowserTransport(editor, gen=3, max_backlog=2)  # type: ignore[arg-type]
    await transport.send("{}")
    assert [("receive", 3, "{}")] == sent
    outbox.messages.extend(["waiting", "waiting"])
    with pytest.raises(BrowserNotReading):
        await transport.send("{}")


async def test_theme_toggle_and_copy_link(users: Callable[[], User]) -> None:
    ann = users()
    await ann.open("/room/looks")
    await choose_name(ann, "Ann")
    editor = ann.find(CollabEditor).elements.pop()
    assert "light" == editor.props["theme"]
    ann.find(marker="theme").click()
    assert "dark" == editor.props["theme"]
    await ann.open("/room/looks")  # remembered for this browser
    assert "dark" == ann.find(CollabEditor).elements.pop().props["theme"]
    ann.find(marker="theme").click()
    assert "light" == ann.find(CollabEditor).elements.pop().props["theme"]
    ann.find(marker="copy-link").click()
    await wait_for_notice(ann, "Link copied")
