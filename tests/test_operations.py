"""What operators rely on: documented metrics exist, and SIGTERM ends the process cleanly."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.exceptions import ConnectionClosed

from app import app
from rooms.session import DropReason
from tests.conftest import Client, LiveServer

# The default Host rule answers loopback names only (TestClient says "testserver").
LOCAL = "http://127.0.0.1"

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_every_documented_metric_is_exported_and_every_exported_one_documented(server: LiveServer) -> None:
    documented = set(re.findall(r"^\| `(collab_[a-z_]+)` \|", DOC.read_text(), re.MULTILINE))
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    exported = set(re.findall(r"^# TYPE (collab_[a-z_]+) ", text, re.MULTILINE))
    # prometheus-client names a counter `x_total` in samples but `x` in its TYPE line.
    assert {name.removesuffix("_total") for name in documented} == {name.removesuffix("_total") for name in exported}


def sample(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def test_ready_gauge_says_what_readyz_says() -> None:
    # Outside the lifespan no registry runs: not ready, in both places.
    outside = TestClient(app, base_url=LOCAL)
    assert 503 == outside.get("/readyz").status_code
    assert 0.0 == sample(outside.get("/metrics").text, "collab_ready")
    with TestClient(app, base_url=LOCAL) as client:
        assert 200 == client.get("/readyz").status_code
        assert 1.0 == sample(client.get("/metrics").text, "collab_ready")
        registry = client.app.state.registry  # type: ignore[attr-defined]
        registry.accepting = False  # as while it stops
        try:
            assert 503 == client.get("/readyz").status_code
            assert 0.0 == sample(client.get("/metrics").text, "collab_ready")
        finally:
            registry.accepting = True


def test_every_drop_reason_is_exported_before_the_first_drop(server: LiveServer) -> None:
    # A series at 0 lets rate() panels show 0 and the drop alert evaluate before anything happens.
    text = server.metrics()
    for reason in DropReason:
        assert 0 <= sample(text, f'collab_dropped_sockets_total{{reason="{reason.value}"}}')


@pytest.mark.slow
async def test_sigterm_tells_clients_to_reconnect_and_exits_cleanly(
    make_server: Callable[..., LiveServer], room: str, connect_client: Callable[..., Any]
) -> None:
    live = make_server()
    client: Client = await connect_client(live.ws(room))
    await client.send({"type": "hello", "client_id": "c1", "username": "ann", "version": None})
    await client.recv_type("welcome")
    live.process.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    # uvicorn re-raises the signal after its graceful shutdown, so supervisors see SIGTERM.
    assert -signal.SIGTERM == live.process.wait(timeout=15)
    assert "Application shutdown complete" in live.log()
    assert '"event": "stopped"' in live.log()
