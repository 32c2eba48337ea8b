"""Log configuration: redaction, bound context, and foreign loggers routed through structlog."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from observability.logs import configure_logging, redact, room_tag


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    logging.captureWarnings(False)
    yield
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_redact_hides_secrets_and_contents() -> None:
    event = redact(None, "info", {"event": "x", "storage_secret": "s", "doc": "text", "room_id": "r"})
    assert {"event": "x", "storage_secret": "[redacted]", "doc": "[redacted]", "room_id": "r"} == event


def test_bound_context_appears_on_room_lines() -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        structlog.contextvars.bind_contextvars(room_id="r1", user_id="u1")
        structlog.get_logger("collab.test").info("member_joined")
    assert [{"event": "member_joined", "log_level": "info", "room_id": "r1", "user_id": "u1"}] == logs


def test_json_format_writes_one_object_a_line_for_ours_and_uvicorns(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("json", "INFO")
    structlog.get_logger("collab.test").info("hello", room_id="r", password="hunter2")
    logging.getLogger("uvicorn.error").info("server started")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert ["hello", "server started"] == [line["event"] for line in lines]
    assert "[redacted]" == lines[0]["password"]
    assert ("uvicorn.error", "info") == (lines[1]["logger"], lines[1]["level"])
    assert all("timestamp" in line for line in lines)


def test_warnings_become_log_events(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("json", "INFO")
        warnings.warn("something old", DeprecationWarning, stacklevel=1)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert ("py.warnings", "warning") == (line["logger"], line["level"])
    assert "something old" in line["event"]


def test_room_lines_carry_the_room_tag_and_never_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("json", "INFO")
    structlog.contextvars.bind_contextvars(room_id="standup-notes", user_id="u1")
    structlog.get_logger("collab.test").info("member_joined")
    structlog.contextvars.clear_contextvars()
    structlog.get_logger("collab.test").info("room_evicted", room_id="standup-notes")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [room_tag("standup-notes")] * 2 == [line["room"] for line in lines]
    assert "standup-notes" not in stream.getvalue()


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_access_lines_tag_the_room_in_the_path(monkeypatch: pytest.MonkeyPatch, log_format: str) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(log_format, "INFO")
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/api/rooms/standup-notes/history?limit=9", "1.1", 200)
    logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:6", "/ws/standup-notes")
    text = stream.getvalue()
    assert "standup-notes" not in text
    assert f"/api/rooms/~{room_tag('standup-notes')}/history?limit=9" in text
    assert f"WebSocket /ws/~{room_tag('standup-notes')}" in text


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_tag_room_paths(monkeypatch: pytest.MonkeyPatch, log_format: str) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(log_format, "INFO")
    try:
        raise RuntimeError("cannot serve /room/standup-notes")
    except RuntimeError:
        structlog.get_logger("collab.test").exception("page_failed")
    assert "standup-notes" not in stream.getvalue()
    assert f"/room/~{room_tag('standup-notes')}" in stream.getvalue()


def test_resume_tokens_in_fields_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("json", "INFO")
    structlog.get_logger("collab.test").info("hello", resume_token="hK3u9QpXr2LmV8sZ")
    assert "[redacted]" == json.loads(stream.getvalue())["resume_token"]
