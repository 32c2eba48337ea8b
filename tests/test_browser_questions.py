"""A question and its runs in an interview room, in a real headless Chromium: the interviewer
made the room on the start page and sent the links of the share dialog; the candidate and an
observer opened them. The interviewer picks two-sum, the candidate runs the code and the
question's tests in Python and JavaScript, and everyone watches the runs come in. The expected
values reach only the interviewer's page; the interviewer turns running code off and on, plays
the runs back in the history, and a phone shows a run's output too.

The tests share one room, in order, as an interview goes; each one brings the room to what it
needs first (the question picked, the language), so that it also runs on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, ViewportSize, expect

from rooms.questions import SHIPPED, Question, Questions
from tests import test_browser
from tests.browser_pages import RUN_MS, People, Person, close_share, share_links
from tests.conftest import LiveServer

# The browser and the module's server, as in the other browser tests.
playwright = test_browser.playwright
browser = test_browser.browser
live = test_browser.live

pytestmark = pytest.mark.slow


def shipped(question_id: str) -> Question:
    question = Questions.load(SHIPPED).get(question_id)
    assert question is not None, f"no question {question_id!r} in {SHIPPED}"
    return question


QUESTION = shipped("two-sum")
# "Within a second" for a control of the interviewer, with room for the browser to draw it.
WITHIN_A_SECOND = 1_500
CASES = len(QUESTION.cases)
PYTHON_SOLUTION = """def two_sum(nums, target):
    seen = {}
    for i, n in enumerate(nums):
        if target - n in seen:
            return [seen[target - n], i]
        seen[n] = i
"""
JAVASCRIPT_SOLUTION = """function twoSum(nums, target) {
  const seen = new Map();
  for (let i = 0; i < nums.length; i++) {
    if (seen.has(target - nums[i])) return [seen.get(target - nums[i]), i];
    seen.set(nums[i], i);
  }
}
"""
OBSERVING = "Observers watch the runs; they cannot start one."
RUNS_OFF = "Running code is turned off."


def value_pattern(value: object) -> re.Pattern[str]:
    """A JSON value as it may be written in a frame: with or without spaces after commas."""
    tokens = re.findall(r"-?\d+|[\[\],]", json.dumps(value))
    return re.compile(r"\s*".join(re.escape(token) for token in tokens))


def distinctive_expected() -> list[re.Pattern[str]]:
    """The expected values of the question's tests that nothing else everyone is sent holds:
    not the statement (its examples show some answers), not any case's arguments."""
    public = QUESTION.statement + json.dumps([case.args for case in QUESTION.cases])
    patterns = {json.dumps(case.expected): value_pattern(case.expected) for case in QUESTION.cases}
    return [pattern for pattern in patterns.values() if not pattern.search(public)]


@dataclass
class Interview:
    """The three people of the module's room, and the links the interviewer shared."""

    ann: Person  # the interviewer
    bob: Person  # the candidate
    cara: Person  # the observer
    links: dict[str, str]

    @property
    def everyone(self) -> tuple[Person, Person, Person]:
        return self.ann, self.bob, self.cara

    def question_picked(self) -> None:
        """The interviewer picks two-sum, unless the room has it already."""
        if self.ann.page.evaluate("window.collabRuns.state.questionId") != QUESTION.id:
            self.ann.pick_question(QUESTION.title)
        for who in self.everyone:
            who.page.wait_for_function("(id) => window.collabRuns.state.questionId === id", arg=QUESTION.id)


@pytest.fixture(scope="module")
def people(browser: Browser, live: LiveServer) -> Iterator[People]:
    crowd = People(browser, live)
    yield crowd
    crowd.close()


@pytest.fixture(scope="module")
def interview(people: People) -> Interview:
    ann = people.create_room("Ann")
    links = share_links(ann)
    close_share(ann)
    bob = people.join(links["candidate"], "Bob")
    cara = people.join(links["observer"], "Cara")
    for who in (ann, bob, cara):
        log_runs(who)
        assert who.uses_a_websocket()  # so that `received` is everything the page was sent
    return Interview(ann, bob, cara, links)


