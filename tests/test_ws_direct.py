"""The fast path of `/ws` (`DirectWrites`, `WebSocketTransport.writer` and `read_directly`)
against a real uvicorn server, as ``app.py`` runs it, and its fallback to ASGI beside it."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from api.uvicorn_fast_path import CONNECTION_KEY, DirectWrites, FastPath, ServerOptions, fast_path, server_options
from api.ws import WebSocketTransport
from rooms.settings import Settings

seen: dict[str, Any] = {}
LONG = (125, 126, 65_535, 65_536, 300_000)


async def endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    if CONNECTION_KEY in websocket.scope:
        seen["connection"] = weakref.ref(websocket.scope[CONNECTION_KEY].connection)
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


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def reader(websocket: WebSocket) -> None:
    """Reads two messages through ``receive``, then the rest directly where it can, and records
    the order. With ``seen["pile_up"]``, lets the client's next messages wait in uvicorn's queue
    first, so that switching must receive those before it reads directly."""
    await websocket.accept()
    transport = WebSocketTransport(websocket)
    got: list[str | bytes] = []
    seen["got"] = got
    read: list[str | bytes] = [await websocket.receive_text(), await websocket.receive_text()]
    direct = transport.direct
    if direct is not None:
        if seen.get("pile_up"):
            await until(lambda: not direct.connection.queue.empty())
        while not transport.read_directly(got.append):
            message = await websocket.receive()
            read.append(message.get("text") or message.get("bytes") or b"")
    seen["queued"] = len(read)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            # Without the fast path, every message; with it, none: all of them come to `got`.
            read.append(message.get("text") or message.get("bytes") or b"")
    finally:
        transport.stop_reading_directly()
    seen["read"] = [*read, *got]
    seen["direct"] = len(got)
    seen["restored"] = direct is None or "send_receive_event_to_app" not in vars(direct.connection)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


EXPECTED: ServerOptions = server_options(Settings())


async def serve(decision: FastPath | None, deflate: bool = False, ws: str = "websockets-sansio") -> AsyncIterator[int]:
    """A uvicorn server of two test endpoints, wrapped in `DirectWrites` unless ``decision`` is None."""
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint), WebSocketRoute("/read", reader)])
    port = free_port()
    config = uvicorn.Config(
        app if decision is None else DirectWrites(app, decision, EXPECTED),
        host="127.0.0.1",
        port=port,
        ws=ws,
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
    async for port in serve(fast_path(True), deflate=request.param):
        yield port


@pytest.fixture(
    params=[
        None,
        fast_path(False),
        fast_path(True, uvicorn_version="0.0.1"),
        fast_path(True, websockets_version="1.0"),
    ],
    ids=["no-wrapper", "setting-off", "untested-uvicorn", "untested-websockets"],
)
async def plain_port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    async for port in serve(request.param):
        yield port


@pytest.fixture
async def legacy_ws_port() -> AsyncIterator[int]:
    """The fast path on, but uvicorn running another WebSocket implementation than sans-I/O."""
    async for port in serve(fast_path(True), ws="wsproto"):
        yield port


async def test_frames_written_directly_arrive_in_order_with_those_sent(direct_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{direct_port}/ws", max_size=None) as client:
        expected = ["one", "two é", *("x" * size for size in LONG), "three"]
        assert expected == [await client.recv() for _ in expected]
    await until(lambda: "after_close" in seen)
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
        await until(lambda: seen["connection"]() is None)
    finally:
        gc.enable()


async def test_without_the_fast_path_the_transport_falls_back_to_send(plain_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{plain_port}/ws") as client:
        assert "three" == await client.recv()
    await until(lambda: "after_close" in seen)
    assert {"writer": False, "after_close": False} == seen


async def test_without_the_fast_path_messages_are_received_through_asgi(plain_port: int) -> None:
    seen.clear()
    sent = [f"m{i}" for i in range(12)]
    async with websockets.connect(f"ws://127.0.0.1:{plain_port}/read") as client:
        for message in sent:
            await client.send(message)
    await until(lambda: "read" in seen)
    assert sent == seen["read"]
    assert 0 == seen["direct"]


async def test_another_websocket_implementation_falls_back_to_send(legacy_ws_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{legacy_ws_port}/ws") as client:
        assert "three" == await client.recv()
    await until(lambda: "after_close" in seen)
    assert {"writer": False, "after_close": False} == seen


async def test_direct_reads_come_in_order_after_what_was_queued(direct_port: int) -> None:
    seen.clear()
    seen["pile_up"] = True
    sent: list[str | bytes] = [f"m{i} é" for i in range(40)]
    sent[30] = b"binary \x00"
    async with websockets.connect(f"ws://127.0.0.1:{direct_port}/read") as client:
        for message in sent[:10]:
            await client.send(message)
        await until(lambda: "queued" in seen)  # the handler has switched: the rest is read directly
        for message in sent[10:]:
            await client.send(message)
        await until(lambda: len(seen["got"]) == 30)
    await until(lambda: "read" in seen)
    assert sent == seen["read"]
    assert seen["queued"] >= 2 and seen["direct"] == 30
    assert seen["restored"] is True


async def test_invalid_utf8_read_directly_closes_with_1007(direct_port: int) -> None:
    seen.clear()
    async with websockets.connect(f"ws://127.0.0.1:{direct_port}/read") as client:
        await client.send("one")
        await client.send("two")
        await until(lambda: "queued" in seen)
        # A text frame that is not UTF-8, written raw: the client library would refuse it.
        client.protocol.send_frame(websockets.frames.Frame(websockets.frames.Opcode.TEXT, b"\xff\xfe"))
        client.transport.write(b"".join(client.protocol.data_to_send()))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
