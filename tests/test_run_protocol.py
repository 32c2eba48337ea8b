"""The wire messages of running code and of the room's question (`rooms.run_protocol`): parsing,
validation, and the exact JSON the server sends."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from rooms import questions
from rooms.errors import InvalidMessage, RunRefused
from rooms.protocol import CLIENT_TYPES, FULL_TEXT_ONLY, VERSIONED_ONLY, ErrorOut, parse_client_message
from rooms.run_protocol import (
    MAX_CASE_ERROR_CHARS,
    MAX_RESULT_CHARS,
    MAX_RESULTS_CHARS,
    QUESTION_ID,
    RUN_LANGUAGES,
    AllowRuns,
    QuestionOut,
    ReportedStatus,
    RunEnd,
    RunEndedOut,
    RunLanguage,
    RunOutput,
    RunsAllowedOut,
    RunStart,
    RunStartedOut,
    RunStatus,
    SetQuestion,
)

RUN_TYPES = ["run_start", "run_output", "run_end", "question", "allow_runs"]


def parse(message: dict[str, Any]) -> Any:
    return parse_client_message(json.dumps(message), 100_000)


def run_start(**fields: Any) -> dict[str, Any]:
    return {"type": "run_start", "run_id": "r-1_A", "language": "python", "version": 3, "kind": "code", **fields}


def run_end(**fields: Any) -> dict[str, Any]:
    return {"type": "run_end", "run_id": "r1", "status": "ok", "duration_ms": 40, **fields}


def test_every_run_message_parses_into_its_model() -> None:
    assert RunStart(type="run_start", run_id="r-1_A", language="python", version=3, kind="code") == parse(run_start())
    assert RunOutput(type="run_output", run_id="r1", stream="stderr", text="x") == parse(
        {"type": "run_output", "run_id": "r1", "stream": "stderr", "text": "x"}
    )
    results = [{"actual": None}, {"actual": [1, {"a": 2.5}]}, {"error": "ValueError: no"}]
    assert RunEnd(type="run_end", run_id="r1", status="ok", duration_ms=40, results=results) == parse(
        run_end(results=results)
    )
    assert SetQuestion(type="question", question_id="two-sum") == parse({"type": "question", "question_id": "two-sum"})
    assert SetQuestion(type="question", question_id=None) == parse({"type": "question", "question_id": None})
    assert AllowRuns(type="allow_runs", allowed=False) == parse({"type": "allow_runs", "allowed": False})


def test_unknown_fields_are_ignored() -> None:
    assert "r-1_A" == parse(run_start(stdin="typed input")).run_id


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(run_start(run_id=""), id="empty_run_id"),
        pytest.param(run_start(run_id="x" * 33), id="long_run_id"),
        pytest.param(run_start(run_id="a b"), id="run_id_with_space"),
        pytest.param(run_start(run_id=7), id="run_id_not_a_string"),
        pytest.param(run_start(language="ruby"), id="language"),
        pytest.param(run_start(kind="benchmark"), id="kind"),
        pytest.param(run_start(version=-1), id="negative_version"),
        pytest.param(run_start(version=2**53), id="unsafe_version"),
        pytest.param({"type": "run_start", "run_id": "r1", "language": "python", "kind": "code"}, id="no_version"),
        pytest.param({"type": "run_output", "run_id": "r1", "stream": "stdin", "text": "x"}, id="stream"),
        pytest.param({"type": "run_output", "run_id": "r1", "stream": "stdout", "text": ""}, id="empty_text"),
        pytest.param({"type": "run_output", "run_id": "r1", "stream": "stdout", "text": 5}, id="text_not_a_string"),
        pytest.param(run_end(status="lost"), id="lost_is_the_servers_word"),
        pytest.param(run_end(duration_ms=-5), id="negative_duration"),
        pytest.param(run_end(results=[{"actual": 1, "error": "x"}]), id="actual_and_error"),
        pytest.param(run_end(results=[{}]), id="empty_result"),
        pytest.param(run_end(results=[{"result": 1}]), id="other_key"),
        pytest.param(run_end(results=[{"error": 1}]), id="error_not_a_string"),
        pytest.param(run_end(results=[{"error": "x" * (MAX_CASE_ERROR_CHARS + 1)}]), id="long_error"),
        pytest.param(run_end(results={"actual": 1}), id="results_not_a_list"),
        pytest.param({"type": "question", "question_id": "Two-Sum"}, id="question_id_pattern"),
        pytest.param({"type": "question"}, id="question_id_missing"),
        pytest.param({"type": "allow_runs", "allowed": "yes"}, id="allowed_not_a_boolean"),
    ],
)
def test_a_malformed_run_message_is_invalid(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage) as invalid:
        parse(message)
    assert (message["type"], True) == (invalid.value.message_type, str(invalid.value).startswith("invalid "))


def actual_of(chars: int) -> str:
    """A returned value whose JSON is ``chars`` characters: a string, quotes included."""
    return "x" * (chars - 2)


def parse_big(message: dict[str, Any]) -> Any:
    return parse_client_message(json.dumps(message), 10_000_000)


def test_a_returned_value_of_the_longest_allowed_json_is_taken() -> None:
    results = [{"actual": actual_of(MAX_RESULT_CHARS)}]
    assert results == parse_big(run_end(results=results)).results


def test_a_returned_value_whose_json_is_longer_than_a_harness_sends_is_invalid() -> None:
    with pytest.raises(InvalidMessage) as invalid:
        parse_big(run_end(results=[{"actual": 1}, {"actual": actual_of(MAX_RESULT_CHARS + 1)}]))
    assert f"result 1: actual must be at most {MAX_RESULT_CHARS} characters of json" in str(invalid.value)
    assert "r1" == invalid.value.run_id  # answered as the room answers about a run


def test_a_returned_value_is_measured_as_compact_unescaped_json() -> None:
    # The harnesses measure no more than this: Python's json.dumps writes "\u00e9" and ", ",
    # JavaScript counts the emoji as two; whatever either let through must pass here.
    value = ["é" * 3000, "😀" * 3000, *[0] * 1500]
    assert MAX_RESULT_CHARS >= len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    assert [{"actual": value}] == parse_big(run_end(results=[{"actual": value}])).results


def test_results_longer_than_max_results_chars_in_all_are_invalid() -> None:
    count = MAX_RESULTS_CHARS // MAX_RESULT_CHARS + 1
    with pytest.raises(InvalidMessage, match=f"at most {MAX_RESULTS_CHARS} characters of json"):
        parse_big(run_end(results=[{"actual": actual_of(MAX_RESULT_CHARS)}] * count))


def test_the_loader_and_the_room_share_one_set_of_limits() -> None:
    assert (MAX_RESULT_CHARS, QUESTION_ID, RUN_LANGUAGES) == (
        questions.MAX_RESULT_CHARS,
        questions.QUESTION_ID,
        questions.RUN_LANGUAGES,
    )
    assert not hasattr(questions, "MAX_ERROR_CHARS") and not hasattr(questions, "LANGUAGES")


def test_the_run_shapes_are_named_once() -> None:
    assert (("python", "javascript"), ("python", "javascript")) == (RUN_LANGUAGES, get_args(RunLanguage))
    assert (*get_args(ReportedStatus), "lost") == get_args(RunStatus)


def test_an_error_of_the_longest_allowed_length_is_taken() -> None:
    assert [{"error": "x" * MAX_CASE_ERROR_CHARS}] == parse(run_end(results=[{"error": "x" * 500}])).results


def test_validation_errors_never_echo_what_a_program_printed() -> None:
    with pytest.raises(InvalidMessage) as invalid:
        parse({"type": "run_output", "run_id": "r1", "stream": "stdin", "text": "PRINTED-SECRET"})
    assert "PRINTED-SECRET" not in str(invalid.value)


def test_output_with_a_lone_surrogate_is_refused_from_a_frame_and_from_the_server() -> None:
    with pytest.raises(InvalidMessage, match="lone surrogate"):
        parse_client_message('{"type":"run_output","run_id":"r1","stream":"stdout","text":"a\\ud800"}', 1000)
    with pytest.raises(ValidationError, match="unicode"):
        RunOutput(type="run_output", run_id="r1", stream="stdout", text="a\ud800")


def test_run_messages_belong_to_the_versioned_protocol_only() -> None:
    assert set(RUN_TYPES) <= VERSIONED_ONLY
    assert set() == set(RUN_TYPES) & FULL_TEXT_ONLY
    assert set(RUN_TYPES) <= set(CLIENT_TYPES)


def test_an_error_about_a_run_carries_its_run_id() -> None:
    error = RunRefused("no run r9 of yours is going")
    error.run_id = "r9"
    assert {"type": "error", "code": "run_refused", "message": "no run r9 of yours is going", "run_id": "r9"} == (
        json.loads(ErrorOut.of(error).encode())
    )


def test_run_started_names_the_runners_role_or_null_in_an_open_room() -> None:
    fields = {"run_id": "r1", "user_id": "u", "username": "Ann", "color": "#000000", "version": 0}
    for role in (None, "candidate"):
        started = RunStartedOut(**fields, language="python", kind="tests", role=role).encode()
        assert {"type": "run_started", **fields, "language": "python", "kind": "tests", "role": role} == json.loads(
            started
        )


def test_run_ended_spells_out_the_absent_test_results_as_null() -> None:
    ended = RunEndedOut(
        run_id="r1", role=None, status="lost", duration_ms=0, truncated=False, passed=None, total=None, tests=None
    ).encode()
    assert {
        "type": "run_ended",
        "run_id": "r1",
        "role": None,
        "status": "lost",
        "duration_ms": 0,
        "truncated": False,
        "passed": None,
        "total": None,
        "tests": None,
    } == json.loads(ended)


def test_a_cleared_question_is_its_id_and_who_cleared_it() -> None:
    assert {"type": "question", "question_id": None, "user_id": "u1"} == json.loads(
        QuestionOut(question_id=None, user_id="u1").encode()
    )
    shown = json.loads(QuestionOut(question_id="q", title="T", statement="S", starters={}).encode())
    assert {
        "type": "question",
        "question_id": "q",
        "title": "T",
        "statement": "S",
        "starters": {},
        "user_id": None,
    } == (shown)


def test_runs_allowed_names_who_changed_it() -> None:
    assert {"type": "runs_allowed", "allowed": True, "user_id": "u"} == json.loads(
        RunsAllowedOut(allowed=True, user_id="u").encode()
    )
