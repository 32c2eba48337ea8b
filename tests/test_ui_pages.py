"""Page logic with NiceGUI's simulated `user` (no browser): create and join, the name dialog,
the presence list, the shared language. The browser half of the editor is covered by
``test_browser.py``; here the editor's hello is sent the way the browser sends it, and its
member list and the room's activity are reported the way the browser reports them
(`tests.ui_simulation.BrowserHalf`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from nicegui.events import GenericEventArguments
from nicegui.testing import User

from rooms.limits import ROOM_ID
from rooms.protocol import Hello, Language
from rooms.registry import RoomRegistry
from tests.ui_simulation import BrowserHalf, Recorder, browser_hello, choose_name, follow_link, until, wait_for_notice
from ui.editor import (
    BrowserNotReading,
    BrowserTransport,
    CollabEditor,
    RoomActivity,
    Roster,
    RosterEntry,
    parse_activity,
    parse_members,
)
from ui.presence_panel import comings_and_goings
from ui.start_page import link_target


def language_of(user: User) -> Any:
    """The value of the page's language select."""
    return user.find(marker="language").elements.pop().value


def members_event(gen: int, own: str, *names: str) -> dict[str, Any]:
    """A ``members`` event of members ``u-<name>``, this page's own member being ``u-<own>``."""
    members = [{"user_id": f"u-{name}", "username": name, "color": "#2563eb"} for name in names]
    return {"gen": gen, "self": f"u-{own}", "members": members}


async def connected_page(user: User, room: str, name: str) -> CollabEditor:
    """``user`` in ``room`` with a session of generation 1 (no member list reported yet)."""
    await user.open(f"/room/{room}")
    await choose_name(user, name)
    browser_hello(user, f"{name}-tab")
    editor = user.find(CollabEditor).elements.pop()
    await until(lambda: editor.session is not None, "the page's join")
    return editor


@pytest.mark.parametrize(
    ("pasted", "target"),
    [
        ("http://127.0.0.1:8080/room/Ab3_-x", "/room/Ab3_-x"),
        ("https://pad.example.com/room/abc/", "/room/abc"),
        ("/room/abc", "/room/abc"),
        ("  abc  ", "/room/abc"),
        ("https://pad.example.com/join/abc/s3cr_t-X", "/join/abc/s3cr_t-X"),
        ("/join/abc/s3cr_t-X/", "/join/abc/s3cr_t-X"),
        ("https://pad.example.com/join/abc/not%20a%20secret", None),
        ("https://pad.example.com/join/abc/" + "s" * 129, None),
        ("https://pad.example.com/join/a.b/secret", None),
        ("https://pad.example.com/other/abc", None),
        ("not a room!", None),
        ("", None),
        ("x" * 65, None),
    ],
)
def test_a_pasted_link_or_id_gives_the_page_to_open(pasted: str, target: str | None) -> None:
    assert target == link_target(pasted)


async def test_create_asks_for_a_name_once_and_opens_a_new_unguessable_room(users: Callable[[], User]) -> None:
    user = users()
    await user.open("/")
    await user.should_see("You have not chosen a name yet.")
    link = await follow_link(user, lambda: user.find(marker="create-room").click(), lambda: choose_name(user, "Ann"))
    await user.should_see(kind=CollabEditor)
    room_id = link.split("/")[2]
    assert ROOM_ID.fullmatch(room_id) and len(room_id) >= 16
    await user.should_see("Ann")
    # Remembered: the start page knows the name, and a second room opens without asking.
    await user.open("/")
    await user.should_see("You appear as")
    await user.should_see("Ann")
    second = await follow_link(user, lambda: user.find(marker="create-room").click())
    await user.should_see(kind=CollabEditor)
    assert second.split("/")[2] != room_id
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
    BrowserHalf(ann)
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
    BrowserHalf(bob)
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
    half = BrowserHalf(ann)
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
    await ann.should_see(marker="member-name", content="Annie", retries=30)
    assert 2 == half.reported[-1]["gen"]
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


