"""The naive baseline: the common FastAPI design of a collaborative editor's server.

A ``ConnectionManager`` keeps a list of sockets per room; for every message it updates the
room's text and then awaits ``send_text`` on every other member in turn, each time with the
whole document. Nothing is queued: one slow reader holds up the sender's loop, and so the room.

It is driven by the same load as collab pad (``bench/load.py``): clients send the same small
``push`` messages (a CodeMirror ChangeSet, plus their ``client_id``), which spares this server
the upload of the whole text the classic design also has. It splices each change into the text,
clamped to it (there is no versioning: the last writer wins), and broadcasts
``{"type": "code_change", "user_id": ..., "seq": ..., "code": <whole text>}``.

    python bench/baselines/naive.py --port 8001

Served by uvicorn with its default settings, as such an app usually is.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


def apply(text: str, changes: list[Any]) -> str:
    """Splice a CodeMirror ChangeSet (JSON) into ``text``, clamped to it: no version checks."""
    position = 0
    pieces: list[str] = []
    for part in changes:
        if isinstance(part, int):
            pieces.append(text[position : position + part])
            position += part
        else:
            pieces.append("\n".join(part[1:]))
            position += part[0]
    pieces.append(text[position:])
    return "".join(pieces)


class ConnectionManager:
    def __init__(self) -> None:
        self.rooms: dict[str, list[WebSocket]] = {}
        self.texts: dict[str, str] = {}

    async def connect(self, room_id: str, websocket: WebSocket) -> None:
        await websocket.accept()
        self.rooms.setdefault(room_id, []).append(websocket)

    def disconnect(self, room_id: str, websocket: WebSocket) -> None:
        members = self.rooms.get(room_id, [])
        if websocket in members:
            members.remove(websocket)

    async def broadcast(self, room_id: str, message: str, sender: WebSocket) -> None:
        for connection in list(self.rooms.get(room_id, [])):
            if connection is not sender:
                try:
                    await connection.send_text(message)
                except Exception:  # a member that went away: forget it and go on
                    self.disconnect(room_id, connection)


manager = ConnectionManager()


@app.websocket("/ws/{room_id}")
async def room_socket(websocket: WebSocket, room_id: str) -> None:
    await manager.connect(room_id, websocket)
    try:
        while True:
            data = json.loads(await websocket.receive_text())
            if data.get("type") != "push":
                continue
            text = apply(manager.texts.get(room_id, ""), data["changes"])
            manager.texts[room_id] = text
            message = {"type": "code_change", "user_id": data.get("client_id"), "seq": data.get("seq"), "code": text}
            await manager.broadcast(room_id, json.dumps(message), websocket)
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(room_id, websocket)


def main() -> None:
    parser = argparse.ArgumentParser(description="The naive FastAPI baseline server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
