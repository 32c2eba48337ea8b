"""`DirectWrites`, `WebSocketTransport.writer` and `read_directly` against a real uvicorn server,
as ``app.py`` runs it."""

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


async def reader(websocket: WebSocket) -> None:
    """Reads two messages through ``receive``, then the rest directly, and echoes the order."""
    await websocket.accept()
    transport = WebSocketTransport(websocket)
    got: list[str | bytes] = []
    read = [await websocket.receive_text(), await websocket.receive_text()]
    await asyncio.sleep(0.2)  # the client's next messages wait in uvicorn's queue meanwhile
    while not transport.read_directly(got.append):
        message = await websocket.receive()
        read.append(message.get("text") or message.get("bytes") or b"")
    seen["queued"] = len(read)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            read.append(message.get("text") or b"")  # never: everything now comes to `got`
    finally:
        transport.stop_reading_directly()
    seen["read"] = [*read, *got]
    seen["direct"] = len(got)
    seen["restored"] = "send_receive_event_to_app" not in vars(websocket.scope.get(CONNECTION_KEY, transport))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(wrap: bool, deflate: bool = False) -> AsyncIterator[int]:
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint), WebSocketRoute("/read", reader)])
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


async def test_direct_reads_come_in_order_after_what_was_queued(direct_port: int) -> None:
    seen.clear()
    sent: list[str | bytes] = [f"m{i} é" for i in range(40)]
    sent[30] = b"binary \x00"
    async with websockets.connect(f"ws://127.0.0.1:{direct_port}/read") as client:
        for message in sent[:10]:
            await client.send(message)
        await asyncio.sleep(0.5)  # the handler has switched: the rest is read directly
        for message in sent[10:]:
            await client.send(message)
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.2)
    assert seen["read"] == sent
    assert seen["queued"] >= 2 and seen["direct"] == 30
    assert seen["restored"] is True


async def test_invalid_utf8_read_directly_closes_with_1007(direct_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{direct_port}/read") as client:
        await client.send("one")
        await client.send("two")
        await asyncio.sleep(0.5)
        # A text frame that is not UTF-8, written raw: the client library would refuse it.
        client.protocol.send_frame(websockets.frames.Frame(websockets.frames.Opcode.TEXT, b"\xff\xfe"))
        client.transport.write(b"".join(client.protocol.data_to_send()))  # type: ignore[attr-defined]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
