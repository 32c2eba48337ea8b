"""Interview questions: the catalog read from question folders, and the judge of a test run.

A question is a folder (docs/questions.md describes it)::

    <id>/question.md            "# Title", then the statement in Markdown
    <id>/starter.py, starter.js the code a room starts from, one per language it offers
    <id>/solution.py, .js       reference solutions: read by the tests only, never loaded here
    <id>/tests.json             {"function": {...}, "compare": ..., "cases": [...]} (optional)

`Questions.load` reads the shipped folder (`SHIPPED`) and the operator's (``QUESTIONS_DIR``);
a later folder's question replaces an earlier one with the same id. A question that breaks a
rule is skipped with a ``question_skipped`` log line saying why: an operator's typo must not
stop the server. Every file is read with a bound, so a huge file costs a bounded read.

Tests run in the browser of whoever presses "Run tests": the room sends that browser the inputs
(`Question.inputs`), the browser's worker sends back one ``{"actual": json}`` or
``{"error": str}`` per case, and `judge` compares them here with the expected values, which only
interviewers ever see (`Question.hidden`).

Equality is JSON's, not Python's: ``true`` is not ``1`` (Python's ``True == 1`` would say it
is), while ``1`` and ``1.0`` are the same number (JavaScript has only the one number type, and
JSON does not tell them apart).
"""

from __future__ import annotations

import copy
import json
import keyword
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import structlog

from rooms.run_protocol import MAX_CASE_ERROR_CHARS, MAX_RESULT_CHARS, RUN_LANGUAGES, json_chars
from rooms.run_protocol import QUESTION_ID as QUESTION_ID  # re-exported: a folder's name is an id

log = structlog.get_logger("collab.questions")

Json: TypeAlias = Any  # a value as json.loads returns it: None, bool, int, float, str, list, dict

SHIPPED = Path(__file__).parent.parent / "questions"

STARTER_FILES = {"python": "starter.py", "javascript": "starter.js"}
COMPARE_MODES = ("exact", "unordered", "float")

JS_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}")
MAX_STATEMENT_CHARS = 20_000
MAX_STARTER_CHARS = 20_000
MAX_TESTS_CHARS = 100_000
MAX_CASES = 50
MAX_QUESTIONS_PER_FOLDER = 200
MAX_TITLE_CHARS = 200
MAX_CASE_NAME_CHARS = 200
# "float" compare: numbers within this much of each other, absolutely or relatively.
FLOAT_TOLERANCE = 1e-6


class QuestionInvalid(ValueError):
    """A question folder breaks a rule; the message says which, with the values found."""


@dataclass(frozen=True)
class Case:
    """One test: the function's arguments and what it must return."""

    name: str
    args: tuple[Json, ...]
    expected: Json


@dataclass(frozen=True)
class Question:
    """One interview question, as loaded (the reference solutions are never part of it)."""

    id: str
    title: str
    statement: str  # Markdown, without the title line
    starters: dict[str, str]  # language -> starter code
    functions: dict[str, str]  # language -> name of the function the tests call; {} without tests
    compare: str  # one of COMPARE_MODES
    cases: tuple[Case, ...]

    def brief(self) -> dict[str, Any]:
        """What everyone in the room sees: no expected values."""
        return {
            "question_id": self.id,
            "title": self.title,
            "statement": self.statement,
            "starters": dict(self.starters),
        }

    def inputs(self) -> list[dict[str, Any]]:
        """What the browser running the tests gets: each case's name and arguments only."""
        return [{"name": case.name, "args": copy.deepcopy(list(case.args))} for case in self.cases]

    def hidden(self) -> list[dict[str, Any]]:
        """The cases with their expected values, for interviewers only."""
        return [
            {"name": case.name, "args": copy.deepcopy(list(case.args)), "expected": copy.deepcopy(case.expected)}
            for case in self.cases
        ]

    def has_tests(self, language: str) -> bool:
        """Whether "Run tests" can run in ``language``: a function name for it and some cases."""
        return language in self.functions and bool(self.cases)


@dataclass(frozen=True)
class CaseResult:
    """One case of a test run, judged."""

    name: str
    passed: bool
    error: str | None  # the worker's message (at most MAX_CASE_ERROR_CHARS), None when it returned
    actual: Json  # what the function returned; None when it raised


class Questions:
    """A catalog of questions, ordered by title."""

    def __init__(self, questions: Mapping[str, Question] | None = None) -> None:
        ordered = sorted((questions or {}).values(), key=lambda q: (q.title.casefold(), q.id))
        self._by_id = {question.id: question for question in ordered}

    @classmethod
    def load(cls, *folders: Path) -> Questions:
        """Every valid question of ``folders``; a later folder's question replaces an earlier one
        with the same id. A missing folder or a bad question is logged and skipped."""
        found: dict[str, Question] = {}
        for folder in folders:
            found.update(_load_folder(folder))
        return cls(found)

    def get(self, question_id: str) -> Question | None:
        return self._by_id.get(question_id)

    def __iter__(self) -> Iterator[Question]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, question_id: object) -> bool:
        return question_id in self._by_id


