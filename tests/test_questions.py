"""rooms.questions: loading question folders (every rule, and that a bad question is skipped and
logged, never fatal), what each audience gets, and judging a worker's results."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rooms.questions import (
    MAX_CASES,
    MAX_QUESTIONS_PER_FOLDER,
    SHIPPED,
    Case,
    CaseResult,
    Question,
    Questions,
    judge,
    matches,
)

HARNESS = Path(__file__).parent.parent / "ui" / "runner" / "harness.py"
SECRET = "reference-solution-marker"
TESTS: dict[str, Any] = {
    "function": {"python": "add", "javascript": "add"},
    "compare": "exact",
    "cases": [
        {"name": "small", "args": [1, 2], "expected": 3},
        {"name": "negative", "args": [-1, -2], "expected": -3},
    ],
}


def write_question(
    folder: Path,
    question_id: str = "add-two",
    *,
    markdown: str = "# Add Two\n\nAdd two numbers.\n",
    starters: dict[str, str] | None = None,
    tests: dict[str, Any] | str | None = None,
) -> Path:
    path = folder / question_id
    path.mkdir(parents=True)
    (path / "question.md").write_text(markdown, encoding="utf-8")
    if starters is None:
        starters = {"starter.py": "def add(a, b):\n    pass\n", "starter.js": "function add(a, b) {}\n"}
    for name, text in starters.items():
        (path / name).write_text(text, encoding="utf-8")
    (path / "solution.py").write_text(f"def add(a, b):\n    return a + b  # {SECRET}\n", encoding="utf-8")
    (path / "solution.js").write_text(f"function add(a, b) {{ return a + b; }} // {SECRET}\n", encoding="utf-8")
    if tests is not None:
        (path / "tests.json").write_text(tests if isinstance(tests, str) else json.dumps(tests), encoding="utf-8")
    return path


def load_logged(*folders: Path) -> tuple[Questions, list[dict[str, Any]]]:
    with capture_logs() as logs:
        questions = Questions.load(*folders)
    return questions, logs


def skip_reason(folder: Path) -> str:
    """The reason logged for the one question of ``folder``, which must have been skipped."""
    questions, logs = load_logged(folder)
    assert 0 == len(questions)
    [log] = logs
    assert ("question_skipped", "warning") == (log["event"], log["log_level"])
    reason: str = log["reason"]
    return reason


def make_question(compare: str = "exact", expected: list[Any] | None = None) -> Question:
    cases = tuple(Case(f"case {index}", (), value) for index, value in enumerate(expected or [1]))
    return Question("q", "Q", "", {"python": ""}, {"python": "f"}, compare, cases)


# Loading


def test_shipped_questions_load_ordered_by_title() -> None:
    questions, logs = load_logged(SHIPPED)

    assert [] == logs
    titles = [question.title for question in questions]
    assert sorted(titles, key=str.casefold) == titles
    assert {"two-sum", "valid-parentheses", "fizzbuzz", "merge-intervals", "longest-substring-without-repeating"} <= {
        question.id for question in questions
    }


def test_question_loads_every_file(tmp_path: Path) -> None:
    write_question(tmp_path, tests=TESTS)

    question = Questions.load(tmp_path).get("add-two")

    assert question is not None
    assert ("add-two", "Add Two", "Add two numbers.") == (question.id, question.title, question.statement)
    assert {"python": "def add(a, b):\n    pass\n", "javascript": "function add(a, b) {}\n"} == question.starters
    assert {"python": "add", "javascript": "add"} == question.functions
    assert (Case("small", (1, 2), 3), Case("negative", (-1, -2), -3)) == question.cases
    assert question.has_tests("python")


def test_question_without_tests_has_no_function_and_no_cases(tmp_path: Path) -> None:
    write_question(tmp_path, starters={"starter.py": "# design a cache\n"})

    question = Questions.load(tmp_path).get("add-two")

    assert question is not None
    assert ({"python": "# design a cache\n"}, {}, ()) == (question.starters, question.functions, question.cases)
    assert not question.has_tests("python")


def test_get_unknown_question_is_none(tmp_path: Path) -> None:
    write_question(tmp_path)
    questions = Questions.load(tmp_path)

    assert (None, False, True) == (questions.get("nope"), "nope" in questions, "add-two" in questions)


@pytest.mark.parametrize("question_id", ["Two-Sum", "two_sum", "-two", "two sum", "a" * 65, "été"])
def test_folder_whose_name_is_not_an_id_is_skipped(tmp_path: Path, question_id: str) -> None:
    write_question(tmp_path, question_id)

    assert "is not a question id" in skip_reason(tmp_path)


def test_longest_id_loads(tmp_path: Path) -> None:
    write_question(tmp_path, "a" * 64)

    assert 1 == len(Questions.load(tmp_path))


@pytest.mark.parametrize("name", ["question.md", "starter.py", "tests.json"])
def test_a_fifo_in_a_question_folder_is_skipped_without_blocking_the_load(tmp_path: Path, name: str) -> None:
    path = write_question(tmp_path)
    (path / name).unlink(missing_ok=True)
    os.mkfifo(path / name)  # no writer: a blocking open would wait for one forever
    reasons: list[str] = []
    # In a thread: a regression hangs in open(), and must fail here rather than hang the suite.
    loader = threading.Thread(target=lambda: reasons.append(skip_reason(tmp_path)), daemon=True)
    loader.start()
    loader.join(timeout=10)
    assert [f"{name} is not a regular file"] == reasons


def test_missing_question_md_is_skipped(tmp_path: Path) -> None:
    (write_question(tmp_path) / "question.md").unlink()

    assert "question.md is missing" == skip_reason(tmp_path)


def test_question_without_any_starter_is_skipped(tmp_path: Path) -> None:
    write_question(tmp_path, starters={})

    assert "no starter: needs at least one of starter.py, starter.js" == skip_reason(tmp_path)


@pytest.mark.parametrize("markdown", ["Add Two\n\ntext", "#Add Two\n", "# \nbody", "## Add Two\n", ""])
def test_question_md_must_start_with_a_title(tmp_path: Path, markdown: str) -> None:
    write_question(tmp_path, markdown=markdown)

    assert "title" in skip_reason(tmp_path).lower()


def test_statement_over_the_limit_is_skipped(tmp_path: Path) -> None:
    write_question(tmp_path, markdown="# T\n" + "x" * 19_996)  # 20,000 characters in all
    write_question(tmp_path, "too-long", markdown="# T\n" + "x" * 19_997)

    questions, logs = load_logged(tmp_path)

    assert ["add-two"] == [question.id for question in questions]
    assert ["question.md has more than 20000 characters"] == [log["reason"] for log in logs]


def test_statement_counts_characters_not_bytes(tmp_path: Path) -> None:
    write_question(tmp_path, markdown="# T\n" + "😀" * 19_996)

    assert 1 == len(Questions.load(tmp_path))


def test_starter_over_the_limit_is_skipped(tmp_path: Path) -> None:
    write_question(tmp_path, starters={"starter.js": "x" * 20_001})

    assert "starter.js has more than 20000 characters" == skip_reason(tmp_path)


def test_tests_json_over_the_limit_is_skipped(tmp_path: Path) -> None:
    write_question(tmp_path, tests=json.dumps(TESTS) + " " * 100_000)

    assert "tests.json has more than 100000 characters" == skip_reason(tmp_path)


def test_file_that_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    (write_question(tmp_path) / "starter.py").write_bytes(b"# caf\xe9\n")

    assert "starter.py is not UTF-8 (byte 5)" == skip_reason(tmp_path)


@pytest.mark.parametrize(
    ("tests", "reason"),
    [
        ("{", "tests.json is not valid JSON"),
        ("[" * 100_000, "tests.json is not valid JSON"),
        ('{"function": {"python": "f"}, "cases": [{"name": "a", "args": [], "expected": NaN}]}', "NaN"),
        ("[]", "tests.json must hold an object"),
        ({**TESTS, "comapre": "exact"}, "unknown keys ['comapre']"),
        ({**TESTS, "compare": "fuzzy"}, "compare must be one of exact, unordered, float, not 'fuzzy'"),
        ({**TESTS, "function": "add"}, '"function"'),
        ({**TESTS, "function": {}}, '"function"'),
        ({**TESTS, "function": {"ruby": "add"}}, "unknown language 'ruby'"),
        ({**TESTS, "function": {"python": "class"}}, "'class' is not a python function name"),
        ({**TESTS, "function": {"python": "two-sum"}}, "'two-sum' is not a python function name"),
        ({**TESTS, "function": {"javascript": "two sum"}}, "'two sum' is not a javascript function name"),
        ({**TESTS, "function": {"javascript": 3}}, "'3' is not a javascript function name"),
        ({**TESTS, "cases": []}, "1 to 50 cases, found 0"),
        ({**TESTS, "cases": {}}, "found no list of"),
        ({**TESTS, "cases": [{"name": "a", "args": [], "expected": 1}] * 2}, "the name 'a' is used twice"),
        ({**TESTS, "cases": [{"name": "a", "args": 1, "expected": 1}]}, "args must be a list"),
        ({**TESTS, "cases": [{"name": "", "args": [], "expected": 1}]}, "the name must be"),
        ({**TESTS, "cases": [{"name": "a", "args": []}]}, "case 0 must be"),
        ({**TESTS, "cases": [{"name": "a", "args": [], "expected": 1, "hint": "x"}]}, "case 0 must be"),
        ({**TESTS, "cases": ["a"]}, "case 0 must be"),
        ({**TESTS, "cases": [{"name": "a", "args": [], "expected": "x" * 10_000}]}, "more than 10000 characters"),
    ],
)
def test_bad_tests_json_is_skipped(tmp_path: Path, tests: dict[str, Any] | str, reason: str) -> None:
    write_question(tmp_path, tests=tests)

    assert reason in skip_reason(tmp_path)


def test_cases_up_to_the_limit_load(tmp_path: Path) -> None:
    cases = [{"name": str(index), "args": [index], "expected": index} for index in range(MAX_CASES + 1)]
    write_question(tmp_path, tests={**TESTS, "cases": cases[:MAX_CASES]})
    write_question(tmp_path, "too-many", tests={**TESTS, "cases": cases})

    questions, logs = load_logged(tmp_path)

    assert ["add-two"] == [question.id for question in questions]
    assert ['tests.json needs "cases": 1 to 50 cases, found 51'] == [log["reason"] for log in logs]


def test_one_bad_question_does_not_stop_the_others(tmp_path: Path) -> None:
    write_question(tmp_path, "good")
    write_question(tmp_path, "bad", tests="{")

    questions, logs = load_logged(tmp_path)

    assert ["good"] == [question.id for question in questions]
    assert [("bad", str(tmp_path))] == [(log["question_id"], log["folder"]) for log in logs]


def test_later_folder_replaces_a_question_with_the_same_id(tmp_path: Path) -> None:
    write_question(tmp_path / "shipped", markdown="# Shipped\n")
    write_question(tmp_path / "shipped", "other", markdown="# Other\n")
    write_question(tmp_path / "operator", markdown="# Operator's\n")

    questions = Questions.load(tmp_path / "shipped", tmp_path / "operator")

    assert ["Operator's", "Other"] == [question.title for question in questions]


def test_bad_question_in_a_later_folder_keeps_the_earlier_one(tmp_path: Path) -> None:
    write_question(tmp_path / "shipped", markdown="# Shipped\n")
    write_question(tmp_path / "operator", markdown="no title")

    questions, _ = load_logged(tmp_path / "shipped", tmp_path / "operator")

    assert ["Shipped"] == [question.title for question in questions]


def test_missing_folder_is_logged_and_empty(tmp_path: Path) -> None:
    questions, logs = load_logged(tmp_path / "nowhere")

    assert 0 == len(questions)
    assert [("questions_folder_missing", str(tmp_path / "nowhere"))] == [(log["event"], log["folder"]) for log in logs]


def test_files_and_hidden_folders_beside_questions_are_ignored(tmp_path: Path) -> None:
    write_question(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / ".git").mkdir()

    questions, logs = load_logged(tmp_path)

    assert (1, []) == (len(questions), logs)


def test_folder_with_too_many_questions_loads_the_first_ones(tmp_path: Path) -> None:
    for index in range(MAX_QUESTIONS_PER_FOLDER + 1):
        write_question(tmp_path, f"q{index:03d}")

    questions, logs = load_logged(tmp_path)

    assert MAX_QUESTIONS_PER_FOLDER == len(questions)
    assert questions.get("q200") is None
    assert [("questions_over_limit", ["q200"])] == [(log["event"], log["ignored"]) for log in logs]


# What each audience gets


def test_brief_and_hidden_never_carry_the_solutions(tmp_path: Path) -> None:
    write_question(tmp_path, tests=TESTS)
    question = Questions.load(tmp_path).get("add-two")
    assert question is not None

    for shown in (question.brief(), question.hidden(), question.inputs(), repr(question)):
        assert SECRET not in json.dumps(shown)


def test_brief_has_no_cases_and_inputs_have_no_expected_values(tmp_path: Path) -> None:
    write_question(tmp_path, tests=TESTS)
    question = Questions.load(tmp_path).get("add-two")
    assert question is not None

    assert {"question_id", "title", "statement", "starters"} == set(question.brief())
    assert [{"name": "small", "args": [1, 2]}, {"name": "negative", "args": [-1, -2]}] == question.inputs()
    assert {"name": "small", "args": [1, 2], "expected": 3} == question.hidden()[0]


def test_hidden_cases_are_copies(tmp_path: Path) -> None:
    write_question(tmp_path, tests={**TESTS, "cases": [{"name": "a", "args": [[1]], "expected": [2]}]})
    question = Questions.load(tmp_path).get("add-two")
    assert question is not None

    question.hidden()[0]["args"][0].append(9)
    question.inputs()[0]["args"][0].append(9)
    question.hidden()[0]["expected"].append(9)

    assert [{"name": "a", "args": [[1]], "expected": [2]}] == question.hidden()


# Judging


@pytest.mark.parametrize(
    ("expected", "actual", "passed"),
    [
        (3, 3, True),
        (1, 1.0, True),  # one JSON number: JavaScript has no other
        (1.5, 1.5, True),
        (True, 1, False),  # JSON's booleans are not numbers, whatever Python's True == 1 says
        (0, False, False),
        (None, None, True),
        (None, 0, False),
        ("a", "a", True),
        ("1", 1, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1, 2], [1, 2, 3], False),
        ({"a": 1, "b": [True]}, {"b": [True], "a": 1.0}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([[True]], [[1]], False),
        (0.3, 0.1 + 0.2, False),
    ],
)
def test_exact_compare(expected: Any, actual: Any, passed: bool) -> None:
    assert passed == matches("exact", expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual", "passed"),
    [
        ([0, 1], [1, 0], True),
        ([1, 1, 2], [1, 2, 1], True),
        ([1, 1, 2], [1, 2, 2], False),  # a multiset: counts matter
        ([1, 2], [1, 2, 2], False),
        ([[1, 2], [3]], [[3], [1, 2]], True),
        ([[1, 2]], [[2, 1]], False),  # only the top level is unordered
        ([1, True], [True, 1.0], True),
        ([1, True], [True, True], False),
        ([{"a": 1}, None], [None, {"a": 1.0}], True),
        ("ab", "ab", True),  # not lists: compared exactly
        ([1], 1, False),
        ([float("nan")], [float("nan")], False),
    ],
)
def test_unordered_compare(expected: Any, actual: Any, passed: bool) -> None:
    assert passed == matches("unordered", expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual", "passed"),
    [
        (0.3, 0.1 + 0.2, True),
        (1.0, 1.0000001, True),
        (1.0, 1.001, False),
        (0.0, 1e-7, True),  # absolute tolerance near zero
        (1e12, 1e12 + 100, True),  # relative tolerance for large numbers
        (1e12, 1e12 + 1e7, False),
        ([0.5, {"x": 2.0}], [0.5000001, {"x": 1.9999999}], True),
        ([0.5], [0.5, 0.5], False),
        (1, True, False),
        (float("inf"), float("inf"), True),
        (float("inf"), 1e308, False),
        (float("nan"), float("nan"), False),
        ("0.3", "0.30000001", False),
    ],
)
def test_float_compare(expected: Any, actual: Any, passed: bool) -> None:
    assert passed == matches("float", expected, actual)


def test_unknown_compare_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown compare mode 'fuzzy'"):
        matches("fuzzy", 1, 1)


def test_judge_gives_one_result_per_case_in_order() -> None:
    question = make_question("exact", [1, [2], "x"])

    judged = judge(question, [{"actual": 1}, {"actual": [3]}, {"error": "ValueError: bad"}])

    assert [
        CaseResult("case 0", True, None, 1),
        CaseResult("case 1", False, None, [3]),
        CaseResult("case 2", False, "ValueError: bad", None),
    ] == judged


def test_judge_uses_the_questions_compare_mode() -> None:
    assert judge(make_question("unordered", [[0, 1]]), [{"actual": [1, 0]}])[0].passed
    assert not judge(make_question("exact", [[0, 1]]), [{"actual": [1, 0]}])[0].passed


def test_judge_cuts_long_errors() -> None:
    [result] = judge(make_question(), [{"error": "E" * 600}])

    assert "E" * 500 == result.error


def test_judge_of_an_expected_null_needs_a_returned_null() -> None:
    [result] = judge(make_question("exact", [None]), [{"error": "TypeError: x"}])

    assert (False, None) == (result.passed, result.actual)


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([], "got 0 results for 1 cases"),
        ([{"actual": 1}, {"actual": 1}], "got 2 results for 1 cases"),
        ({"actual": 1}, "results must be a list, not dict"),
        (None, "results must be a list, not NoneType"),
        ([1], "result 0 must be"),
        ([{}], "result 0 must be"),
        ([{"actual": 1, "error": "x"}], "result 0 must be"),
        ([{"value": 1}], "result 0 must be"),
        ([{"error": 5}], "result 0: error must be a string, not int"),
        ([{"error": None}], "result 0: error must be a string, not NoneType"),
    ],
)
def test_judge_refuses_results_of_the_wrong_shape(results: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        judge(make_question(), results)


# The Python harness also runs under CPython: the node tests run it in Pyodide.


def run_harness(code: str, function: str, args: list[list[Any]]) -> list[dict[str, Any]]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(code, namespace)
    exec(HARNESS.read_text(encoding="utf-8"), namespace)
    cases = json.dumps([{"name": str(index), "args": case_args} for index, case_args in enumerate(args)])
    results: list[dict[str, Any]] = json.loads(namespace["run_cases"](namespace, function, cases))
    return results


def test_python_harness_defines_only_run_cases() -> None:
    namespace: dict[str, Any] = {"json": "mine", "copy": "mine"}
    exec(HARNESS.read_text(encoding="utf-8"), namespace)

    assert {"json", "copy", "run_cases", "__builtins__"} == set(namespace)
    assert ("mine", "mine") == (namespace["json"], namespace["copy"])


def test_python_harness_converts_results_and_catches_errors() -> None:
    code = "def f(x):\n    if x == 0:\n        raise KeyError('k')\n    return (x, {2, 1}, {'a': [x]})\n"

    assert [{"actual": [1, [1, 2], {"a": [1]}]}, {"error": "KeyError: 'k'"}] == run_harness(code, "f", [[1], [0]])


def test_python_harness_refuses_a_value_that_contains_itself() -> None:
    code = "def f():\n    a = []\n    a.append(a)\n    return a\n"

    assert [{"error": "TypeError: result is not JSON: nested too deeply"}] == run_harness(code, "f", [[]])


def test_python_harness_reports_a_missing_function() -> None:
    assert [{"error": "NameError: no function named two_sum"}] == run_harness("x = 1", "two_sum", [[]])


def test_python_harness_survives_an_exception_that_cannot_be_shown() -> None:
    code = (
        "class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\n"
        "class Key:\n    def __lt__(self, other):\n        raise ValueError('no order')\n"
        "def f(x):\n    if x:\n        raise Odd()\n    return {Key(), Key()}\n"
    )

    assert [{"error": "Odd"}, {"error": "ValueError: no order"}] == run_harness(code, "f", [[1], [0]])
