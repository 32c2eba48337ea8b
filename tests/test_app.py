"""The application object: importable without a server, routes served in-process."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import app, storage_secret
from rooms.settings import Settings
from tests.conftest import LiveServer

# The default Host rule answers loopback names only (TestClient says "testserver").
LOCAL = "http://127.0.0.1"


def test_app_serves_health_and_a_websocket_room_in_process() -> None:
    with TestClient(app, base_url=LOCAL) as client:
        assert {"status": "ok"} == client.get("/healthz").json()
        assert "ready" == client.get("/readyz").json()["status"]
        assert "collab_rooms" in client.get("/metrics").text
        with client.websocket_connect("ws://127.0.0.1/ws/in-process") as socket:
            socket.send_json({"type": "hello", "client_id": "c1", "username": "ann", "version": None})
            welcome = socket.receive_json()
            assert ("welcome", "") == (welcome["type"], welcome["doc"])
            socket.send_json({"type": "push", "version": 0, "seq": 1, "changes": [[0, "hi"]]})
            assert [[0, "hi"]] == socket.receive_json()["changes"]


def test_readyz_is_unavailable_outside_the_lifespan() -> None:
    # Without `with`, the lifespan does not run: no registry is accepting rooms.
    response = TestClient(app, base_url=LOCAL).get("/readyz")
    assert (503, "unavailable") == (response.status_code, response.json()["status"])
    assert {"status": "ok"} == TestClient(app, base_url=LOCAL).get("/healthz").json()


def test_a_generated_storage_secret_is_kept_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = storage_secret(settings)
    path = tmp_path / "data" / "storage-secret"
    assert len(secret) >= 40 and secret == path.read_text().strip()
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert secret == storage_secret(settings)  # sessions survive a restart
    assert "given" == storage_secret(Settings(data_dir=tmp_path / "data", storage_secret="given"))


@pytest.mark.slow
def test_the_socketio_endpoint_checks_origin_like_ws(server: LiveServer) -> None:
    path = f"{server.http}/_nicegui_ws/socket.io/?EIO=4&transport=polling"
    assert 200 == httpx.get(path, headers={"Origin": server.http}, timeout=10).status_code
    refused = httpx.get(path, headers={"Origin": "http://evil.example"}, timeout=10)
    assert 400 == refused.status_code and "not an accepted origin" in refused.text
    # A page that rebinds its own name to the loopback address is not same-origin either.
    rebound = httpx.get(path, headers={"Origin": "http://evil.example", "Host": "evil.example"}, timeout=10)
    assert 400 == rebound.status_code
