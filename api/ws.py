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
import time
from collections.abc import Callable

import structlog
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.origins import is_loopback, origin_allowed
from api.uvicorn_fast_path import direct_connection
from observability import metrics
from rooms.errors import (
    Forbidden,
    InternalError,
    InvalidMessage,
    RateLimited,
    RoomError,
    RoomFull,
    ServerBusy,
    ServerStopping,
    StorageUnavailable,
)
from rooms.limits import ROOM_ID, MessageLimit, TokenBucket
from rooms.protocol import (
    FULL_TEXT_ONLY,
    VERSIONED_ONLY,
    CodeChange,
    ErrorOut,
    FullTextError,
    Hello,
    Join,
    Leave,
    Ping,
    Pong,
    SyncRequest,
    parse_client_message,
)
from rooms.registry import RoomRegistry
from rooms.session import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER, Session
from rooms.settings import Settings

router = APIRouter()
log = structlog.get_logger("collab.ws")


class WebSocketTransport:
    """A Starlette WebSocket as a room `Transport`: frames written and messages read straight
    through uvicorn's connection where the fast path gives one (`api.uvicorn_fast_path`), through
    ASGI ``send`` and ``receive`` otherwise."""

    name = "websocket"

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.closing = False
        self.peer_gone = False
        self.direct = direct_connection(websocket.scope)

    async def send(self, message: str) -> None:
        await self.websocket.send_text(message)

    def writer(self) -> Callable[[str], None] | None:
        """A function writing frames at once, while that is possible; None otherwise, and `send`
        waits as the server's own send does."""
        if self.direct is None or self.closing:
            return None
        return self.direct.writer()

    def read_directly(self, on_message: Callable[[str | bytes], None]) -> bool:
        """From now on, hand each message to ``on_message`` as soon as it is parsed; True once so.

        False while messages wait to be received (``receive`` them first, then ask again) and
        without the fast path (``receive`` as usual). ``receive`` still returns the disconnect.
        Undo with `stop_reading_directly`.
        """
        return self.direct is not None and self.direct.read_directly(on_message)

    def stop_reading_directly(self) -> None:
        if self.direct is not None:
            self.direct.stop_reading_directly()

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
    limit = MessageLimit(TokenBucket.full(settings.rate_limit_per_second, settings.rate_limit_burst, time.monotonic()))
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
                limit.charge(time.monotonic())
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
            if not limit.reply_due(error, time.monotonic()):
                continue  # a flood before joining gets one reply a second
            await websocket.send_text(_pre_join_error(error, message_type or error.message_type))
            if isinstance(error, Forbidden) and (message_type or error.message_type) not in VERSIONED_ONLY:
                # A full-text client has no credential to try next: a private room is closed to it.
                await transport.close(CLOSE_POLICY, "forbidden")
                return None
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
