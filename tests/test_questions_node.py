"""The questions and the case harnesses, run as the page runs them: Python in Pyodide through
ui/runner/harness.py, JavaScript through ui/runner/harness.js, both under node by
``tests/node/run_cases.mjs``, judged by `rooms.questions.judge`.

The questions are the shipped ones, and those of ``QUESTIONS_DIR`` when it is set: an operator
checks a folder of questions with ``QUESTIONS_DIR=/srv/questions pytest tests/test_questions_node.py``
(every question loads; each reference solution passes every case, each starter fails one).

Every request of this module goes to one node process (Pyodide loads once, ~3 s): the
module-scoped ``answers`` fixture sends them all and each test reads its own answer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rooms.questions import SHIPPED, Question, Questions, judge
from tests.test_changes_differential import run_node

ROOT = Path(__file__).parent.parent
RUNNER = Path(__file__).parent / "node" / "run_cases.mjs"
PYODIDE = ROOT / "vendor" / "pyodide" / "node_modules" / "pyodide" / "pyodide.mjs"
EXTENSIONS = {"python": "py", "javascript": "js"}

Answers = dict[tuple[str, ...], dict[str, Any]]  # (question or "harness", language, what) -> answer

LANGUAGES = list(EXTENSIONS)
FOLDERS = [SHIPPED, *([Path(os.environ["QUESTIONS_DIR"])] if os.environ.get("QUESTIONS_DIR") else [])]


def _sources() -> dict[str, tuple[Question, Path]]:
    """Each question by id, with the folder it was read from (a later folder's wins, as in the server)."""
    sources = {}
    for folder in FOLDERS:
        with capture_logs():  # test_every_question_loads reports them
            sources.update({question.id: (question, folder / question.id) for question in Questions.load(folder)})
    return sources


SOURCES = _sources()
CHECKED = [
    (question_id, language)
    for question_id, (question, _) in SOURCES.items()
    for language in LANGUAGES
    if question.has_tests(language)
]

# The harnesses' own behaviour, the same in both languages: (name, language, code, function, args).
HARNESS_CASES: list[tuple[str, str, str, str, list[list[Any]]]] = [
    ("tuple", "python", "def f(x):\n    return (x, (x,))\n", "f", [[1]]),
    ("set", "python", "def f():\n    return {3, 1, 2}\n", "f", [[]]),
    ("mixed-set", "python", "def f():\n    return {1, 'a'}\n", "f", [[]]),
    ("object", "python", "def f():\n    return object()\n", "f", [[]]),
    ("nan", "python", "def f():\n    return float('nan')\n", "f", [[]]),
    ("int-key", "python", "def f():\n    return {1: 2}\n", "f", [[]]),
    ("raises", "python", "def f(x):\n    return 1 // x\n", "f", [[1], [0], [2]]),
    ("exits", "python", "import sys\ndef f():\n    sys.exit(3)\n", "f", [[]]),
    ("missing", "python", "def g():\n    return 1\n", "f", [[], []]),
    ("mutates", "python", "def f(items):\n    items.append(0)\n    return items\n", "f", [[[1]], [[1]]]),
    ("prints", "python", "print('top')\ndef f(x):\n    print('case', x)\n    return x\n", "f", [[1], [2]]),
    ("long-error", "python", "def f():\n    raise ValueError('x' * 1000)\n", "f", [[]]),
    ("big-result", "python", "def f():\n    return 'x' * 20000\n", "f", [[]]),
    ("undefined", "javascript", "function f() {}\n", "f", [[]]),
    ("nan", "javascript", "function f() { return NaN; }\n", "f", [[]]),
    ("set", "javascript", "function f() { return new Set([1]); }\n", "f", [[]]),
    ("function", "javascript", "function f() { return { g() {} }; }\n", "f", [[]]),
    (
        "raises",
        "javascript",
        "function f(x) { if (x === 0) throw new RangeError('zero'); return x; }\n",
        "f",
        [[1], [0]],
    ),
    ("throws-string", "javascript", "function f() { throw 'boom'; }\n", "f", [[]]),
    ("missing", "javascript", "function g() { return 1; }\n", "f", [[], []]),
    ("mutates", "javascript", "function f(items) { items.push(0); return items; }\n", "f", [[[1]], [[1]]]),
    (
        "prints",
        "javascript",
        "console.log('top');\nfunction f(x) { console.log('case', x); return x; }\n",
        "f",
        [[1], [2]],
    ),
    ("big-result", "javascript", "function f() { return 'x'.repeat(20000); }\n", "f", [[]]),
]


def _question(question_id: str) -> Question:
    return SOURCES[question_id][0]


def _code(question_id: str, language: str, kind: str) -> str:
    path = SOURCES[question_id][1] / f"{kind}.{EXTENSIONS[language]}"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _request(language: str, code: str, function: str, args: list[list[Any]]) -> dict[str, Any]:
    cases = [{"name": f"case {index}", "args": case_args} for index, case_args in enumerate(args)]
    return {"language": language, "code": code, "function": function, "cases": cases}


def _requests() -> Answers:
    requests = {}
    for question_id, language in CHECKED:
        question = _question(question_id)
        for kind in ("solution", "starter"):
            args = [list(case.args) for case in question.cases]
            code = _code(question_id, language, kind)
            requests[question_id, language, kind] = _request(language, code, question.functions[language], args)
    for name, language, code, function, args in HARNESS_CASES:
        requests["harness", language, name] = _request(language, code, function, args)
    return requests


@pytest.fixture(scope="module")
def answers() -> Answers:
    """Every request of this module, answered by one node process."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the question harness tests run Pyodide and JavaScript under node")
    if not PYODIDE.exists():
        pytest.skip(f"Pyodide is not installed in {PYODIDE.parent.parent.parent} (run `make install`)")
    requests = _requests()
    results = run_node(node, RUNNER, list(requests.values()), "case runner")
    return dict(zip(requests, results, strict=True))


def _results(answers: Answers, *key: str) -> list[dict[str, Any]]:
    answer = answers[key]
    assert "failed" not in answer, f"{key} did not run: {answer['failed']}"
    results: list[dict[str, Any]] = answer["results"]
    return results


def test_every_question_loads() -> None:
    with capture_logs() as logs:
        for folder in FOLDERS:
            Questions.load(folder)

    assert [] == logs


@pytest.mark.parametrize(("question_id", "language"), CHECKED)
def test_reference_solution_passes_every_case(answers: Answers, question_id: str, language: str) -> None:
    question = _question(question_id)
    assert _code(question_id, language, "solution"), f"{question_id} has no solution.{EXTENSIONS[language]} to check"
    judged = judge(question, _results(answers, question_id, language, "solution"))

    assert [] == [(result.name, result.error, result.actual) for result in judged if not result.passed]


@pytest.mark.parametrize(("question_id", "language"), CHECKED)
def test_starter_fails_some_case(answers: Answers, question_id: str, language: str) -> None:
    question = _question(question_id)
    judged = judge(question, _results(answers, question_id, language, "starter"))

    assert not all(result.passed for result in judged)


def test_every_shipped_question_has_tests_in_both_languages() -> None:
    shipped = Questions.load(SHIPPED)
    assert 5 <= len(shipped)
    for question in shipped:
        assert set(LANGUAGES) == set(question.starters) == set(question.functions)
        assert 8 <= len(question.cases) <= 15


@pytest.mark.parametrize("language", LANGUAGES)
def test_harness_reports_a_missing_function_for_every_case(answers: Answers, language: str) -> None:
    error = "NameError" if language == "python" else "ReferenceError"

    assert [{"error": f"{error}: no function named f"}] * 2 == _results(answers, "harness", language, "missing")


@pytest.mark.parametrize("language", LANGUAGES)
def test_harness_gives_each_case_fresh_arguments(answers: Answers, language: str) -> None:
    assert [{"actual": [1, 0]}, {"actual": [1, 0]}] == _results(answers, "harness", language, "mutates")


@pytest.mark.parametrize("language", LANGUAGES)
def test_harness_leaves_printed_output_out_of_the_results(answers: Answers, language: str) -> None:
    assert [{"actual": 1}, {"actual": 2}] == _results(answers, "harness", language, "prints")
    assert "top\ncase 1\ncase 2\n" == answers["harness", language, "prints"]["output"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_harness_reports_a_result_too_large(answers: Answers, language: str) -> None:
    [result] = _results(answers, "harness", language, "big-result")

    assert "result is too large: 20002 characters of JSON (at most 10000)" in result["error"]


def test_python_harness_converts_tuples_and_sets(answers: Answers) -> None:
    assert [{"actual": [1, [1]]}] == _results(answers, "harness", "python", "tuple")
    assert [{"actual": [1, 2, 3]}] == _results(answers, "harness", "python", "set")


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("mixed-set", "TypeError: result is not JSON: set of values that do not sort"),
        ("object", "TypeError: result is not JSON: object"),
        ("nan", "TypeError: result is not JSON: nan"),
        ("int-key", "TypeError: result is not JSON: dict with a int key"),
    ],
)
def test_python_harness_refuses_values_json_cannot_carry(answers: Answers, name: str, error: str) -> None:
    assert [{"error": error}] == _results(answers, "harness", "python", name)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("undefined", "TypeError: result is not JSON: undefined"),
        ("nan", "TypeError: result is not JSON: NaN"),
        ("set", "TypeError: result is not JSON: Set"),
        ("function", "TypeError: result is not JSON: function"),
    ],
)
def test_javascript_harness_refuses_values_json_cannot_carry(answers: Answers, name: str, error: str) -> None:
    assert [{"error": error}] == _results(answers, "harness", "javascript", name)


def test_python_harness_reports_each_exception_by_case(answers: Answers) -> None:
    first, second, third = _results(answers, "harness", "python", "raises")
    assert ({"actual": 1}, {"actual": 0}) == (first, third)
    assert second["error"].startswith("ZeroDivisionError: ")  # the message varies between Python versions
    assert [{"error": "SystemExit: 3"}] == _results(answers, "harness", "python", "exits")
    [long_error] = _results(answers, "harness", "python", "long-error")
    assert "ValueError: " + "x" * 488 == long_error["error"]


def test_javascript_harness_reports_each_exception_by_case(answers: Answers) -> None:
    assert [{"actual": 1}, {"error": "RangeError: zero"}] == _results(answers, "harness", "javascript", "raises")
    assert [{"error": "Uncaught string: boom"}] == _results(answers, "harness", "javascript", "throws-string")
