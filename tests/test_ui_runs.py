"""The room's question and running code on the pages, with NiceGUI's simulated `user`: the
question panel shows the server's question to everyone and its hidden tests only to those who
may see the answers, the picker and the "Running code allowed" switch are offered only to
those the room would take them from, and reports from the browser half that the room could not
have sent are ignored. The browser half is played by `RunsBrowserHalf`, which adds the
``question`` and ``runs`` reports to `BrowserHalf`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from nicegui import ui
from nicegui.testing import User
from structlog.testing import capture_logs

from rooms.access import Role
from rooms.questions import Question
from rooms.registry import RoomRegistry
from tests.test_ui_roles import interviewer, join_as
from tests.ui_simulation import BrowserHalf, browser_hello, choose_name, until, wait_for_notice
from ui.editor import CollabEditor
from ui.question_panel import HIDDEN_FOR_INTERVIEWERS, HIDDEN_IN_OPEN_ROOM, TEXT_STAYS, shown_json
from ui.reports import parse_question, parse_runs

PICKER = ("question-pick", "runs-allowed")


class RunsBrowserHalf(BrowserHalf):
    """`BrowserHalf`, reporting too the room's question (its id: after each welcome, null when
    the welcome burst had none, and on each change) with a ``question`` event, and whether its
    members may run code (the welcome's ``runs_allowed``, then each change) with a ``runs`` event."""

    def __init__(self, user: User) -> None:
        super().__init__(user)
        self.questions: list[str | None] = []  # each question id reported
        self.runs: list[bool] = []

    def receive(self, gen: int, data: str) -> None:
        super().receive(gen, data)
        parsed = json.loads(data)
        messages = parsed if isinstance(parsed, list) else [parsed]
        welcomed = any(message["type"] == "welcome" for message in messages)
        question: list[str | None] = [None] if welcomed else []
        runs: list[bool] = []
        for message in messages:
            if message["type"] == "welcome" and message.get("runs_allowed") is not None:
                runs.append(message["runs_allowed"])
            elif message["type"] == "question":
                question = [message["question_id"]]
            elif message["type"] == "runs_allowed":
                runs.append(message["allowed"])
        if self.editor.is_deleted:
            return
        for question_id in question:
            self.questions.append(question_id)
            self.user.find(CollabEditor).trigger("question", {"gen": gen, "question_id": question_id})
        for allowed in runs:
            self.runs.append(allowed)
            self.user.find(CollabEditor).trigger("runs", {"gen": gen, "allowed": allowed})


async def connect(user: User, client_id: str) -> tuple[CollabEditor, RunsBrowserHalf]:
    half = RunsBrowserHalf(user)
    browser_hello(user, client_id)
    editor = user.find(CollabEditor).elements.pop()
    await until(lambda: editor.session is not None, "the page's join")
    return editor, half


def a_question(registry: RoomRegistry) -> Question:
    """A question of the server's catalog with tests."""
    question = next((question for question in registry.questions if question.cases), None)
    assert question is not None, "the shipped catalog has questions with tests"
    return question


def statement(user: User) -> str:
    element = user.find(marker="question-statement").elements.pop()
    return str(element.content)  # type: ignore[attr-defined]


async def everyone(users: Callable[[], User], registry: RoomRegistry) -> tuple[User, User, User, str]:
    """An interviewer (Ann), a candidate (Cy) and an observer (Olga), each connected; the room's id."""
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    cy = users()
    await join_as(cy, registry, room_id, Role.CANDIDATE, "Cy")
    await connect(cy, "cy-tab")
    olga = users()
    await join_as(olga, registry, room_id, Role.OBSERVER, "Olga")
    await connect(olga, "olga-tab")
    return ann, cy, olga, room_id


async def pick(user: User, question_id: str | None) -> None:
    user.find(marker="question-pick").click()
    await user.should_see("The room's question")
    user.find(marker=f"question-{question_id or 'none'}").click()


# The question panel


async def test_the_question_shows_to_everyone_and_its_hidden_tests_to_interviewers_only(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, olga, room_id = await everyone(users, registry)
    question = a_question(registry)
    for user in (cy, olga):
        await user.should_not_see(marker="side")  # nothing beside the editor without a question
    await pick(ann, question.id)
    await until(lambda: question.id == registry.rooms[room_id].access.question, "the room's question set")
    for user in (ann, cy, olga):
        await user.should_see(question.title, marker="question-title", retries=30)
        assert question.statement == statement(user)
    await ann.should_see(marker="question-tests")
    await ann.should_see(HIDDEN_FOR_INTERVIEWERS)
    for case in question.hidden():
        await ann.should_see(case["name"], marker="question-tests")
        await ann.should_see(f"expected: {shown_json(case['expected'])}")
    for user in (cy, olga):
        await user.should_not_see(marker="question-tests")
        await user.should_not_see(f"expected: {shown_json(question.cases[0].expected)}")


async def test_no_question_clears_the_panel_for_everyone(users: Callable[[], User], registry: RoomRegistry) -> None:
    ann, cy, _olga, room_id = await everyone(users, registry)
    question = a_question(registry)
    await pick(ann, question.id)
    await cy.should_see(question.title, marker="question-title", retries=30)
    await pick(ann, None)
    await until(lambda: registry.rooms[room_id].access.question is None, "the room's question cleared")
    await cy.should_not_see(marker="side", retries=30)
    await ann.should_see(marker="question-empty", retries=30)  # the interviewer's notes stay beside it
    await ann.should_see(marker="notes")


async def test_a_page_opened_in_a_room_with_a_question_shows_it_at_once(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    question = a_question(registry)
    await pick(ann, question.id)
    await until(lambda: question.id == registry.rooms[room_id].access.question, "the room's question set")
    cy = users()
    await join_as(cy, registry, room_id, Role.CANDIDATE, "Cy")  # not connected yet: read from the room
    await cy.should_see(question.title, marker="question-title")
    await cy.should_not_see(marker="question-tests")
    ben = users()
    await join_as(ben, registry, room_id, Role.INTERVIEWER, "Ben")
    await ben.should_see(question.title, marker="question-title")
    assert "question" == ben.find(ui.tabs).elements.pop().value  # the question first, the notes a tab away
    await ben.should_see(marker="question-tests")


async def test_an_open_room_offers_the_picker_and_shows_the_hidden_tests_to_everyone(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    bob = users()
    await bob.open("/room/open-q")
    await choose_name(bob, "Bob")
    await connect(bob, "bob-tab")
    await bob.should_see(marker="question-pick")
    await bob.should_not_see(marker="runs-allowed")  # no interviewers: no one turns running off
    question = a_question(registry)
    await pick(bob, question.id)
    await bob.should_see(question.title, marker="question-title", retries=30)
    await bob.should_see(marker="question-tests")
    await bob.should_see(HIDDEN_IN_OPEN_ROOM)
    assert not registry.rooms["open-q"].access.private


async def test_the_picker_and_the_switch_are_offered_only_to_interviewers(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, olga, _room_id = await everyone(users, registry)
    for marker in PICKER:
        await ann.should_see(marker=marker)
        for user in (cy, olga):
            await user.should_not_see(marker=marker)


async def test_picking_a_question_with_text_in_the_editor_warns_that_the_text_stays(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    await connect(ann, "ann-tab")
    question = a_question(registry)
    await pick(ann, question.id)  # an empty editor: the starter code fills it
    await until(lambda: question.id == registry.rooms[room_id].access.question, "the room's question set")
    await until(lambda: "" != registry.rooms[room_id].document.text, "the starter code in the editor")
    assert not ann.notify.contains(TEXT_STAYS)
    text = registry.rooms[room_id].document.text
    other = next(q for q in registry.questions if q.id != question.id)
    ann.find(marker="question-pick").click()
    await ann.should_see(TEXT_STAYS, marker="question-text-stays")
    ann.find(marker=f"question-{other.id}").click()
    await wait_for_notice(ann, TEXT_STAYS)
    await until(lambda: other.id == registry.rooms[room_id].access.question, "the room's question changed")
    assert text == registry.rooms[room_id].document.text


async def test_a_question_the_catalog_does_not_have_shows_as_no_question(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, _room_id = await interviewer(users)
    editor, _ = await connect(ann, "ann-tab")
    assert editor.transport is not None
    ann.find(CollabEditor).trigger("question", {"gen": editor.transport.gen, "question_id": "no-such-question"})
    await ann.should_see(marker="question-empty", retries=30)
    await ann.should_not_see(marker="question-title")


# Running code allowed


async def test_the_switch_turns_running_code_off_for_the_room_and_follows_it(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, cy, _olga, room_id = await everyone(users, registry)
    ben = users()
    await join_as(ben, registry, room_id, Role.INTERVIEWER, "Ben")
    _, ben_half = await connect(ben, "ben-tab")
    await ann.should_not_see(marker="runs-off")
    ann.find(marker="runs-allowed").click()
    await until(lambda: not registry.rooms[room_id].access.runs_allowed, "running code turned off")
    await until(lambda: [False] == ben_half.runs[-1:], "Ben's page told")
    for user in (ann, ben):
        await user.should_see(marker="runs-off", retries=30)
    assert not ben.find(marker="runs-allowed").elements.pop().value  # type: ignore[attr-defined]
    await cy.should_not_see(marker="runs-off")  # the candidate's run panel says so, not the header
    ben.find(marker="runs-allowed").click()
    await until(lambda: registry.rooms[room_id].access.runs_allowed, "running code turned on")
    await ann.should_not_see(marker="runs-off", retries=30)
    assert ann.find(marker="runs-allowed").elements.pop().value  # type: ignore[attr-defined]


async def test_the_switch_goes_back_when_the_page_is_not_connected(users: Callable[[], User]) -> None:
    ann, _ = await interviewer(users)  # no hello: the editor has no session
    ann.find(marker="runs-allowed").click()
    await wait_for_notice(ann, "Not connected: running code cannot be turned on or off right now.")
    assert ann.find(marker="runs-allowed").elements.pop().value  # type: ignore[attr-defined]
    await ann.should_not_see(marker="runs-off")


# Reports from the browser half


async def test_reports_of_another_shape_are_logged_and_ignored(
    users: Callable[[], User], registry: RoomRegistry
) -> None:
    ann, room_id = await interviewer(users)
    editor, _ = await connect(ann, "ann-tab")
    assert editor.transport is not None
    gen = editor.transport.gen
    question = a_question(registry)
    with capture_logs() as logs:
        for bad in ("Two-Sum", "two sum", "-x", "x" * 65, f"{question.id}\n", 7):
            ann.find(CollabEditor).trigger("question", {"gen": gen, "question_id": bad})
        ann.find(CollabEditor).trigger("runs", {"gen": gen, "allowed": "no"})
        ann.find(CollabEditor).trigger("runs", {"gen": gen})
        await until(lambda: 8 == len(logs), "every bad report logged")
    assert {"bad_question_event"} == {entry["event"] for entry in logs[:6]}
    assert {"bad_runs_event"} == {entry["event"] for entry in logs[6:]}
    await ann.should_not_see(marker="question-title")
    await ann.should_not_see(marker="runs-off")
    # A report of an earlier connection is not shown either.
    ann.find(CollabEditor).trigger("question", {"gen": gen - 1, "question_id": question.id})
    ann.find(CollabEditor).trigger("question", {"gen": gen, "question_id": None})  # the newest: shown
    await ann.should_see(marker="question-empty", retries=30)
    await ann.should_not_see(marker="question-title")
    assert None is registry.rooms[room_id].access.question


def test_a_question_report_is_read_as_the_browser_reports_it() -> None:
    assert (3, "two-sum") == parse_question({"gen": 3, "question_id": "two-sum"})
    assert (4, None) == parse_question({"gen": 4, "question_id": None})
    assert (5, None) == parse_question({"gen": 5})
    assert (6, "a" * 64) == parse_question({"gen": 6, "question_id": "a" * 64})
    assert (1, True) == parse_runs({"gen": 1, "allowed": True})
    assert (2, False) == parse_runs({"gen": 2, "allowed": False})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "question event must be an object, got list"),
        ({"question_id": "x"}, "gen must be an integer, got NoneType"),
        ({"gen": 1, "question_id": "Two"}, "question_id must be null or 1 to 64 of a-z, 0-9 and '-', got 3 characters"),
        ({"gen": 1, "question_id": "-two"}, "got 4 characters"),
        ({"gen": 1, "question_id": "a" * 65}, "got 65 characters"),
        ({"gen": 1, "question_id": "two\n"}, "got 4 characters"),
        ({"gen": 1, "question_id": ""}, "got 0 characters"),
        ({"gen": 1, "question_id": ["two"]}, "got list"),
    ],
)
def test_a_question_report_of_another_shape_is_refused_saying_why(args: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_question(args)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ("runs", "runs event must be an object, got str"),
        ({"gen": True, "allowed": True}, "gen must be an integer, got bool"),
        ({"gen": 1, "allowed": 1}, "allowed must be true or false, got int"),
        ({"gen": 1}, "allowed must be true or false, got NoneType"),
    ],
)
def test_a_runs_report_of_another_shape_is_refused_saying_why(args: Any, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_runs(args)