def log_runs(who: Person) -> None:
    """Keep, in the page, every run message its editor hands the run panel."""
    who.page.evaluate(
        "() => { window.runLog = [];"
        " window.addEventListener('collab-run', (event) => window.runLog.push(event.detail)); }"
    )


def choose_language(who: Person, label: str) -> None:
    """The room's language, from the header's select of ``who``; every page's run panel follows."""
    value = label.lower()
    if who.page.evaluate("window.collabRuns.state.language") == value:
        return
    who.page.locator(".collab-language").click()
    who.page.get_by_role("option", name=label, exact=True).click()
    who.page.wait_for_function("(language) => window.collabRuns.state.language === language", arg=value)


def version_of(who: Person) -> int:
    who.wait_settled()
    return int(who.page.evaluate("window.collabEditor.client.version"))


def logged(who: Person, run_id: str) -> list[str]:
    """The kinds of the run messages ``who``'s page got about the run, in order."""
    return list(who.page.evaluate("(id) => window.runLog.filter((m) => m.run_id === id).map((m) => m.type)", run_id))


def test_a_question_picked_fills_the_empty_editor_and_the_candidates_run_shows_on_every_page(
    interview: Interview,
) -> None:
    ann, bob, cara = interview.everyone
    starter = QUESTION.starters["python"]
    for who in interview.everyone:
        assert "" == who.text()
        expect(who.page.locator(".collab-run-tests")).to_have_count(0)  # no question: no tests
    ann.pick_question(QUESTION.title)
    for who in interview.everyone:
        who.wait_text("t === arg", starter, timeout=10)
        expect(who.page.locator(".collab-question-title")).to_have_text(QUESTION.title)
        expect(who.page.locator(".collab-question-statement")).to_contain_text("add up to")
        expect(who.page.locator(".collab-question-statement")).to_be_visible()
    expect(ann.page.locator(".collab-question-tests")).to_be_visible()
    expect(ann.page.locator(".collab-question-tests")).to_contain_text("Hidden tests")
    for who in (bob, cara):
        expect(who.page.locator(".collab-question-tests")).to_have_count(0)
        expect(who.page.get_by_text("Hidden tests")).to_have_count(0)

    version = version_of(bob)
    run_id = bob.press_run()
    expect(bob.run_ended(run_id).locator(".collab-run-who")).to_have_text(f"You ran version {version} (Python)")
    for who in (ann, cara):
        run = who.run_ended(run_id)
        expect(run.locator(".collab-run-who")).to_have_text(f"Bob ran version {version} (Python)")
        expect(run.locator(".collab-run-status")).to_have_text("finished")
        # Shown as it went: started (drawn as running), then ended.
        assert ["run_started", "run_ended"] == logged(who, run_id)
    assert [] == ann.errors + bob.errors + cara.errors


def test_the_tests_fail_then_pass_on_every_page_and_only_the_interviewer_is_sent_the_answers(
    interview: Interview,
) -> None:
    ann, bob, cara = interview.everyone
    interview.question_picked()
    choose_language(bob, "Python")
    bob.set_code(QUESTION.starters["python"])
    failing = bob.press_run(".collab-run-tests")
    for who in interview.everyone:
        run = who.run_ended(failing)
        expect(run.locator(".collab-run-score")).to_have_text(f"0 / {CASES} tests passed")
        expect(run.locator(".collab-run-case[data-passed=false]")).to_have_count(CASES)

    bob.set_code(PYTHON_SOLUTION)
    passing = bob.press_run(".collab-run-tests")
    for who in interview.everyone:
        run = who.run_ended(passing)
        expect(run.locator(".collab-run-score")).to_have_text(f"{CASES} / {CASES} tests passed")
        expect(run.locator(".collab-run-case[data-passed=true]")).to_have_count(CASES)
    last = QUESTION.cases[-1]
    row = ann.run_ended(passing).locator(".collab-run-case", has_text=last.name)
    shown = [json.dumps(value, separators=(",", ":")) for value in (last.args, last.expected, last.expected)]
    expect(row.locator("td")).to_have_text([last.name, "pass", *shown])
    for who in (bob, cara):
        results = who.run_ended(passing).locator(".collab-run-results")
        expect(results.locator("th")).to_have_text(["Case", "Result"])

    answers = distinctive_expected()
    assert len(answers) >= 3, answers
    for pattern in answers:  # the check can fail: the interviewer's page was sent every one
        assert pattern.search(ann.received_text()), f"the interviewer was not sent {pattern.pattern}"
    for who in (bob, cara):
        for pattern in answers:
            assert not pattern.search(who.received_text()), f"{who.name}'s page was sent {pattern.pattern}"
            assert not pattern.search(who.page.content()), f"{who.name}'s page shows {pattern.pattern}"


