"""``/ws/{room_id}``: raw WebSocket clients of either protocol, fed into the room registry.

The first message decides the protocol: ``hello`` starts the versioned protocol; ``join`` (or
any other full-text message, which then joins as "Anonymous") starts the full-text protocol. A first frame
that is no valid message at all (not JSON, an unknown type, a malformed full-text message) joins as
"Anonymous" silently, as the original server did; a failed ``hello`` (or ``push``, ``cursor``,
``language``) is answered with a versioned ``error`` and the connection may say hello again.
Every other error is answered with an ``error`` message and the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from api.origins import is_loopback, origin_allowed
from observability import metrics
from rooms.errors import (
    InternalError,
    InvalidMessage,
    RateLimited,
    RoomError,
    RoomFull,
    ServerBusy,
    ServerStopping,
    StorageUnavailable,
)
from rooms.limits import ROOM_ID, TokenBucket
from rooms.protocol import (
    FULL_TEXT_ONLY,
    VERSIONED_ONLY,
    CodeChange,
    ErrorOut,
    Hello,
    Join,
    Leave,
    Ping,
    Pong,
    FullTextError,
    SyncRequest,
    parse_client_message,
)
from rooms.registry import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    RoomRegistry,
    Session,
)
from rooms.settings import Settings

router = APIRouter()
log = structlog.get_logger("collab.ws")


# The scope key under which `DirectWrites` leaves the server's connection for `/ws`.
CONNECTION_KEY = "collab.connection"


class DirectWrites:
    """The outermost ASGI layer: gives `/ws` handlers uvicorn's connection object.

    The fan-out then writes frames to it synchronously (`WebSocketTransport.writer`) instead of
    awaiting ``send`` through every middleware once per frame, which was about a quarter of the
    server's CPU at load; and a joined client's messages reach the room as they are parsed
    (`WebSocketTransport.read_directly`). Anything else, or another server, passes through
    untouched, and the transport falls back to ``send`` and ``receive``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            connection = getattr(send, "__self__", None)
            if isinstance(connection, WebSocketsSansIOProtocol):
                scope[CONNECTION_KEY] = connection
        try:
            await self.app(scope, receive, send)
        finally:
            # The connection holds the scope: a scope left holding the connection would keep a
            # closed connection, and all it refers to, until a full collection of the heap.
            scope.pop(CONNECTION_KEY, None)


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 section 5.2: FIN and the text opcode, then the unmasked payload length."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