def judge(question: Question, results: list[dict[str, Any]]) -> list[CaseResult]:
    """Compare a worker's results with the question's cases, in order.

    Raises ValueError when ``results`` is not one ``{"actual": json}`` or ``{"error": str}``
    per case: the room answers that with ``invalid_message``."""
    if not isinstance(results, list):
        raise ValueError(f"results must be a list, not {type(results).__name__}")
    if len(results) != len(question.cases):
        raise ValueError(f"got {len(results)} results for {len(question.cases)} cases")
    judged = []
    for index, (case, result) in enumerate(zip(question.cases, results, strict=True)):
        if not isinstance(result, dict) or len(result) != 1:
            raise ValueError(f'result {index} must be {{"actual": value}} or {{"error": message}}')
        if "error" in result:
            error = result["error"]
            if not isinstance(error, str):
                raise ValueError(f"result {index}: error must be a string, not {type(error).__name__}")
            judged.append(CaseResult(case.name, False, error[:MAX_CASE_ERROR_CHARS], None))
        elif "actual" in result:
            actual = result["actual"]
            judged.append(CaseResult(case.name, matches(question.compare, case.expected, actual), None, actual))
        else:
            raise ValueError(f'result {index} must be {{"actual": value}} or {{"error": message}}')
    return judged


def matches(compare: str, expected: Json, actual: Json) -> bool:
    """Whether ``actual`` passes for ``expected`` under a compare mode (see COMPARE_MODES)."""
    if compare == "exact":
        return _json_equal(expected, actual, tolerance=0.0)
    if compare == "float":
        return _json_equal(expected, actual, tolerance=FLOAT_TOLERANCE)
    if compare == "unordered":
        if isinstance(expected, list) and isinstance(actual, list):
            return Counter(map(_canonical, expected)) == Counter(map(_canonical, actual))
        return _json_equal(expected, actual, tolerance=0.0)
    raise ValueError(f"unknown compare mode {compare!r}")


def _is_number(value: Json) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_equal(expected: Json, actual: Json, *, tolerance: float) -> bool:
    if _is_number(expected) and _is_number(actual):
        if expected == actual:
            return True
        if tolerance == 0.0 or not (math.isfinite(expected) and math.isfinite(actual)):
            return False
        difference = abs(expected - actual)
        return bool(difference <= tolerance or difference <= tolerance * max(abs(expected), abs(actual)))
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            _json_equal(e, a, tolerance=tolerance) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            _json_equal(value, actual[key], tolerance=tolerance) for key, value in expected.items()
        )
    if isinstance(expected, bool | str | None) and type(expected) is type(actual):
        return bool(expected == actual)
    return False


