"""Private rooms on the pages, with NiceGUI's simulated `user`: a room made on the start page
opens as its interviewer's, a link's cookie decides the role of whoever opens the room, each
role's page offers only what the room would take from it, the room's refusals (a revoked
link, a removal, the end of the interview) reach the page, and a page shows a control's outcome
(a new link, notes saved, a removal) only once the room has stored it (`HeldCommits` holds or
fails the store's commits). The editor's browser half is played
by `BrowserHalf` (see ``test_ui_pages.py``); its own handling of these messages is held to the
reference client by ``test_client_differential.py``."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence

import pytest
from nicegui import ui
from nicegui.testing import User
from nicegui.testing.user_interaction import UserInteraction

from api.credentials import cookie_name as api_cookie_name
from rooms.access import Role
from rooms.errors import TooManyNewRooms
from rooms.registry import RoomRegistry
from rooms.session import DropReason
from rooms.store import RoomWrite, StoreError
from tests.ui_simulation import BrowserHalf, browser_hello, choose_name, follow_link, open_link, until, wait_for_notice
from ui import access, share_dialog, start_page
from ui.editor import CollabEditor
from ui.history import open_history
from ui.reports import (
    AccessState,
    LinkChange,
    Roster,
    RosterEntry,
    parse_access,
    parse_link,
    parse_members,
    parse_notes,
)
from ui.saving import NOT_SAVED, SAVING

INTERVIEWER_CONTROLS = ("lock", "share", "end", "notes")


async def interviewer(users: Callable[[], User], name: str = "Ann") -> tuple[User, str]:
    """A user who made a private room on the start page, on its page now; and the room's id."""
    user = users()
    await user.open("/")
    link = await follow_link(user, lambda: user.find(marker="create-room").click(), lambda: choose_name(user, name))
    return user, link.split("/")[2]


async def join_as(user: User, registry: RoomRegistry, room_id: str, role: Role, name: str) -> None:
    """``user`` opens the room through the link the interviewer shares for ``role``."""
    secret = registry.rooms[room_id].secret_of(role)
    assert secret is not None
    await open_link(user, f"/join/{room_id}/{secret}")
    await choose_name(user, name)


async def connect(user: User, client_id: str, gen: int = 1) -> tuple[CollabEditor, BrowserHalf]:
    """The page's editor says hello as its browser half does, and joins the room."""
    half = BrowserHalf(user)
    browser_hello(user, client_id, gen)
    editor = user.find(CollabEditor).elements.pop()
    await until(lambda: editor.session is not None, "the page's join")
    return editor, half


async def open_share(user: User) -> None:
    """Open the share dialog, and wait until it shows the room's links."""
    user.find(marker="share").click()
    await user.should_see("Candidate link")


async def with_candidate(users: Callable[[], User], registry: RoomRegistry) -> tuple[User, User, str, CollabEditor]:
    """An interviewer (Ann) who made a room, and a candidate (Cy) who joined it, both connected;
    the room's id and the candidate's editor."""
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    cy = users()
    await join_as(cy, registry, room_id, Role.CANDIDATE, "Cy")
    editor, _ = await connect(cy, "cy-tab")
    return ann, cy, room_id, editor


async def with_everyone(users: Callable[[], User], registry: RoomRegistry) -> tuple[User, User, User, str]:
    """An interviewer (Ann), a candidate (Cy) and an observer (Olga), all connected; the room's id."""
    ann, cy, room_id, _ = await with_candidate(users, registry)
    olga = users()
    await join_as(olga, registry, room_id, Role.OBSERVER, "Olga")
    await connect(olga, "olga-tab")
    return ann, cy, olga, room_id


def cookie(room_id: str) -> str:
    return access.cookie_name(room_id)


def shown_links(user: User, role: Role) -> list[str]:
    """The links the user's share dialog shows for ``role``."""
    try:
        return [element.value for element in user.find(marker=f"link-{role.value}").elements]
    except AssertionError:  # none
        return []


def link_url(room_id: str, secret: str | None) -> str:
    return f"http://test/join/{room_id}/{secret}"