class WebSocketTransport:
    """A Starlette WebSocket as a room `Transport`."""

    name = "websocket"

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.closing = False
        self.peer_gone = False
        self.connection: Any = websocket.scope.get(CONNECTION_KEY)
        self.reading_directly = False

    async def send(self, message: str) -> None:
        await self.websocket.send_text(message)

    def writer(self) -> Callable[[str], None] | None:
        """Write frames at once while uvicorn's connection is open and its buffer has room
        (see `DirectWrites`); None otherwise, and `send` waits as uvicorn's own send does."""
        connection = self.connection
        if (
            connection is None
            or self.closing
            or connection.close_sent
            or connection.disconnected
            or connection.conn.state is not State.OPEN
            or connection.transport.is_closing()
            or not connection.writable.is_set()
        ):
            return None
        return self._write

    def _write(self, message: str) -> None:
        # What uvicorn's `send` does for a `websocket.send` of text, less the awaits. A server's
        # frames are not masked: without compression a text frame is a header and the UTF-8.
        connection = self.connection
        payload = message.encode()
        if connection.conn.extensions:
            connection.conn.send_text(payload)
            connection.transport.write(b"".join(connection.conn.data_to_send()))
        else:
            connection.transport.write(_text_frame_header(len(payload)) + payload)

    def read_directly(self, on_message: Callable[[str | bytes], None]) -> bool:
        """From now on, have uvicorn's connection hand each message to ``on_message`` as soon as
        it is parsed; True once it does.

        uvicorn queues each message for ``receive``, pauses reading the socket until the handler
        has taken it, and resumes: a queue, a task switch and two changes to the event loop's
        poller for every message. Direct reads skip all of it, in the same order. False while
        messages wait in that queue (``receive`` them first, then ask again) and when there is no
        connection to read from (another server: ``receive`` as usual). ``receive`` still returns
        the disconnect. Undo with `stop_reading_directly`.
        """
        connection = self.connection
        if self.reading_directly or connection is None or connection.close_sent or not connection.queue.empty():
            return self.reading_directly

        def deliver() -> None:
            # uvicorn's `send_receive_event_to_app` for this connection, less the queue and pause.
            frames = connection.frames
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            connection.frames = []
            if connection.close_sent:
                return  # closing: the peer's close reply is all that is read now
            if connection.curr_msg_data_type != "text":
                on_message(bytes(data))
                return
            try:
                text = data.decode()
            except UnicodeDecodeError:
                connection.logger.info("Invalid UTF-8 sequence received from client.")
                connection.conn.send_close(1007)
                connection.handle_parser_exception()
                return
            on_message(text)

        connection.send_receive_event_to_app = deliver
        if connection.read_paused:
            connection.read_paused = False
            connection.transport.resume_reading()
        self.reading_directly = True
        return True

    def stop_reading_directly(self) -> None:
        """Messages go to uvicorn's queue again (and the connection no longer holds ours)."""
        if self.reading_directly:
            self.reading_directly = False
            with contextlib.suppress(AttributeError):
                del self.connection.send_receive_event_to_app

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        # Idempotent: the registry (a drop, a shutdown) and the handler's `finally` may both
        # close; the first one's code is the one the client sees.
        if self.closing or self.peer_gone or self.websocket.application_state is WebSocketState.DISCONNECTED:
            return
        self.closing = True
        with contextlib.suppress(Exception):  # the peer may vanish while we say goodbye
            await self.websocket.close(code, reason)


class _Disconnected(Exception):
    pass


async def _receive(websocket: WebSocket) -> str | bytes:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise _Disconnected
    text: str | None = message.get("text")
    if text is not None:
        return text
    data: bytes = message.get("bytes") or b""
    return data


def _address(websocket: WebSocket) -> str:
    """The client's address: the peer of the socket, or the client a trusted proxy forwarded
    for (uvicorn rewrites the scope only for ``FORWARDED_ALLOW_IPS``)."""
    client = websocket.client
    return client.host if client is not None and client.host else ""


def _pre_join_error(error: RoomError, message_type: str | None) -> str:
    """An error before the client has joined, in the format of the protocol it is trying.

    A frame whose type only the versioned protocol has (``hello``, ``push``...) is answered
    with ``code`` and ``message``; anything else, as a full-text client expects, with ``message``.
    """
    if message_type in VERSIONED_ONLY:
        return ErrorOut.of(error).encode()
    return FullTextError(message=str(error)).encode()


@router.websocket("/ws/{room_id}")
async def room_socket(websocket: WebSocket, room_id: str) -> None:
    registry: RoomRegistry = websocket.app.state.registry
    settings: Settings = websocket.app.state.settings
    if not origin_allowed(
        websocket.headers.get("origin"),
        websocket.headers.get("host"),
        settings.allowed_origins,
        loopback_only=is_loopback(settings.host),
    ):
        log.info("origin_refused", room_id=room_id)
        await websocket.close(CLOSE_POLICY, "origin not allowed")  # before accept: HTTP 403
        return
    transport = WebSocketTransport(websocket)
    session: Session | None = None
    try:
        await websocket.accept()
        if not ROOM_ID.fullmatch(room_id):
            # No message yet, so no protocol: this one reply carries both formats' fields.
            error = InvalidMessage("room id must be 1 to 64 letters, digits, '-' or '_'")
            await websocket.send_text(ErrorOut.of(error).encode())
            await transport.close(CLOSE_POLICY, "invalid room id")
            return
        if not registry.accepting:
            await transport.close(CLOSE_SERVICE_RESTART, "server restarting")
            return
        structlog.contextvars.bind_contextvars(room_id=room_id)
        session = await _join(websocket, registry, settings, room_id, transport)
        if session is None:
            return
        structlog.contextvars.bind_contextvars(user_id=session.user_id)
        joined = session

        def on_message(message: str | bytes) -> None:
            registry.receive(joined, message)

        while not session.closed:
            # Once what was queued before the join is read, messages come straight to the room.
            transport.read_directly(on_message)
            registry.receive(session, await _receive(websocket))
    except (_Disconnected, WebSocketDisconnect, OSError):
        # OSError: uvicorn's ClientDisconnected, when the peer vanished during a send.
        transport.peer_gone = True
    finally:
        transport.stop_reading_directly()
        if session is not None:
            registry.leave(session)
            await transport.close(session.close_code, session.close_reason)
        structlog.contextvars.unbind_contextvars("room_id", "user_id")


