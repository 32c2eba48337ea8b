"""The application object: importable without a server, routes served in-process."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app import app


def test_app_serves_health_and_a_websocket_room_in_process() -> None:
    with TestClient(app) as client:
        assert {"status": "ok"} == client.get("/healthz").json()
        assert "ready" == client.get("/readyz").json()["status"]
        assert "collab_rooms" in client.get("/metrics").text
        with client.websocket_connect("/ws/in-process") as socket:
            socket.send_json({"type": "hello", "client_id": "c1", "username": "ann", "version": None})
            welcome = socket.receive_json()
            assert ("welcome", "") == (welcome["type"], welcome["doc"])
            socket.send_json({"type": "push", "version": 0, "seq": 1, "changes": [[0, "hi"]]})
            assert [[0, "hi"]] == socket.receive_json()["changes"]


def test_readyz_is_unavailable_outside_the_lifespan() -> None:
    # Without `with`, the lifespan does not run: no registry is accepting rooms.
    response = TestClient(app).get("/readyz")
    assert (503, "unavailable") == (response.status_code, response.json()["status"])
    assert {"status": "ok"} == TestClient(app).get("/healthz").json()
