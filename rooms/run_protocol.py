"""The wire messages of running code in a room and of its question (versioned protocol only).

Client to server: ``run_start``, ``run_output``, ``run_end`` (a member runs the room's code in
its own browser and reports what it printed and how it ended), ``question`` (pick the room's
question) and ``allow_runs`` (interviewers turn running code on or off). Server to clients:
``run_started``, ``run_cases``, ``run_output``, ``run_ended``, ``question``, ``runs_allowed``.
See ``docs/protocol.md``, "Running code". A full-text client never sends nor receives any.

Like every client message, these ignore unknown fields, and their validation errors never echo
the input (what a program printed may be large, or private).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, JsonValue, StrictBool, TypeAdapter, field_validator

from rooms.access import Role
from rooms.protocol import ClientMessage, SafeInt, ServerMessage

# A run's id, made by the client that starts it (random: a new one for every run).
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]
# A question's id: the name of its folder (`rooms.questions`), and what `question` names.
QUESTION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# The languages a browser runs: the room's language names for them.
RunLanguage = Literal["python", "javascript"]
RUN_LANGUAGES: tuple[RunLanguage, ...] = get_args(RunLanguage)
# The code as it is, or the question's test cases on it.
RunKind = Literal["code", "tests"]
# How a run ended, as its runner reports it; the room may also end it "lost" (`rooms.room_runs`).
ReportedStatus = Literal["ok", "error", "timeout", "stopped"]
RunStatus = Literal[ReportedStatus, "lost"]

# Limits of a test run's results, one set for the room and the question loader (`rooms.questions`).
# The browser harnesses (ui/runner/harness.py, harness.js) apply the same two per case: a longer
# error is cut there, a longer returned value is reported as an error.
MAX_CASE_ERROR_CHARS = 500  # a case's error: the exception's type and message
MAX_RESULT_CHARS = 10_000  # a case's returned value (or expected value), as JSON
# All of a run's results, as JSON: a run_end is stored whole and sent to interviewers.
MAX_RESULTS_CHARS = 100_000


def json_chars(value: Any) -> int:
    """The length of ``value``'s JSON, compact and unescaped: never more than either harness
    measured (Python's ``json.dumps`` adds spaces and escapes, JavaScript's counts an emoji as
    two), so a value a harness let through is never refused here."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


# Client to server.


class RunStart(ClientMessage):
    """A member starts running the code of the document at ``version`` in its browser."""

    type: Literal["run_start"]
    run_id: RunId
    language: RunLanguage
    version: SafeInt  # the document version the code was taken from
    kind: RunKind


class RunOutput(ClientMessage):
    """What the run printed since its last ``run_output``."""

    type: Literal["run_output"]
    run_id: RunId
    stream: Literal["stdout", "stderr"]
    # Bounded by the frame size limit. Valid Unicode: pydantic refuses a lone surrogate even in a
    # message built on the server (one that would be relayed, stored, and never encoded again).
    text: Annotated[str, Field(min_length=1)]


class RunEnd(ClientMessage):
    """How the run ended; for a run of kind ``tests``, one result per test case, in order:
    ``{"actual": <the function's return value, as JSON>}`` or ``{"error": "<ExcType: message>"}``.
    Each ``actual`` at most `MAX_RESULT_CHARS` characters of JSON, all of them at most
    `MAX_RESULTS_CHARS`: they are stored and sent to interviewers whole."""

    type: Literal["run_end"]
    run_id: RunId
    status: ReportedStatus
    duration_ms: SafeInt
    results: list[dict[str, JsonValue]] | None = None

    @field_validator("results")
    @classmethod
    def _one_of_actual_or_error(cls, value: list[dict[str, JsonValue]] | None) -> list[dict[str, JsonValue]] | None:
        for index, result in enumerate(value or ()):
            if set(result) == {"actual"}:
                size = json_chars(result["actual"])
                if size > MAX_RESULT_CHARS:
                    raise ValueError(
                        f"result {index}: actual must be at most {MAX_RESULT_CHARS} characters of JSON, got {size}"
                    )
                continue
            error = result.get("error")
            if set(result) != {"error"} or type(error) is not str:
                raise ValueError('each result must be {"actual": <json>} or {"error": "<message>"}')
            if len(error) > MAX_CASE_ERROR_CHARS:
                raise ValueError(f"an error must be at most {MAX_CASE_ERROR_CHARS} characters, got {len(error)}")
        if value is not None and (size := json_chars(value)) > MAX_RESULTS_CHARS:
            raise ValueError(f"the results must be at most {MAX_RESULTS_CHARS} characters of JSON, got {size}")
        return value