async def _join(
    websocket: WebSocket, registry: RoomRegistry, settings: Settings, room_id: str, transport: WebSocketTransport
) -> Session | None:
    """Wait for the first valid message and admit the client in the protocol it speaks."""
    deadline = asyncio.get_running_loop().time() + settings.join_timeout_seconds
    bucket = TokenBucket.full(settings.rate_limit_per_second, settings.rate_limit_burst, time.monotonic())
    last_rate_error = float("-inf")
    address = _address(websocket)
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                raw = await _receive(websocket)
        except TimeoutError:
            await transport.close(CLOSE_POLICY, "send join or hello first")
            return None
        message_type: str | None = None
        try:
            try:
                bucket.take(time.monotonic())
            except RateLimited:
                metrics.RATE_LIMITED.inc()
                raise
            registry.charge_address(address)
            try:
                message = parse_client_message(raw, settings.frame_limit_bytes)
            except RoomError as invalid:
                # The parser names the type whenever the frame was a JSON object with one.
                message_type = invalid.message_type
                if message_type in VERSIONED_ONLY:
                    raise
                # Not a message at all, or a broken join: the original server joined such a client
                # as "Anonymous" without a word, and its clients rely on that.
                session = await registry.join_full_text(room_id, transport, None, address=address)
                if message_type in FULL_TEXT_ONLY and message_type != "join":
                    # A full-text message that fails (a code_change over the size limit): joined as
                    # well, and told why its edit was refused rather than left to believe it sent.
                    registry.receive(session, raw)
                return session
            message_type = message.type
            if message.type in ("hello", "join"):
                metrics.message_counter("in", message.type).inc()
            match message:
                case Hello():
                    return await registry.join_versioned(room_id, transport, message, address=address)
                case Join():
                    return await registry.join_full_text(room_id, transport, message.username, address=address)
                case Leave():
                    await transport.close(CLOSE_NORMAL, "left")
                    return None
                case CodeChange() | SyncRequest() | Ping() | Pong():
                    # A full-text client that skipped join: admit it as "Anonymous", then serve it.
                    session = await registry.join_full_text(room_id, transport, None, address=address)
                    registry.receive(session, message)
                    return session
                case _:
                    raise InvalidMessage(f"send hello (or join) before {message.type}")
        except Exception as exc:
            error = exc if isinstance(exc, RoomError) else InternalError()
            if not isinstance(exc, RoomError):
                log.exception("join_failed")
            metrics.REJECTED.labels(error.code).inc()
            if isinstance(error, RateLimited) and time.monotonic() - last_rate_error < 1.0:
                continue  # a flood before joining gets one reply a second
            if isinstance(error, RateLimited):
                last_rate_error = time.monotonic()
            await websocket.send_text(_pre_join_error(error, message_type or error.message_type))
            if isinstance(error, RoomFull):
                await transport.close(CLOSE_TRY_AGAIN_LATER, "room is full")
                return None
            if isinstance(error, ServerBusy):
                await transport.close(CLOSE_TRY_AGAIN_LATER, "server busy")
                return None
            if isinstance(error, StorageUnavailable):
                await transport.close(CLOSE_TRY_AGAIN_LATER, "storage unavailable")
                return None
            if isinstance(error, ServerStopping):
                await transport.close(CLOSE_SERVICE_RESTART, "server restarting")
                return None