def test_the_tests_pass_in_javascript_too(interview: Interview) -> None:
    ann, bob, _ = interview.everyone
    interview.question_picked()
    choose_language(bob, "JavaScript")
    for who in interview.everyone:
        who.page.wait_for_function("window.collabRuns.state.language === 'javascript'")
    bob.set_code(JAVASCRIPT_SOLUTION)
    version = version_of(bob)
    run_id = bob.press_run(".collab-run-tests")
    for who in interview.everyone:
        run = who.run_ended(run_id)
        expect(run.locator(".collab-run-score")).to_have_text(f"{CASES} / {CASES} tests passed")
        author = "You" if who is bob else "Bob"
        expect(run.locator(".collab-run-who")).to_have_text(f"{author} ran the tests on version {version} (JavaScript)")
    expect(ann.run_ended(run_id).locator(".collab-run-results th")).to_have_text(
        ["Case", "Result", "Arguments", "Expected", "Actual"]
    )


def test_the_observer_never_runs_and_the_interviewer_turns_the_candidates_runs_off_and_on(
    interview: Interview,
) -> None:
    ann, bob, cara = interview.everyone
    for who in (ann, bob):
        expect(who.page.locator(".collab-run-button")).to_be_enabled(timeout=10_000)
    expect(cara.page.locator(".collab-run-button")).to_be_disabled()
    expect(cara.page.locator(".collab-run-reason")).to_have_text(OBSERVING)
    expect(cara.page.locator(".collab-runs-allowed")).to_have_count(0)
    expect(bob.page.locator(".collab-runs-allowed")).to_have_count(0)

    switch = ann.page.locator(".collab-runs-allowed")
    expect(switch).to_have_attribute("aria-checked", "true")
    switch.click()
    expect(bob.page.locator(".collab-run-button")).to_be_disabled(timeout=WITHIN_A_SECOND)
    expect(bob.page.locator(".collab-run-reason")).to_have_text(RUNS_OFF, timeout=WITHIN_A_SECOND)
    expect(ann.page.locator(".collab-runs-off")).to_be_visible()
    run_id = ann.press_run()  # the interviewer still runs
    for who in interview.everyone:
        who.run_ended(run_id)

    switch.click()
    expect(bob.page.locator(".collab-run-button")).to_be_enabled(timeout=WITHIN_A_SECOND)
    expect(bob.page.locator(".collab-run-reason")).to_have_count(0, timeout=WITHIN_A_SECOND)
    expect(ann.page.locator(".collab-runs-off")).to_be_hidden()
    expect(cara.page.locator(".collab-run-button")).to_be_disabled()