class SetQuestion(ClientMessage):
    """Pick the room's question (None: no question)."""

    type: Literal["question"]
    question_id: Annotated[str, Field(pattern=QUESTION_ID.pattern)] | None


class AllowRuns(ClientMessage):
    """Let the members who are not interviewers run code, or not (interviewers only)."""

    type: Literal["allow_runs"]
    allowed: StrictBool


RunMessage = Annotated[RunStart | RunOutput | RunEnd | SetQuestion | AllowRuns, Field(discriminator="type")]
RUN_MESSAGES: TypeAdapter[RunMessage] = TypeAdapter(RunMessage)


# Server to clients.


class RunStartedOut(ServerMessage):
    """A run started: to every versioned member, its runner included (who runs only then).
    ``role``: the runner's role (null in an open room), so that pages can say whose browser
    reports the run's results (the room cannot check them: see docs/protocol.md)."""

    type: Literal["run_started"] = "run_started"
    run_id: str
    user_id: str
    username: str
    color: str
    language: RunLanguage
    version: int
    kind: RunKind
    role: Role | None

    def encode(self) -> str:
        # ``role`` is null in an open room, not absent.
        return self.model_dump_json()


class CaseInput(ServerMessage):
    name: str
    args: list[JsonValue]


class RunCasesOut(ServerMessage):
    """The test cases to run (inputs only), to the runner of a ``tests`` run, after its
    ``run_started``."""

    type: Literal["run_cases"] = "run_cases"
    run_id: str
    function: str  # the name of the function to call, in the run's language
    cases: list[CaseInput]


class RunOutputOut(ServerMessage):
    """A run's output, relayed to every versioned member but its runner."""

    type: Literal["run_output"] = "run_output"
    run_id: str
    stream: str
    text: str


class RunEndedOut(ServerMessage):
    """A run ended: to every versioned member, its runner included. ``tests``, as the runner's
    browser reported them (the room judges them, but cannot check they were run): per test case
    ``name``, ``passed`` and ``error``, plus ``args``, ``expected`` and ``actual`` in the copies
    of those who may see the answers (interviewers, and everyone in an open room)."""

    type: Literal["run_ended"] = "run_ended"
    run_id: str
    role: Role | None  # the runner's, as in `RunStartedOut`
    status: RunStatus
    duration_ms: int
    truncated: bool
    passed: int | None
    total: int | None
    tests: list[dict[str, Any]] | None

    def encode(self) -> str:
        # ``passed``, ``total`` and ``tests`` are null for a run with no test results, not absent
        # (and ``role`` in an open room).
        return self.model_dump_json()


class QuestionOut(ServerMessage):
    """The room's question changed (``user_id``: who picked it; None in a welcome burst).
    ``test_languages``: the languages "Run tests" runs in, sorted ([] without a question, or
    without tests); the room always sets it. ``cases`` only in the copies of those who may see
    the answers."""

    type: Literal["question"] = "question"
    question_id: str | None
    title: str | None = None
    statement: str | None = None
    starters: dict[str, str] | None = None
    test_languages: list[RunLanguage] | None = None
    user_id: str | None = None
    cases: list[dict[str, Any]] | None = None

    def encode(self) -> str:
        # ``question_id`` and ``user_id`` are always there (null: no question, or no one).
        optional = ("title", "statement", "starters", "test_languages", "cases")
        absent = {name for name in optional if getattr(self, name) is None}
        return self.model_dump_json(exclude=absent)


class RunsAllowedOut(ServerMessage):
    """Interviewers turned running code on or off for the others."""

    type: Literal["runs_allowed"] = "runs_allowed"
    allowed: bool
    user_id: str
