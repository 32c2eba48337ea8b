"""`DirectWrites` and `WebSocketTransport.writer` against a real uvicorn server, as ``app.py`` runs it."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from api.ws import CONNECTION_KEY, DirectWrites, WebSocketTransport

seen: dict[str, object] = {}
LONG = (125, 126, 65_535, 65_536, 300_000)


async def endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    if CONNECTION_KEY in websocket.scope:
        seen["connection"] = weakref.ref(websocket.scope[CONNECTION_KEY])
    transport = WebSocketTransport(websocket)
    write = transport.writer()
    seen["writer"] = write is not None
    if write is not None:
        write("one")
        write("two é")
        for size in LONG:  # each form of the frame's length field
            write("x" * size)
    await transport.send("three")
    await websocket.receive()  # the client's close
    seen["after_close"] = transport.writer() is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(wrap: bool, deflate: bool = False) -> AsyncIterator[int]:
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    port = free_port()
    config = uvicorn.Config(
        DirectWrites(app) if wrap else app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=deflate,
        log_config=None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn has a flag for this, not an event)
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


@pytest.fixture(params=[False, True], ids=["plain-frames", "compressed"])
async def direct_port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    async for port in serve(wrap=True, deflate=request.param):
        yield port


@pytest.fixture
async def plain_port() -> AsyncIterator[int]:
    async for port in serve(wrap=False):
        yield port


async def test_frames_written_directly_arrive_in_order_with_those_sent(direct_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{direct_port}/ws", max_size=None) as client:
        expected = ["one", "two é", *("x" * size for size in LONG), "three"]
        assert expected == [await client.recv() for _ in expected]
    await asyncio.sleep(0.1)
    assert {k: v for k, v in seen.items() if k != "connection"} == {"writer": True, "after_close": False}


async def test_a_closed_connection_is_freed_without_the_cycle_collector(direct_port: int) -> None:
    """Nothing of ours keeps a closed connection in a reference cycle: with many clients leaving
    at once, collecting such cycles stalled every room for a few hundred milliseconds."""
    seen.clear()
    gc.collect()
    gc.disable()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{direct_port}/ws", max_size=None) as client:
            for _ in range(len(LONG) + 3):
                await client.recv()
        for _ in range(50):
            await asyncio.sleep(0.02)
            if seen["connection"]() is None:  # type: ignore[operator]
                break
        assert seen["connection"]() is None  # type: ignore[operator]
    finally:
        gc.enable()


async def test_without_the_wrapper_the_transport_falls_back_to_send(plain_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{plain_port}/ws") as client:
        assert "three" == await client.recv()
    await asyncio.sleep(0.1)
    assert seen == {"writer": False, "after_close": False}
