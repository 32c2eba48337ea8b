"""The room's question beside the editor, and the dialog that picks it.

The page learns only the question's id from its connection (the browser half's ``question``
report); the title, the statement and the test cases shown are the server's own, read from its
catalog (`rooms.questions.Questions`) by that id, so a page never draws a question text the
browser made up. The statement is Markdown from the catalog's files, rendered by
``ui.markdown`` (sanitised in the browser as every Markdown is).

The hidden tests (each case's name, arguments and expected value) are shown to those who may
see the answers: interviewers, and everyone in an open room, where there are no roles.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from nicegui import ui

from rooms.access import Act, Role, allowed
from rooms.questions import Question, Questions

# One case's arguments or expected value, as shown: JSON, cut past this many characters.
MAX_VALUE_CHARS = 300
NO_QUESTION = "No question"
TEXT_STAYS = "The editor's text stays as it is: a question's starter code only fills an empty editor."
HIDDEN_FOR_INTERVIEWERS = "Only interviewers see these."
HIDDEN_IN_OPEN_ROOM = "Everyone in this room sees these: it has no roles."


def shown_json(value: object) -> str:
    """A JSON value as one line of text, cut at `MAX_VALUE_CHARS` characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else f"{text[: MAX_VALUE_CHARS - 1]}…"


def sees_hidden_tests(role: Role | None) -> bool:
    """Whether the page shows a question's cases with their expected values: the room sends
    them to the same members (`Act.ANSWERS`)."""
    return allowed(role, Act.ANSWERS)


class QuestionPanel:
    """The title and statement of the room's question, and for ``hidden_tests`` its cases in a
    collapsible list. `show` draws the question of an id (None: no question)."""

    def __init__(
        self,
        questions: Questions,
        *,
        hidden_tests: bool,
        role: Role | None,
        pick: Callable[[], object] | None = None,
    ) -> None:
        """``pick``: how the user picks a question, offered while there is none."""
        self.questions = questions
        self.question: Question | None = None
        with ui.column().classes("collab-question gap-2 p-2 w-full").mark("question-panel") as self.panel:
            with ui.column().classes("gap-2") as self.empty:
                ui.label("No question is set for this room.").classes("text-sm text-gray-500")
                if pick is not None:
                    ui.button("Pick a question", icon="quiz", on_click=pick).props("outline no-caps dense")
            self.empty.mark("question-empty")
            self.title = ui.label().classes("text-lg font-medium collab-question-title").mark("question-title")
            self.statement = ui.markdown().classes("w-full collab-question-statement").mark("question-statement")
            self.tests: ui.expansion | None = None
            self.cases: ui.column | None = None
            if hidden_tests:
                self.tests = ui.expansion("Hidden tests", icon="fact_check").classes("w-full collab-question-tests")
                with self.tests.props("dense").mark("question-tests"):
                    caption = HIDDEN_IN_OPEN_ROOM if role is None else HIDDEN_FOR_INTERVIEWERS
                    ui.label(caption).classes("text-xs text-gray-500")
                    self.cases = ui.column().classes("w-full gap-2")
        self.show(None)

    def show(self, question_id: str | None) -> None:
        """Draw the catalog's question of this id; an id the catalog does not have (a question an
        operator removed since it was picked) is shown as no question."""
        question = self.questions.get(question_id) if question_id is not None else None
        if question is not None and question is self.question:
            return
        self.question = question
        self.empty.set_visibility(question is None)
        self.title.set_visibility(question is not None)
        self.statement.set_visibility(question is not None)
        self.title.set_text(question.title if question is not None else "")
        self.statement.set_content(question.statement if question is not None else "")
        if self.tests is None or self.cases is None:
            return
        self.tests.set_visibility(question is not None and bool(question.cases))
        self.cases.clear()
        if question is None:
            return
        with self.cases:
            for case in question.hidden():
                with ui.column().classes("w-full gap-0 collab-question-case"):
                    ui.label(case["name"]).classes("text-sm font-medium")
                    ui.label(f"args: {shown_json(case['args'])}").classes("font-mono text-xs break-all")
                    ui.label(f"expected: {shown_json(case['expected'])}").classes("font-mono text-xs break-all")


def pick_question(
    questions: Questions, current: str | None, *, has_text: bool, choose: Callable[[str | None], object]
) -> ui.dialog:
    """A dialog listing the catalog's questions (and "No question"); ``choose`` is called with
    the id picked (None: no question). ``has_text``: the editor is not empty, so picking a
    question leaves its text as it is, which the dialog says."""
    with ui.dialog() as dialog, ui.card().classes("w-[32rem] max-w-full gap-2 collab-question-picker"):
        dialog.on_value_change(lambda event: None if event.value else dialog.delete())
        ui.label("The room's question").classes("text-lg font-medium")
        if has_text:
            ui.label(TEXT_STAYS).classes("text-sm text-amber-800").mark("question-text-stays")

        def picked(question_id: str | None) -> None:
            dialog.close()
            choose(question_id)

        with ui.list().props("dense separator").classes("w-full"):
            for question_id, title in [(None, NO_QUESTION), *((q.id, q.title) for q in questions)]:
                with ui.item(on_click=lambda q=question_id: picked(q)).mark(f"question-{question_id or 'none'}"):
                    with ui.item_section().props("avatar"):
                        ui.icon("check" if question_id == current else "")
                    with ui.item_section():
                        ui.item_label(title)
        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat")
    dialog.open()
    return dialog