def test_the_history_marks_the_runs_and_a_run_chosen_shows_its_version_and_output(interview: Interview) -> None:
    ann, bob, _ = interview.everyone
    choose_language(bob, "Python")
    program = "print('history', 6 * 7)\n"
    bob.set_code(program)
    version = version_of(bob)
    run_id = bob.press_run()
    bob.run_ended(run_id)
    ann.run_ended(run_id)
    bob.type_at_end("# later")  # the run's version is no longer the newest
    head = version_of(bob)
    ann.wait_text("t === arg", bob.text())

    # Every run the interviewer's page saw is in the history: one mark per version, counting its runs.
    who_texts = ann.runs().locator(".collab-run-who").all_inner_texts()
    versions = [int(re.findall(r"version (\d+)", text)[0]) for text in who_texts]
    ann.page.locator(".collab-history-open").click()
    history = ann.page.locator(".collab-history")
    listed = history.locator(".collab-history-run")
    expect(listed).to_have_count(len(versions), timeout=10_000)
    marks = history.locator(".q-slider .collab-history-run-mark")
    expect(marks).to_have_count(len(set(versions)))
    counts = [int(text.strip("▲") or 1) for text in marks.all_inner_texts()]
    assert len(versions) == sum(counts)
    expect(history.get_by_text(f"version {head} of {head}", exact=True)).to_be_visible()

    listed.filter(has_text=f"version {version} · Python · code").first.click()
    expect(history.get_by_text(f"version {version} of {head}", exact=True)).to_be_visible()
    expect(history.get_by_text(f"Bob ran version {version}", exact=True)).to_be_visible()
    expect(history.get_by_text("history 42", exact=True)).to_be_visible()
    ann.page.wait_for_function(f"(text) => {test_browser.HISTORY_TEXT} === text", arg=program, timeout=10_000)
    history.locator("button:has(i:text('close'))").first.click()
    expect(history).to_have_count(0)


def test_on_a_phone_the_run_panel_is_reachable_and_shows_the_output(interview: Interview, people: People) -> None:
    phone: ViewportSize = {"width": 390, "height": 844}
    ann, bob, _ = interview.everyone
    choose_language(bob, "Python")
    dan = people.join(interview.links["candidate"], "Dan", phone, has_touch=True, is_mobile=True)
    dan.set_code("print('on the go', 2 + 3)\n")
    button = dan.page.locator(".collab-run-button")
    expect(button).to_be_enabled(timeout=10_000)
    button.scroll_into_view_if_needed()
    expect(button).to_be_in_viewport()
    button.tap()
    output = dan.page.locator(".collab-run:last-child .collab-run-text")
    expect(output).to_have_text("on the go 5\n", timeout=RUN_MS)
    output.scroll_into_view_if_needed()
    expect(output).to_be_in_viewport()
    box = output.bounding_box()
    assert box is not None and box["width"] > 0.5 * phone["width"]
    ann.page.locator(".collab-run:last-child .collab-run-text", has_text="on the go 5").wait_for()
    assert [] == dan.errors


def test_the_run_panel_spans_the_width_of_the_editor_above_it(interview: Interview, people: People) -> None:
    # A page that has shown no run yet: the panel holds only its buttons.
    eve = people.join(interview.links["candidate"], "Eve")
    expect(eve.page.locator(".collab-run-button")).to_be_enabled(timeout=10_000)
    editor, panel = (eve.page.locator(css).bounding_box() for css in (".cm-editor", ".collab-runs"))
    assert editor is not None and panel is not None
    assert panel["width"] >= 0.95 * editor["width"], (
        f"the run panel is {panel['width']:.0f} px wide under an editor of {editor['width']:.0f} px:"
        " .collab-runs is only as wide as what it shows, not the splitter's pane"
    )


def test_the_statements_headings_and_code_fit_the_side_panel(interview: Interview) -> None:
    interview.question_picked()
    statement = interview.bob.page.locator(".collab-question-statement")
    expect(statement.locator("h2").first).to_be_visible()
    sizes = statement.evaluate(
        """(element) => {
            const size = (css) => parseFloat(getComputedStyle(element.querySelector(css)).fontSize);
            const pre = element.querySelector("pre");
            return {heading: size("h2"), text: size("p"), overflow: getComputedStyle(pre).overflowX,
                    needed: pre.scrollWidth, shown: pre.clientWidth};
        }"""
    )
    problems = []
    if sizes["heading"] > 1.5 * sizes["text"]:
        problems.append(
            f"the statement's section titles (## Examples) are {sizes['heading']} px over {sizes['text']} px"
            " text: drawn like a page's title"
        )
    if sizes["needed"] > sizes["shown"] and sizes["overflow"] not in ("auto", "scroll"):
        problems.append(
            f"the statement's code block needs {sizes['needed']} px in {sizes['shown']} px and does not"
            " scroll: its end is cut off"
        )
    assert not problems, "; ".join(problems)