def _canonical(value: Json) -> Json:
    """A hashable form of a JSON value: equal forms exactly when the values are JSON-equal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if _is_number(value):
        # 1 and 1.0 are one JSON number; a NaN equals nothing, not even itself.
        if isinstance(value, float) and value.is_integer():
            return ("number", int(value))
        return ("number", value if value == value else object())
    if isinstance(value, list):
        return ("list", tuple(_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((key, _canonical(item)) for key, item in value.items())))
    return ("other", object())  # not JSON: equal to nothing


# Loading


def _load_folder(folder: Path) -> dict[str, Question]:
    if not folder.is_dir():
        log.warning("questions_folder_missing", folder=str(folder))
        return {}
    try:
        entries = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    except OSError as exc:
        log.warning("questions_folder_unreadable", folder=str(folder), reason=str(exc))
        return {}
    if len(entries) > MAX_QUESTIONS_PER_FOLDER:
        log.warning(
            "questions_over_limit",
            folder=str(folder),
            found=len(entries),
            limit=MAX_QUESTIONS_PER_FOLDER,
            ignored=[entry.name for entry in entries[MAX_QUESTIONS_PER_FOLDER:]][:20],
        )
        entries = entries[:MAX_QUESTIONS_PER_FOLDER]
    loaded: dict[str, Question] = {}
    for entry in entries:
        try:
            loaded[entry.name] = load_question(entry)
        except QuestionInvalid as exc:
            log.warning("question_skipped", folder=str(folder), question_id=entry.name[:80], reason=str(exc))
    return loaded


def load_question(path: Path) -> Question:
    """The question in folder ``path``; raises QuestionInvalid saying what is wrong."""
    question_id = path.name
    if not QUESTION_ID.fullmatch(question_id):
        raise QuestionInvalid(f"folder name {question_id[:80]!r} is not a question id (a-z, 0-9, '-', at most 64)")
    markdown = _read(path / "question.md", MAX_STATEMENT_CHARS)
    if markdown is None:
        raise QuestionInvalid("question.md is missing")
    title, statement = _title_and_statement(markdown)
    starters = {}
    for language, name in STARTER_FILES.items():
        starter = _read(path / name, MAX_STARTER_CHARS)
        if starter is not None:
            starters[language] = starter
    if not starters:
        raise QuestionInvalid(f"no starter: needs at least one of {', '.join(STARTER_FILES.values())}")
    tests = _read(path / "tests.json", MAX_TESTS_CHARS)
    functions: dict[str, str] = {}
    compare = "exact"
    cases: tuple[Case, ...] = ()
    if tests is not None:
        functions, compare, cases = _parse_tests(tests)
    return Question(question_id, title, statement, starters, functions, compare, cases)


def _read(path: Path, max_chars: int) -> str | None:
    """The text of ``path`` (UTF-8, at most ``max_chars`` characters), None when it is missing.

    Opened without blocking and read only when it is a regular file: a FIFO (or a device) in the
    operator's folder would otherwise hang the server's start on its first read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise QuestionInvalid(f"{path.name} is unreadable: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise QuestionInvalid(f"{path.name} is not a regular file")
            # A character is at most 4 bytes in UTF-8: reading one more than that bounds the cost.
            data = file.read(max_chars * 4 + 1)
    except OSError as exc:
        raise QuestionInvalid(f"{path.name} is unreadable: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QuestionInvalid(f"{path.name} is not UTF-8 (byte {exc.start})") from exc
    if len(data) > max_chars * 4 or len(text) > max_chars:
        raise QuestionInvalid(f"{path.name} has more than {max_chars} characters")
    return text


def _title_and_statement(markdown: str) -> tuple[str, str]:
    first, _, rest = markdown.lstrip("\ufeff").partition("\n")
    if not first.startswith("# "):
        raise QuestionInvalid(f"question.md must start with '# Title', not {first[:40]!r}")
    title = first[2:].strip()
    if not title or len(title) > MAX_TITLE_CHARS:
        raise QuestionInvalid(f"the title must have 1 to {MAX_TITLE_CHARS} characters, not {len(title)}")
    return title, rest.strip("\n")


def _reject_constant(name: str) -> None:
    raise QuestionInvalid(f"tests.json holds {name}, which is not JSON")


def _parse_tests(text: str) -> tuple[dict[str, str], str, tuple[Case, ...]]:
    try:
        tests = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        if isinstance(exc, QuestionInvalid):
            raise
        raise QuestionInvalid(f"tests.json is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(tests, dict):
        raise QuestionInvalid("tests.json must hold an object")
    unknown = sorted(set(tests) - {"function", "compare", "cases"})
    if unknown:
        raise QuestionInvalid(f"tests.json has unknown keys {unknown[:5]} (allowed: function, compare, cases)")
    return _parse_functions(tests.get("function")), _parse_compare(tests.get("compare", "exact")), _parse_cases(tests)


def _parse_functions(functions: Json) -> dict[str, str]:
    if not isinstance(functions, dict) or not functions:
        raise QuestionInvalid('tests.json needs "function": {"python": name, "javascript": name}')
    parsed = {}
    for language, name in functions.items():
        if language not in RUN_LANGUAGES:
            raise QuestionInvalid(f"tests.json names a function for unknown language {language[:40]!r}")
        python_ok = isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) and len(name) <= 64
        js_ok = isinstance(name, str) and JS_IDENTIFIER.fullmatch(name) is not None
        if not (python_ok if language == "python" else js_ok):
            raise QuestionInvalid(f"{str(name)[:80]!r} is not a {language} function name")
        parsed[language] = name
    return parsed


def _parse_compare(compare: Json) -> str:
    if compare not in COMPARE_MODES:
        raise QuestionInvalid(f"compare must be one of {', '.join(COMPARE_MODES)}, not {str(compare)[:40]!r}")
    return str(compare)


def _parse_cases(tests: dict[str, Json]) -> tuple[Case, ...]:
    cases = tests.get("cases")
    if not isinstance(cases, list) or not 1 <= len(cases) <= MAX_CASES:
        count = len(cases) if isinstance(cases, list) else "no list of"
        raise QuestionInvalid(f'tests.json needs "cases": 1 to {MAX_CASES} cases, found {count}')
    parsed = []
    names: set[str] = set()
    for index, case in enumerate(cases):
        if not isinstance(case, dict) or set(case) != {"name", "args", "expected"}:
            raise QuestionInvalid(f'case {index} must be {{"name": ..., "args": [...], "expected": ...}}')
        name, args = case["name"], case["args"]
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_CASE_NAME_CHARS:
            raise QuestionInvalid(f"case {index}: the name must be a string of 1 to {MAX_CASE_NAME_CHARS} characters")
        if name in names:
            raise QuestionInvalid(f"case {index}: the name {name[:80]!r} is used twice")
        if not isinstance(args, list):
            raise QuestionInvalid(f"case {index} ({name[:80]!r}): args must be a list")
        # The harnesses report a longer returned value as an error: such a case could never pass.
        if json_chars(case["expected"]) > MAX_RESULT_CHARS:
            raise QuestionInvalid(f"case {index} ({name[:80]!r}): expected has more than {MAX_RESULT_CHARS} characters")
        names.add(name)
        parsed.append(Case(name, tuple(args), case["expected"]))
    return tuple(parsed)
