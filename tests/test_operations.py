"""What operators rely on: documented metrics exist, and SIGTERM ends the process cleanly."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, LiveServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_every_documented_metric_is_exported_and_every_exported_one_documented(server: LiveServer) -> None:
    documented = set(re.findall(r"^\| `(collab_[a-z_]+)` \|", DOC.read_text(), re.MULTILINE))
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    exported = set(re.findall(r"^# TYPE (collab_[a-z_]+) ", text, re.MULTILINE))
    # prometheus-client names a counter `x_total` in samples but `x` in its TYPE line.
    assert {name.removesuffix("_total") for name in documented} == {name.removesuffix("_total") for name in exported}


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
