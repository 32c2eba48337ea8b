"""Room ids and secrets never reach a log line: room tags, path redaction, wire redaction."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from observability import logs
from observability.logs import redact, redact_room_paths, redact_wire, room_tag, set_room_log_key, tag_rooms
from tests.conftest import ROOT, LiveServer

TAG = re.compile(r"[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _restore_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(logs, "_room_key", logs._room_key)
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_room_tag_is_twelve_hex_digits_the_same_for_every_call() -> None:
    tag = room_tag("standup-notes")
    assert TAG.fullmatch(tag)
    assert tag == room_tag("standup-notes")
    assert tag != room_tag("standup-notes2")


def test_room_tag_depends_on_the_key() -> None:
    set_room_log_key("first secret")
    first = room_tag("room")
    set_room_log_key(b"second secret")
    assert first != room_tag("room")
    set_room_log_key(b"first secret")
    assert first == room_tag("room")


def test_room_tag_is_not_a_plain_hash_of_the_id() -> None:
    import hashlib

    set_room_log_key("secret")
    assert hashlib.sha256(b"room").hexdigest()[:12] != room_tag("room")


def test_room_id_field_becomes_room_tag() -> None:
    event = tag_rooms(None, "info", {"event": "member_joined", "room_id": "r1", "user_id": "u1"})
    assert {"event": "member_joined", "room": room_tag("r1"), "user_id": "u1"} == event


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('127.0.0.1:5 - "GET /room/abc HTTP/1.1" 200', '127.0.0.1:5 - "GET /room/~{abc} HTTP/1.1" 200'),
        ('127.0.0.1:5 - "WebSocket /ws/abc" [accepted]', '127.0.0.1:5 - "WebSocket /ws/~{abc}" [accepted]'),
        ("GET /api/rooms/abc/history?limit=5", "GET /api/rooms/~{abc}/history?limit=5"),
        ("/api/rooms/abc/versions/3", "/api/rooms/~{abc}/versions/3"),
        ("/room/abc?x=1#y", "/room/~{abc}?x=1#y"),
        ("http://host:8080/ws/a_b-C9", "http://host:8080/ws/~{a_b-C9}"),
        ("GET /readyz HTTP/1.1", "GET /readyz HTTP/1.1"),
        ("GET /api/rooms/ HTTP/1.1", "GET /api/rooms/ HTTP/1.1"),
    ],
)
def test_room_ids_in_paths_become_tags(text: str, expected: str) -> None:
    expected = re.sub(r"\{([^}]*)\}", lambda match: room_tag(match[1]), expected)
    assert expected == redact_room_paths(text)


def test_an_id_the_server_would_refuse_is_tagged_too() -> None:
    long_id = "x" * 100
    assert f"/ws/~{room_tag(long_id)}" == redact_room_paths(f"/ws/{long_id}")


def test_path_redaction_is_idempotent() -> None:
    once = redact_room_paths("/ws/abc")
    assert once == redact_room_paths(once)


def test_paths_in_any_field_are_tagged() -> None:
    event = tag_rooms(None, "error", {"event": "api_request_failed", "path": "/api/rooms/abc"})
    assert f"/api/rooms/~{room_tag('abc')}" == event["path"]


@pytest.mark.parametrize("key", ["resume_token", "storage_secret", "session_token", "api_secret", "token"])
def test_secret_fields_are_redacted(key: str) -> None:
    assert "[redacted]" == redact(None, "info", {"event": "x", key: "hK3u9QpXr2LmV8sZ"})[key]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("""> TEXT '{"type":"welcome","resume_token":"hK3u9Q"}' [44 bytes]""", "> TEXT [redacted] [44 bytes]"),
        ("""< TEXT '{"type":"hello",...,"resume_token":"hK3"}' [990 bytes]""", "< TEXT [redacted] [990 bytes]"),
        ("< CONT 'def f():' [text, 8 bytes, continued]", "< CONT [redacted] [text, 8 bytes, continued]"),
        ("< BINARY 01 02 [2 bytes]", "< BINARY [redacted] [2 bytes]"),
        ("< cookie: session=eyJ1c2VyIjoxfQ", "< cookie: [redacted]"),
        ("< Authorization: Bearer abc", "< Authorization: [redacted]"),
        ("< CLOSE 1000 (OK) [2 bytes]", "< CLOSE 1000 (OK) [2 bytes]"),
        ("< host: 127.0.0.1:8080", "< host: 127.0.0.1:8080"),
    ],
)
def test_websocket_debug_lines_lose_payloads_and_credentials(line: str, expected: str) -> None:
    assert expected == redact_wire(None, "debug", {"event": line})["event"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("STORAGE_SECRET", "DATA_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "observability.logs", *args],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_tag_keyed_with_storage_secret(tmp_path: Path) -> None:
    result = _cli({"STORAGE_SECRET": "my storage secret", "DATA_DIR": str(tmp_path)}, "tag", "standup")
    set_room_log_key("my storage secret")
    assert (0, f"{room_tag('standup')}\n") == (result.returncode, result.stdout)


def test_cli_reads_the_secret_file_in_data_dir_as_the_app_does(tmp_path: Path) -> None:
    (tmp_path / "storage-secret").write_text("kept secret\n")
    result = _cli({"DATA_DIR": str(tmp_path)}, "tag", "a", "b")
    set_room_log_key("kept secret")
    assert (0, f"{room_tag('a')}\n{room_tag('b')}\n") == (result.returncode, result.stdout)


def test_cli_without_a_secret_says_where_it_looked_and_creates_nothing(tmp_path: Path) -> None:
    result = _cli({"DATA_DIR": str(tmp_path / "data")}, "tag", "a")
    assert 0 != result.returncode
    assert "STORAGE_SECRET" in result.stderr
    assert str(tmp_path / "data") in result.stderr
    assert not (tmp_path / "data").exists()


def _log_lines(server: LiveServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


@pytest.mark.slow
async def test_live_server_logs_room_tags_and_no_room_id_or_secret(
    make_server: Callable[..., LiveServer], connect_client: Callable[..., Any]
) -> None:
    secret = f"storage-{uuid.uuid4().hex}"
    # DEBUG: the most a server ever logs, the WebSocket library's frame and header lines included.
    server = make_server(STORAGE_SECRET=secret, LOG_LEVEL="DEBUG")
    room = f"secret-{uuid.uuid4().hex}"
    token = f"resume-{uuid.uuid4().hex}"
    text = f"confidential {uuid.uuid4().hex}"
    client = await connect_client(server.ws(room))
    await client.send({"type": "hello", "client_id": "tab-1", "resume_token": token})
    welcome = await client.recv_type("welcome")
    await client.send({"type": "push", "version": welcome["version"], "seq": 1, "changes": [[0, text]]})
    await client.recv_type("update")
    await client.close()
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        for path in (f"/api/rooms/{room}", f"/api/rooms/{room}/history?limit=1000", f"/room/{room}"):
            assert 200 == (await http.get(path)).status_code
    server.stop()  # every line written, the shutdown's included

    log = server.log()
    for value in (room, token, secret, text, welcome["resume_token"][:8]):
        assert value not in log
    lines = _log_lines(server)
    in_paths = {
        match for line in lines for match in re.findall(r"/(?:ws|room|api/rooms)/~([0-9a-f]{12})", line["event"])
    }
    in_fields = {line["room"] for line in lines if "room" in line}
    access = [line["event"] for line in lines if line["logger"] == "uvicorn.access"]
    assert 1 == len(in_paths)
    assert in_paths == in_fields
    (tag,) = in_paths
    for path in (f"/api/rooms/~{tag} ", f"/api/rooms/~{tag}/history?limit=1000", f"/room/~{tag} "):
        assert any(path in line for line in access)
    assert any(f'"WebSocket /ws/~{tag}" [accepted]' in line["event"] for line in lines)
    assert {"room_created", "member_joined", "member_left"} <= {line["event"] for line in lines if "room" in line}


def _app_sets_the_key() -> bool:
    return "set_room_log_key(" in (ROOT / "app.py").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not _app_sets_the_key(), reason="app.py does not key room tags with its storage secret yet")
async def test_live_server_tags_rooms_as_the_cli_does(
    make_server: Callable[..., LiveServer], connect_client: Callable[..., Any]
) -> None:
    secret = f"storage-{uuid.uuid4().hex}"
    server = make_server(STORAGE_SECRET=secret)
    room = f"r-{uuid.uuid4().hex}"
    client = await connect_client(server.ws(room))
    await client.send({"type": "hello", "client_id": "tab-1"})
    await client.recv_type("welcome")
    await client.close()
    server.stop()
    set_room_log_key(secret)
    assert room_tag(room) in {line.get("room") for line in _log_lines(server)}
    assert f"/ws/~{room_tag(room)}" in server.log()


def test_a_links_secret_in_a_path_is_never_logged_and_its_room_is_tagged() -> None:
    line = 'GET /join/abc/hX0fQ2pAm9Zt-secret_43chars?x=1 HTTP/1.1" 200'
    assert f'GET /join/~{room_tag("abc")}/[redacted]?x=1 HTTP/1.1" 200' == redact_room_paths(line)
