"""The bare baseline: the ``websockets`` library relaying frames with ``broadcast()``.

No application logic at all: every frame a client sends is written, as it is, to every other
connection on the same path. No parsing, no document, no queues; ``broadcast()`` writes
synchronously to each socket's buffer. It is the practical upper limit of a Python WebSocket
fan-out on the machine, and the yardstick the others are measured against.

    python bench/baselines/bare.py --port 8002

Compression is off, as it is in collab pad (the library would otherwise offer it), and it runs
on uvloop, as uvicorn runs the other two.
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


async def relay(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request is not None else "/"
    members = rooms.setdefault(path, set())
    members.add(websocket)
    try:
        async for message in websocket:
            broadcast([member for member in members if member is not websocket], message)
    finally:
        members.discard(websocket)
        if not members:
            del rooms[path]


async def serve_forever(host: str, port: int) -> None:
    async with serve(relay, host, port, compression=None, max_size=2**24) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="The bare websockets broadcast() relay.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    try:
        import uvloop  # the loop uvicorn picks for the other two servers, when installed
    except ImportError:
        asyncio.run(serve_forever(args.host, args.port))
    else:
        uvloop.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