class HeldCommits:
    """The room store's commits, from now on held until `release`, and failed when ``failing``."""

    def __init__(self, registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
        self.released = asyncio.Event()
        self.held = asyncio.Event()  # set once a commit waits
        self.failing = False
        commit = registry.store.commit

        async def held(writes: Sequence[RoomWrite]) -> None:
            self.held.set()
            await self.released.wait()
            if self.failing:
                raise StoreError("disk full")
            await commit(writes)

        monkeypatch.setattr(registry.store, "commit", held)

    def release(self, *, failing: bool = False) -> None:
        self.failing = failing
        self.released.set()


async def test_a_room_made_on_the_start_page_opens_as_its_interviewers(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    room = registry.rooms[room_id]
    assert room.access.private
    # The browser keeps the interviewer's secret in the room's cookie, which no script reads.
    assert room.secret_of(Role.INTERVIEWER) == ann.http_client.cookies.get(cookie(room_id))
    editor, _ = await connect(ann, "ann-tab")
    assert editor.session is not None and Role.INTERVIEWER == editor.session.role
    for marker in (*INTERVIEWER_CONTROLS, "history", "language", "presence-toggle"):
        await ann.should_see(marker=marker)
    await ann.should_not_see(marker="copy-link")  # an open room's link: this room's are in Share
    await ann.should_not_see(marker="access-banner")
    await open_share(ann)
    for role in (Role.CANDIDATE, Role.OBSERVER):
        link = ann.find(marker=f"link-{role.value}").elements.pop()
        assert f"http://test/join/{room_id}/{room.secret_of(role)}" == link.value


async def test_an_interviewers_share_dialog_shows_the_link_the_page_joined_with_to_copy_only(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    await open_share(ann)
    await ann.should_see(share_dialog.OWN_LINK)
    # The credential the page joined with (its cookie's), which no script of the page holds.
    own = ann.find(marker="link-interviewer").elements.pop()
    assert f"http://test/join/{room_id}/{ann.http_client.cookies.get(cookie(room_id))}" == own.value
    await ann.should_see(marker="copy-interviewer")
    for marker in ("revoke-interviewer", "renew-interviewer"):
        await ann.should_not_see(marker=marker)


async def test_a_room_that_cannot_be_made_is_said_so_on_the_start_page(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(room_id: str, address: str = "") -> dict[Role, str]:
        raise TooManyNewRooms(3, 12.0)

    monkeypatch.setattr(registry, "create_private", refuse)
    user = users()
    await user.open("/")
    user.find(marker="create-room").click()
    await choose_name(user, "Ann")
    await wait_for_notice(user, "The room could not be made: too many new rooms from this address")
    await user.should_see("Start a new room")


async def test_the_start_page_limits_new_rooms_by_the_requests_address_as_every_limit_does(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    addresses: list[str] = []
    create = registry.create_private

    async def recorded(room_id: str, address: str = "") -> dict[Role, str]:
        addresses.append(address)
        return await create(room_id, address)

    monkeypatch.setattr(registry, "create_private", recorded)
    monkeypatch.setattr(start_page, "client_address", lambda request: "203.0.113.7")  # behind a proxy
    await interviewer(users)
    assert ["203.0.113.7"] == addresses


async def test_a_pasted_link_opens_the_room_with_its_role(users: Callable[[], User], registry: RoomRegistry) -> None:
    _, room_id = await interviewer(users)
    secret = registry.rooms[room_id].secret_of(Role.OBSERVER)
    olga = users()
    await olga.open("/")
    olga.find(marker="room-link").type(f"https://pad.example.com/join/{room_id}/{secret}")
    link = await follow_link(olga, lambda: olga.find(marker="join-room").click(), lambda: choose_name(olga, "Olga"))
    assert f"/join/{room_id}/{secret}" == link
    await olga.should_see(access.OBSERVING)


async def test_a_room_page_without_a_live_link_says_the_room_is_private(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    _, room_id = await interviewer(users)
    eve = users()
    await eve.open(f"/room/{room_id}")
    await eve.should_see(access.PRIVATE_ROOM)
    await eve.should_see("Back to the start page")
    await eve.should_not_see(kind=CollabEditor)
    await eve.should_not_see("Your name in rooms")  # not asked: there is no room for her
    eve.http_client.cookies.set(cookie(room_id), "x" * 43)  # a made-up link
    await eve.open(f"/room/{room_id}")
    await eve.should_see(access.PRIVATE_ROOM)


async def test_a_candidates_page_offers_nothing_the_room_would_refuse(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    _, room_id = await interviewer(users)
    cy = users()
    await join_as(cy, registry, room_id, Role.CANDIDATE, "Cy")
    editor, _ = await connect(cy, "cy-tab")
    assert editor.session is not None and Role.CANDIDATE == editor.session.role
    assert not editor.props["read-only"]
    await cy.should_see(marker="language")  # a candidate may change it, until the room is locked
    for marker in (*INTERVIEWER_CONTROLS, "history", "copy-link", "remove"):
        await cy.should_not_see(marker=marker)
    await cy.should_not_see(marker="access-banner")
    # Asked anyway (the page offers no way to), the history says no.
    with cy:
        assert open_history(registry, room_id, editor, role=Role.CANDIDATE, language="python", dark=False) is None
    await wait_for_notice(cy, "Only interviewers can play back the history")


async def test_an_observers_page_is_read_only_and_shows_the_language_as_text(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    _, room_id = await interviewer(users)
    olga = users()
    await join_as(olga, registry, room_id, Role.OBSERVER, "Olga")
    editor, _ = await connect(olga, "olga-tab")
    assert editor.props["read-only"]
    await olga.should_see(access.OBSERVING)
    await olga.should_see(marker="language-label", content="Python")
    for marker in (*INTERVIEWER_CONTROLS, "history", "language", "remove"):
        await olga.should_not_see(marker=marker)


async def test_the_link_secret_goes_into_the_hello_on_the_server_never_from_the_browser(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    _, room_id = await interviewer(users)
    cy = users()
    await join_as(cy, registry, room_id, Role.CANDIDATE, "Cy")
    interviewer_secret = registry.rooms[room_id].secret_of(Role.INTERVIEWER)
    hello = {"type": "hello", "client_id": "cy-tab", "version": None, "resume_token": "t" * 16}
    cy.find(CollabEditor).trigger("frame", {"gen": 1, "data": json.dumps({**hello, "token": interviewer_secret})})
    editor = cy.find(CollabEditor).elements.pop()
    await until(lambda: editor.session is not None, "the page's join")
    assert editor.session is not None and Role.CANDIDATE == editor.session.role
    # Nothing the page sends its browser holds a link's secret.
    assert cookie(room_id) not in json.dumps(editor.props)


async def test_a_lock_makes_the_candidates_page_say_so_and_an_unlock_takes_it_back(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, room_id, _ = await with_candidate(users, registry)
    ann.find(marker="lock").click()
    await cy.should_see(access.LOCKED, retries=30)
    await ann.should_see(access.LOCKED_FOR_OTHERS, retries=30)
    assert registry.rooms[room_id].access.locked
    assert not cy.find(marker="language").elements.pop().enabled  # the room would refuse it now
    ann.find(marker="lock").click()
    await cy.should_not_see(access.LOCKED, retries=30)
    assert cy.find(marker="language").elements.pop().enabled


async def test_revoking_a_link_ends_its_pages_and_a_new_link_replaces_it(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, room_id, _ = await with_candidate(users, registry)
    old = registry.rooms[room_id].secret_of(Role.CANDIDATE)
    await open_share(ann)
    ann.find(marker="revoke-candidate").click()
    await ann.should_see(marker="no-link-candidate", retries=30)
    await cy.should_see("You no longer have access to this room: link revoked.", retries=30)
    await cy.should_see(marker="access-lost")
    # Opened again, the old link's page says the room is private.
    await cy.open(f"/room/{room_id}")
    await cy.should_see(access.PRIVATE_ROOM)
    ann.find(marker="renew-candidate").click()
    await ann.should_see(marker="link-candidate", retries=30)
    new = registry.rooms[room_id].secret_of(Role.CANDIDATE)
    assert new is not None and new != old
    assert f"http://test/join/{room_id}/{new}" == ann.find(marker="link-candidate").elements.pop().value


@pytest.mark.parametrize("fails", [False, True], ids=["stored", "failed"])
async def test_a_new_link_is_shown_only_once_the_room_has_stored_it(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    room = registry.rooms[room_id]
    old = room.secret_of(Role.CANDIDATE)
    await open_share(ann)
    commits = HeldCommits(registry, monkeypatch)
    ann.find(marker="renew-candidate").click()
    await asyncio.wait_for(commits.held.wait(), 5)
    new = room.secret_of(Role.CANDIDATE)
    assert new is not None and new != old  # the room took it: in memory, not stored yet
    await ann.should_see(marker="share-saving", retries=30)
    assert [link_url(room_id, old)] == shown_links(ann, Role.CANDIDATE)
    commits.release(failing=fails)
    if fails:  # the room is reset: the new link never existed
        await wait_for_notice(ann, NOT_SAVED)
        assert link_url(room_id, new) not in shown_links(ann, Role.CANDIDATE)
        assert not ann.notify.contains(share_dialog.RENEWED)
    else:
        await wait_for_notice(ann, share_dialog.RENEWED)
        assert [link_url(room_id, new)] == shown_links(ann, Role.CANDIDATE)
    await ann.should_not_see(marker="share-saving")


async def test_another_interviewers_revoke_and_renew_redraw_an_open_share_dialog(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    ben = users()
    await join_as(ben, registry, room_id, Role.INTERVIEWER, "Ben")
    await connect(ben, "ben-tab")
    await open_share(ben)
    await open_share(ann)
    ann.find(marker="revoke-observer").click()
    await ben.should_see(marker="no-link-observer", retries=30)
    ann.find(marker="renew-observer").click()
    await ben.should_see(marker="link-observer", retries=30)
    new = registry.rooms[room_id].secret_of(Role.OBSERVER)
    assert [link_url(room_id, new)] == shown_links(ben, Role.OBSERVER)


async def test_copy_never_copies_a_link_revoked_since_the_dialog_drew_it(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[str] = []
    monkeypatch.setattr(ui.clipboard, "write", copied.append)
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    ben = users()
    await join_as(ben, registry, room_id, Role.INTERVIEWER, "Ben")
    await connect(ben, "ben-tab")
    secret = registry.rooms[room_id].secret_of(Role.CANDIDATE)
    await open_share(ben)
    ben.find(marker="copy-candidate").click()
    assert [link_url(room_id, secret)] == copied
    await open_share(ann)
    commits = HeldCommits(registry, monkeypatch)
    ann.find(marker="revoke-candidate").click()
    await asyncio.wait_for(commits.held.wait(), 5)  # revoked, not stored: nobody was told yet
    assert [link_url(room_id, secret)] == shown_links(ben, Role.CANDIDATE)
    ben.find(marker="copy-candidate").click()
    await wait_for_notice(ben, share_dialog.CHANGED)
    assert 1 == len(copied)
    commits.release()
    await ben.should_see(marker="no-link-candidate", retries=30)


async def test_ending_the_interview_after_a_confirmation_leaves_a_read_only_record(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, olga, room_id = await with_everyone(users, registry)
    ann.find(marker="end").click()
    await ann.should_see("End the interview?")
    assert not registry.rooms[room_id].access.ended
    ann.find(marker="end-confirm").click()
    await olga.should_see(access.ENDED, retries=30)
    await cy.should_see("You no longer have access to this room: the interview has ended.", retries=30)
    await ann.should_see(access.ENDED_FOR_INTERVIEWERS, retries=30)
    assert registry.rooms[room_id].access.ended
    assert not ann.find(marker="lock").elements.pop().enabled


async def test_an_interviewer_removes_a_candidate_from_the_presence_panel(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, olga, room_id = await with_everyone(users, registry)
    await ann.should_see("In this room (2)", retries=30)
    await ann.should_see("Observers (1)", retries=30)
    badges = sorted(label.text for label in ann.find(marker="role-badge").elements)
    assert ["candidate", "interviewer", "observer"] == badges
    assert 2 == len(ann.find(marker="remove").elements)  # Cy's and Olga's, never Ann's own
    for page in (cy, olga):
        await page.should_not_see(marker="remove")
    rows = {row_name(button): button for button in ann.find(marker="remove").elements}
    assert {"Cy", "Olga"} == set(rows)
    UserInteraction(ann, {rows["Cy"]}, None).click()
    await ann.should_see("Remove Cy?")  # asked first: the whole candidate link goes
    assert registry.rooms[room_id].secret_of(Role.CANDIDATE) is not None
    ann.find(marker="remove-confirm").click()
    await wait_for_notice(
        ann, "Removed Cy. The candidate link was revoked: make a new one in the share dialog to invite someone else."
    )
    await cy.should_see("You no longer have access to this room: removed from the room.", retries=30)
    await ann.should_see("In this room (1)", retries=30)
    await olga.should_not_see(marker="access-lost")
    # Removing revokes the candidate's link: nobody comes back through it.
    assert registry.rooms[room_id].secret_of(Role.CANDIDATE) is None


async def test_a_removal_the_room_cannot_store_is_said_not_saved_not_done(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, _cy, _room_id, _ = await with_candidate(users, registry)
    await ann.should_see(marker="remove", retries=30)
    ann.find(marker="remove").click()
    commits = HeldCommits(registry, monkeypatch)
    ann.find(marker="remove-confirm").click()
    await asyncio.wait_for(commits.held.wait(), 5)
    await ann.should_see(kind=ui.notification, content=SAVING, retries=30)
    commits.release(failing=True)
    await wait_for_notice(ann, NOT_SAVED)
    assert not ann.notify.contains("Removed Cy")


def row_name(button: ui.element) -> str:
    """The member's name in the presence panel's row of ``button``."""
    row = button.parent_slot.parent if button.parent_slot is not None else button
    return next(label.text for label in row.descendants() if isinstance(label, ui.label) and label.text)


async def test_interviewers_share_notes_that_no_other_role_is_sent(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    ben = users()
    await join_as(ben, registry, room_id, Role.INTERVIEWER, "Ben")
    _, ben_half = await connect(ben, "ben-tab")
    cy = users()
    await join_as(cy, registry, room_id, Role.CANDIDATE, "Cy")
    _, cy_half = await connect(cy, "cy-tab")
    ann.find(marker="notes").type("Strong on recursion.")
    await until(lambda: "Strong on recursion." == registry.rooms[room_id].notes, "the notes saved")
    await until(lambda: "Strong on recursion." == ben.find(marker="notes").elements.pop().value, "Ben's notes")
    await cy.should_not_see(marker="notes")
    await cy.should_not_see("Strong on recursion.")
    seen: list[str] = []
    original = cy_half.receive

    def record(gen: int, data: str) -> None:
        seen.append(data)
        original(gen, data)

    cy_half.receive = record  # type: ignore[method-assign]
    ann.find(marker="notes").type(" Asks good questions.")
    both = "Strong on recursion. Asks good questions."
    # Everyone the room tells is told at once: once Ben's page shows them, Cy would have them.
    await until(lambda: both == ben.find(marker="notes").elements.pop().value, "Ben's second notes")
    assert not [data for data in seen if '"notes"' in data]
    assert ben_half.access is not None and "interviewer" == ben_half.access["role"]


async def test_a_page_not_connected_says_a_control_cannot_be_sent(users: Callable[[], User]) -> None:
    ann, _ = await interviewer(users)  # no hello: the editor has no session
    ann.find(marker="lock").click()
    await wait_for_notice(ann, "Not connected: the editor cannot be locked or unlocked right now.")


@pytest.mark.parametrize("code", [1013, 1000])
async def test_a_control_after_the_room_closed_the_session_says_not_connected_and_changes_nothing(
    users: Callable[[], User], registry: RoomRegistry, code: int
) -> None:
    ann, room_id = await interviewer(users)
    editor, half = await connect(ann, "ann-tab")
    session = editor.session
    assert session is not None
    if code == 1013:  # a full queue: the browser half says hello again later
        registry.drop(session, DropReason.QUEUE_OVERFLOW)
    else:
        registry.leave(session)
    await until(lambda: bool(half.closes), "the page told its session closed")
    assert code == half.closes[-1][1]
    assert editor.session is None
    secret = registry.rooms[room_id].secret_of(Role.CANDIDATE)
    await open_share(ann)
    ann.find(marker="revoke-candidate").click()
    await wait_for_notice(ann, "Not connected: links cannot be changed right now.")
    assert not ann.notify.contains(share_dialog.REVOKED)
    assert secret == registry.rooms[room_id].secret_of(Role.CANDIDATE)


async def test_a_control_the_room_refuses_is_said_so_not_reported_done(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, _cy, room_id, cy_editor = await with_candidate(users, registry)
    await ann.should_see(marker="remove", retries=30)  # Cy's row in Ann's presence panel
    ann.find(marker="remove").click()
    await ann.should_see("Remove Cy?")
    assert cy_editor.session is not None
    registry.leave(cy_editor.session)  # Cy leaves while Ann confirms
    ann.find(marker="remove-confirm").click()
    await wait_for_notice(ann, "Cy cannot be removed: no member")
    assert not ann.notify.contains("Removed Cy")
    assert registry.rooms[room_id].secret_of(Role.CANDIDATE) is not None


async def test_notes_typed_while_not_connected_survive_the_welcome_and_are_sent_after_it(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    editor, half = await connect(ann, "ann-tab")
    ann.find(marker="notes").type("Old.")
    await until(lambda: "Old." == registry.rooms[room_id].notes, "the notes saved")
    assert editor.session is not None
    registry.drop(editor.session, DropReason.QUEUE_OVERFLOW)
    await until(lambda: bool(half.closes), "the page told its session closed")
    ann.find(marker="notes").type(" Newer.")
    await wait_for_notice(ann, "Not connected: the notes cannot be saved right now.")
    await ann.should_see(marker="notes-unsent")
    browser_hello(ann, "ann-tab", gen=2)  # the welcome is followed by the room's notes: "Old."
    await until(lambda: "Old. Newer." == registry.rooms[room_id].notes, "the notes sent again after the welcome")
    assert "Old. Newer." == ann.find(marker="notes").elements.pop().value
    await ann.should_not_see(marker="notes-unsent")


async def test_notes_count_as_saved_only_once_stored_so_a_reset_room_does_not_overwrite_them(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, room_id = await interviewer(users)
    _, half = await connect(ann, "ann-tab")
    ann.find(marker="notes").type("Old.")
    await until(lambda: "Old." == registry.rooms[room_id].notes, "the notes taken")
    await until(lambda: registry.rooms[room_id].all_durable, "the notes stored")
    commits = HeldCommits(registry, monkeypatch)
    ann.find(marker="notes").type(" Newer.")
    await asyncio.wait_for(commits.held.wait(), 5)
    assert "Old. Newer." == registry.rooms[room_id].notes  # taken: in memory, not stored yet
    await ann.should_see(marker="notes-saving", retries=30)
    commits.release(failing=True)  # the room is reset to what the store holds: "Old."
    await until(lambda: bool(half.closes), "the page told its session closed")
    await ann.should_see(marker="notes-unsent")
    commits.failing = False
    browser_hello(ann, "ann-tab", gen=2)  # the welcome is followed by the stored notes: "Old."

    def stored(notes: str) -> bool:
        room = registry.rooms.get(room_id)
        return room is not None and notes == room.notes and room.all_durable

    await until(lambda: stored("Old. Newer."), "the page's notes sent again and stored")
    assert "Old. Newer." == ann.find(marker="notes").elements.pop().value
    await ann.should_not_see(marker="notes-unsent")


async def test_notes_the_room_refuses_stay_on_the_page_unsaved(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    too_long = "x" * (registry.settings.max_notes_chars + 1)  # past the field's maxlength, as a script could
    ann.find(marker="notes").type(too_long)
    await wait_for_notice(ann, "The notes cannot be saved: notes are")
    await ann.should_see(marker="notes-unsent")
    assert "" == registry.rooms[room_id].notes


async def test_after_the_end_the_share_dialog_offers_no_new_candidate_link(users: Callable[[], User]) -> None:
    ann, _ = await interviewer(users)
    await connect(ann, "ann-tab")
    ann.find(marker="end").click()
    ann.find(marker="end-confirm").click()
    await ann.should_see(access.ENDED_FOR_INTERVIEWERS, retries=30)
    await open_share(ann)
    await ann.should_see(marker="no-link-candidate", content=share_dialog.ENDED)
    await ann.should_not_see(marker="renew-candidate")
    await ann.should_see(marker="renew-observer")  # the observer's link is still the interviewer's to change


async def test_a_live_link_the_room_cannot_show_any_more_is_said_so_and_can_be_replaced(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    room = registry.rooms[room_id]
    made_before = room.access.current(Role.OBSERVER)
    secret_of = room.secret_of

    def forgotten(role: Role) -> str | None:  # as after a restart: only the links' hashes are kept
        return None if room.access.current(role) is made_before else secret_of(role)

    monkeypatch.setattr(room, "secret_of", forgotten)
    await open_share(ann)
    await ann.should_see(marker="no-link-observer", content=share_dialog.NOT_SHOWN)
    await ann.should_not_see(share_dialog.NO_LINK)
    ann.find(marker="renew-observer").click()
    await ann.should_see(marker="link-observer", retries=30)
    link = ann.find(marker="link-observer").elements.pop()
    assert f"http://test/join/{room_id}/{room.secret_of(Role.OBSERVER)}" == link.value


async def test_after_a_read_only_refusal_the_lost_text_is_offered_to_copy_only(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, _room_id, _ = await with_candidate(users, registry)
    cy.find(CollabEditor).trigger("lost", {"text": "def f(): pass", "reason": "history"})
    await cy.should_see("Replace the room's text with mine")  # the room would take it now
    ann.find(marker="lock").click()
    await cy.should_see(access.LOCKED, retries=30)
    # The browser half offers the text of a push refused as read_only (the lock came first).
    cy.find(CollabEditor).trigger("lost", {"text": "def f(): pass", "reason": "history"})
    await cy.should_see("The editor is read-only for you now")
    await cy.should_see("Copy")
    await cy.should_not_see("Replace the room's text with mine")


async def test_a_page_that_lost_its_access_offers_no_language_even_when_told_the_room_is_unlocked(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, _room_id, editor = await with_candidate(users, registry)
    assert cy.find(marker="language").elements.pop().enabled
    await open_share(ann)
    ann.find(marker="revoke-candidate").click()
    await cy.should_see(marker="access-lost", retries=30)
    assert not cy.find(marker="language").elements.pop().enabled
    # A late report of the connection that was refused changes nothing: the room would refuse it.
    assert editor.transport is not None
    gen = editor.transport.gen
    cy.find(CollabEditor).trigger("access", {"gen": gen, "role": "candidate", "locked": True, "ended": False})
    await cy.should_see(access.LOCKED, retries=30)
    cy.find(CollabEditor).trigger("access", {"gen": gen, "role": "candidate", "locked": False, "ended": False})
    await cy.should_not_see(access.LOCKED, retries=30)
    assert not cy.find(marker="language").elements.pop().enabled


async def test_after_access_is_lost_a_new_name_is_saved_without_saying_hello_again(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, _room_id, editor = await with_candidate(users, registry)
    await open_share(ann)
    ann.find(marker="revoke-candidate").click()
    await cy.should_see(marker="access-lost", retries=30)
    rejoined: list[bool] = []
    editor.rejoin = lambda: rejoined.append(True)  # type: ignore[method-assign]
    cy.find(marker="me").click()
    cy.find(marker="name").clear().type("Cyrus")
    cy.find(marker="save-name").click()
    await wait_for_notice(cy, "Name saved: it is used the next time you join a room.")
    await cy.should_see("Cyrus")
    assert not rejoined  # a hello would be refused, and counted as a bad link from this address


def test_the_page_reads_the_cookie_the_join_route_sets() -> None:
    assert "collab_link_r-1" == api_cookie_name("r-1")


@pytest.mark.parametrize(
    ("role", "locked", "ended", "text"),
    [
        (None, True, True, None),
        (Role.INTERVIEWER, False, False, None),
        (Role.INTERVIEWER, True, False, access.LOCKED_FOR_OTHERS),
        (Role.INTERVIEWER, True, True, access.ENDED_FOR_INTERVIEWERS),
        (Role.CANDIDATE, False, False, None),
        (Role.CANDIDATE, True, False, access.LOCKED),
        (Role.CANDIDATE, True, True, access.ENDED),
        (Role.OBSERVER, False, False, access.OBSERVING),
        (Role.OBSERVER, True, True, access.ENDED),
    ],
)
def test_the_banner_says_why_the_editor_is_read_only(
    role: Role | None, locked: bool, ended: bool, text: str | None
) -> None:
    assert text == access.banner_text(role, locked=locked, ended=ended)


def test_a_member_list_carries_each_members_role() -> None:
    members = [
        {"user_id": "a", "username": "Ann", "color": "#2563eb", "role": "interviewer"},
        {"user_id": "b", "username": "Bob", "color": "#2563eb", "role": None},
        {"user_id": "c", "username": "Cy", "color": "#2563eb"},
    ]
    expected = Roster(
        "a",
        (
            RosterEntry("a", "Ann", "#2563eb", Role.INTERVIEWER),
            RosterEntry("b", "Bob", "#2563eb"),
            RosterEntry("c", "Cy", "#2563eb"),
        ),
    )
    assert (1, expected) == parse_members(
        {"gen": 1, "self": "a", "members": members}, max_members=3, max_username_chars=10
    )


@pytest.mark.parametrize("role", ["owner", "", "Interviewer", 3, ["observer"]])
def test_a_member_list_with_a_role_the_room_does_not_have_is_refused(role: object) -> None:
    members = [{"user_id": "a", "username": "Ann", "color": "#2563eb", "role": role}]
    with pytest.raises(ValueError, match="role must be null or one of interviewer, candidate, observer"):
        parse_members({"gen": 1, "self": "a", "members": members}, max_members=3, max_username_chars=10)


def test_an_access_report_is_read_as_the_browser_reports_it() -> None:
    args = {"gen": 2, "role": "observer", "locked": False, "ended": True}
    assert (2, AccessState(Role.OBSERVER, False, True)) == parse_access(args)
    assert (3, AccessState(None, False, False)) == parse_access(
        {"gen": 3, "role": None, "locked": False, "ended": False}
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "access event must be an object"),
        ({"gen": 1, "role": "boss", "locked": False, "ended": False}, "role must be null or one of"),
        ({"gen": 1, "role": None, "locked": "yes", "ended": False}, "locked must be true or false, got str"),
        ({"gen": 1, "role": None, "locked": False}, "ended must be true or false, got NoneType"),
    ],
)
def test_an_access_report_of_another_shape_is_refused_saying_why(args: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_access(args)


def test_notes_are_read_up_to_the_rooms_limit() -> None:
    assert (4, "ok") == parse_notes({"gen": 4, "text": "ok"}, max_chars=5)
    with pytest.raises(ValueError, match="text must be at most 5 characters, got 6"):
        parse_notes({"gen": 4, "text": "x" * 6}, max_chars=5)
    with pytest.raises(ValueError, match="text must be a string, got int"):
        parse_notes({"gen": 4, "text": 7}, max_chars=5)


def test_a_link_change_is_read_as_the_browser_reports_it() -> None:
    assert (2, LinkChange(Role.CANDIDATE, "hX0f-_9")) == parse_link({"gen": 2, "role": "candidate", "token": "hX0f-_9"})
    assert (3, LinkChange(Role.OBSERVER, None)) == parse_link({"gen": 3, "role": "observer"})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ("link", "link event must be an object, got str"),
        ({"gen": 1, "role": "interviewer"}, "role must be one of candidate, observer, got 'interviewer'"),
        ({"gen": 1, "role": ["candidate"]}, "role must be one of candidate, observer, got list"),
        ({"gen": 1, "role": "candidate", "token": "a b"}, "token must be absent or 1 to 128 letters"),
        ({"gen": 1, "role": "candidate", "token": "x" * 129}, "got 129 characters"),
        ({"gen": 1, "role": "candidate", "token": 7}, "got int"),
    ],
)
def test_a_link_change_of_another_shape_is_refused_saying_why(args: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_link(args)


async def test_a_link_kept_for_a_room_that_is_gone_says_so_and_makes_no_room(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    user = users()
    user.http_client.cookies.set(cookie("gone"), "a-secret-of-a-deleted-room")
    await user.open("/room/gone")
    await user.should_see("There is no room with this id.")
    assert None is registry.rooms.get("gone")


async def test_a_server_without_open_rooms_says_so_for_a_room_named_by_hand(
    users: Callable[[], User], registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = registry.settings.model_copy(update={"open_rooms": False})
    monkeypatch.setattr(registry, "settings", closed)
    monkeypatch.setattr(registry.loaded, "settings", closed)
    user = users()
    await user.open("/room/by-hand")
    await user.should_see("This server holds interview rooms only.")
    assert None is registry.rooms.get("by-hand")
