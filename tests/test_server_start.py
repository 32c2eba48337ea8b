"""The same app however it is started: ``python app.py`` (the command to deploy with),
``uvicorn app:app`` (serves, and warns of each uvicorn option it lacks), and ``FAST_PATH=false``
(``/ws`` on public ASGI alone)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, LiveServer, free_port, start_server

pytestmark = pytest.mark.slow

Connect = Callable[..., Any]


def log_events(server: LiveServer) -> list[dict[str, Any]]:
    """The server's JSON log lines (uvicorn's own start-up lines may be plain text)."""
    events = []
    for line in server.log().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                events.append(entry)
    return events


def named(server: LiveServer, event: str) -> list[dict[str, Any]]:
    return [entry for entry in log_events(server) if entry.get("event") == event]


async def an_edit_goes_round(server: LiveServer, room: str, connect_client: Connect) -> None:
    """Two full-text clients in one room: one's change reaches the other, byte for byte."""
    ann: Client = await connect_client(server.ws(room))
    await ann.send({"type": "join", "username": "ann"})
    bob: Client = await connect_client(server.ws(room))
    await bob.send({"type": "join", "username": "bob"})
    bob_id = (await ann.recv_type("user_joined"))["user_id"]
    await bob.send({"type": "code_change", "code": "print('hi 😀')", "cursor_position": 7})
    expected = {"type": "code_change", "code": "print('hi 😀')", "cursor_position": 7, "user_id": bob_id}
    assert expected == await ann.recv_type("code_change")


async def test_uvicorn_app_app_serves_and_warns_of_the_options_it_lacks(
    tmp_path: Path, room: str, connect_client: Connect
) -> None:
    port = free_port()
    server = start_server(
        tmp_path,
        argv=[sys.executable, "-m", "uvicorn", "app:app"],
        PORT=str(port),
        UVICORN_HOST="127.0.0.1",
        UVICORN_PORT=str(port),
        FAST_PATH="true",
    )
    try:
        await an_edit_goes_round(server, room, connect_client)
        [warning] = named(server, "server_options_differ")
        assert "warning" == warning["level"]
        assert {"http", "proxy_headers", "ws_max_size", "timeout_graceful_shutdown"} <= set(warning["options"])
        # uvicorn's own choice of WebSocket implementation is the sans-I/O one: still fast.
        assert [True] == [entry["enabled"] for entry in named(server, "fast_path")]
    finally:
        server.stop()


async def test_python_app_py_has_nothing_to_warn_of_and_uses_the_fast_path(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    server = make_server(FAST_PATH="true")
    await an_edit_goes_round(server, room, connect_client)
    assert [] == named(server, "server_options_differ")
    assert [] == named(server, "request_header_timeout_unsupported")
    assert [(True, "info")] == [(entry["enabled"], entry["level"]) for entry in named(server, "fast_path")]


async def test_with_the_fast_path_off_a_server_serves_over_asgi_alone(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    server = make_server(FAST_PATH="false")
    await an_edit_goes_round(server, room, connect_client)
    [decision] = named(server, "fast_path")
    assert (False, "FAST_PATH is false", "info") == (decision["enabled"], decision["reason"], decision["level"])
    assert [] == named(server, "server_options_differ")