# The member list: what the editor's connection reports, and nothing else.


async def test_the_presence_list_is_the_editors_member_list_not_the_rooms(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await connected_page(ann, "one-source", "Ann")
    BrowserHalf(ann, members=False)  # the room's activity only: the lists are reported here
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann", "Ann", "<b>Ghost</b>"))
    await ann.should_see("In this room (2)", retries=30)
    await ann.should_see("<b>Ghost</b>")  # as text
    await ann.should_see("(you)")
    # Someone joins the room, but the editor has not reported it: the page shows what it was told,
    # even once it has read the room again (the language that member sets reaches the page).
    mallory = await registry.join_versioned(
        "one-source", Recorder(), Hello(type="hello", client_id="raw", username="Mallory", version=None)
    )
    registry.receive(mallory, Language(type="language", language="rust"))
    await until(lambda: "rust" == language_of(ann), "the room's language")
    await ann.should_see("In this room (2)")
    await ann.should_not_see("Mallory")
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann", "Ann", "Mallory"))
    await ann.should_see("Mallory", retries=30)
    await wait_for_notice(ann, "Mallory joined")
    await wait_for_notice(ann, "<b>Ghost</b> left")


async def test_a_page_without_a_connection_shows_no_members(users: Callable[[], User]) -> None:
    ann = users()
    await connected_page(ann, "offline-list", "Ann")
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann", "Ann", "Bob"))
    await ann.should_see("In this room (2)", retries=30)
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann"))
    await ann.should_see("Waiting for the room…", retries=30)
    await ann.should_not_see("Bob")
    # Back: the new list is compared with the last one of a live connection, so a member who
    # was there all along is not announced again, and the page's new own member never is.
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann2", "Ann2", "Bob", "Cy"))
    await ann.should_see("In this room (3)", retries=30)
    await wait_for_notice(ann, "Cy joined")
    assert ["Cy joined"] == [message for message in ann.notify.messages if "joined" in message or "left" in message]


async def test_members_of_another_generation_or_shape_are_not_shown(users: Callable[[], User]) -> None:
    ann = users()
    editor = await connected_page(ann, "gens", "Ann")
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann", "Ann"))
    await ann.should_see("In this room (1)", retries=30)
    too_many = members_event(1, "Ann", *(f"m{i}" for i in range(editor._settings.max_members_per_room + 1)))
    styled = members_event(1, "Ann", "Ann", "Eve")
    styled["members"][1]["color"] = "red; background-image: url(https://example.com/)"
    for args in (members_event(0, "Ann", "Ann", "Old"), members_event(2, "Ann", "Ann", "Next"), too_many, styled):
        # Awaited here, so each has been handled once this returns.
        await editor._on_members_event(GenericEventArguments(sender=editor, client=editor.client, args=args))
    await ann.should_see("In this room (1)")
    for name in ("Old", "Next", "m0", "Eve"):
        await ann.should_not_see(name)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "members event must be an object"),
        ({"gen": True, "self": "", "members": []}, "gen must be an integer"),
        ({"gen": 1, "self": 7, "members": []}, "self must be a string"),
        ({"gen": 1, "self": "u" * 65, "members": []}, "self must be at most 64 characters"),
        ({"gen": 1, "self": "u", "members": {}}, "members must be a list"),
        ({"gen": 1, "self": "u", "members": [{}] * 4}, "members must hold at most 3 members, got 4"),
        ({"gen": 1, "self": "u", "members": ["u"]}, "a member must be an object"),
        ({"gen": 1, "self": "u", "members": [{"user_id": "u", "username": "Ann"}]}, "color must be a string"),
        (
            {"gen": 1, "self": "u", "members": [{"user_id": "u", "username": "A" * 11, "color": "#000000"}]},
            "username must be at most 10 characters, got 11",
        ),
        (
            {"gen": 1, "self": "u", "members": [{"user_id": "u", "username": "Ann", "color": "#00000g"}]},
            "color must be #rrggbb",
        ),
    ],
)
def test_a_member_list_of_another_shape_is_refused_saying_why(args: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_members(args, max_members=3, max_username_chars=10)


def test_a_member_list_is_read_as_the_browser_reports_it() -> None:
    args = {"gen": 4, "self": "a1", "members": [{"user_id": "a1", "username": "Ann", "color": "#2563EB", "x": 1}]}
    assert (4, Roster("a1", (RosterEntry("a1", "Ann", "#2563EB"),))) == parse_members(
        args, max_members=3, max_username_chars=10
    )
    # Closed before its first welcome: no own member, and nobody known.
    assert (5, Roster("", ())) == parse_members(
        {"gen": 5, "self": None, "members": []}, max_members=3, max_username_chars=10
    )


@pytest.mark.parametrize(
    ("before", "after", "own", "news"),
    [
        ({"a": "Ann"}, {"a": "Ann", "b": "Bob"}, {"a"}, (["Bob"], [])),
        ({"a": "Ann", "b": "Bob"}, {"a": "Ann"}, {"a"}, ([], ["Bob"])),
        # This page's members, old and new, are never news.
        ({"a": "Ann"}, {"a2": "Ann"}, {"a", "a2"}, ([], [])),
        # A reconnect under the same name is not news either.
        ({"a": "Ann", "b": "Bob"}, {"a": "Ann", "b2": "Bob"}, {"a"}, ([], [])),
        ({"a": "Ann", "b": "Bob"}, {"a": "Ann", "c": "Cy"}, {"a"}, (["Cy"], ["Bob"])),
    ],
)
def test_who_joined_and_who_left_between_two_lists(
    before: dict[str, str], after: dict[str, str], own: set[str], news: tuple[list[str], list[str]]
) -> None:
    assert news == comings_and_goings(before, after, own)


async def test_a_flood_of_hellos_gets_one_refusal_a_second(users: Callable[[], User]) -> None:
    ann = users()
    editor = await connected_page(ann, "hellos", "Ann")
    replies: list[tuple[Any, ...]] = []
    editor.call = lambda method, *args: replies.append((method, *args))  # type: ignore[method-assign]
    hello = json.dumps({"type": "hello", "client_id": "ann-tab", "version": None, "resume_token": "t" * 16})
    for gen in range(2, 30):
        editor._hello(gen, hello)
    refusals = [args for method, *args in replies if method == "receive" and '"rate_limited"' in args[1]]
    assert 1 == len(refusals)


async def test_a_burst_of_member_lists_is_shown_as_its_newest(users: Callable[[], User]) -> None:
    ann = users()
    await connected_page(ann, "burst", "Ann")
    ann.find(CollabEditor).trigger("members", members_event(1, "Ann", "Ann"))
    await ann.should_see("In this room (1)", retries=30)
    for i in range(20):
        ann.find(CollabEditor).trigger("members", members_event(1, "Ann", "Ann", f"m{i}"))
    await ann.should_see(marker="member-name", content="m19", retries=30)
    # Drawn at most twice (at once, then the newest after the interval), not once per list.
    assert 2 >= len([message for message in ann.notify.messages if "joined" in message])


# The room's language and who typed lately: what the editor's connection reports, and nothing else.


def mallory_joins(registry: RoomRegistry, room: str) -> Any:
    return registry.join_versioned(
        room, Recorder(), Hello(type="hello", client_id="raw", username="Mallory", version=None)
    )


async def test_a_member_whose_update_just_arrived_is_shown_typing(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    await connected_page(ann, "typing", "Ann")
    half = BrowserHalf(ann)
    mallory = await mallory_joins(registry, "typing")
    await ann.should_see(marker="member-name", content="Mallory", retries=30)
    await ann.should_not_see("typing…")
    registry.receive(mallory, json.dumps({"type": "push", "version": 0, "seq": 1, "changes": [[0, "x"]]}))
    await ann.should_see("typing…", retries=30)
    # Two seconds later the browser half reports that nobody is typing.
    assert half.activity is not None
    ann.find(CollabEditor).trigger("activity", {**half.activity, "typing": []})
    await ann.should_not_see("typing…", retries=30)


async def test_the_page_shows_the_language_its_connection_reports_not_the_rooms(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann = users()
    editor = await connected_page(ann, "heard", "Ann")
    assert "python" == language_of(ann)
    mallory = await mallory_joins(registry, "heard")
    registry.receive(mallory, Language(type="language", language="rust"))
    # Not reported by the editor (no browser half here): the page goes by what it is told.
    ann.find(CollabEditor).trigger("activity", {"gen": 1, "language": "go", "typing": []})
    await until(lambda: "go" == language_of(ann), "the reported language")
    assert "go" == editor.props["language"]
    assert "rust" == registry.rooms["heard"].language
    for args in (
        {"gen": 0, "language": "c", "typing": []},
        {"gen": 2, "language": "c", "typing": []},
        {"gen": 1, "language": "<script>", "typing": []},
        {"gen": 1, "language": "c", "typing": [f"u{i}" for i in range(editor._settings.max_members_per_room + 1)]},
    ):
        # Awaited here, so each has been handled once this returns.
        await editor._on_activity_event(GenericEventArguments(sender=editor, client=editor.client, args=args))
    assert "go" == language_of(ann)
    # Not known yet (a connection closed before its welcome): the page keeps what it shows.
    await editor._on_activity_event(
        GenericEventArguments(sender=editor, client=editor.client, args={"gen": 1, "language": None, "typing": []})
    )
    assert "go" == language_of(ann)


async def test_a_new_page_shows_the_rooms_language_at_once(users: Callable[[], User], registry: RoomRegistry) -> None:
    ann, bob = users(), users()
    editor = await connected_page(ann, "first-render", "Ann")
    assert editor.session is not None
    registry.receive(editor.session, Language(type="language", language="rust"))
    assert "rust" == registry.rooms["first-render"].language
    await bob.open("/room/first-render")
    await choose_name(bob, "Bob")
    await bob.should_see(marker="language")
    assert "rust" == language_of(bob)
    assert "rust" == bob.find(CollabEditor).elements.pop().props["language"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (None, "activity event must be an object"),
        ({"gen": "1", "language": None, "typing": []}, "gen must be an integer"),
        ({"gen": 1, "language": 3, "typing": []}, "language must be a string"),
        ({"gen": 1, "language": "x" * 41, "typing": []}, "language must be 1 to 40 characters, got 41"),
        ({"gen": 1, "language": "<b>", "typing": []}, "language '<b>' may only hold"),
        ({"gen": 1, "language": "go", "typing": "u1"}, "typing must be a list"),
        ({"gen": 1, "language": "go", "typing": ["a", "b", "c", "d"]}, "typing must hold at most 3 user ids, got 4"),
        ({"gen": 1, "language": "go", "typing": [7]}, "a typing user_id must be a string"),
        ({"gen": 1, "language": "go", "typing": ["u" * 65]}, "a typing user_id must be at most 64 characters"),
    ],
)
def test_an_activity_report_of_another_shape_is_refused_saying_why(args: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_activity(args, max_members=3)


def test_an_activity_report_is_read_as_the_browser_reports_it() -> None:
    args = {"gen": 2, "language": "C++", "typing": ["b2", "a1"], "x": 1}
    assert (2, RoomActivity("C++", frozenset({"a1", "b2"}))) == parse_activity(args, max_members=3)
    # Before the connection's first welcome the language is not known.
    assert (3, RoomActivity(None, frozenset())) == parse_activity(
        {"gen": 3, "language": None, "typing": []}, max_members=3
    )
