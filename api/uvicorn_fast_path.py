"""Where collab pad reaches past uvicorn's public interface, and the only such place.

Three things buy real speed or safety this way:

* **Direct frame I/O on ``/ws``** (`DirectWrites`, `DirectConnection`). The room fan-out writes
  frames to uvicorn's connection synchronously instead of awaiting ASGI ``send`` through every
  middleware once per frame (about a quarter of the server's CPU at load), and a joined client's
  messages reach its room as they are parsed instead of through uvicorn's queue, a task switch
  and a pause and resume of the socket per message. Together they took the p99 edit latency at
  500 clients from about 250 ms to about 30 ms (bench/load.py).
* **Request deadlines** (`http_protocol`): uvicorn has no timeout for a request head that
  trickles in (slowloris); a subclass of its httptools protocol adds one.
* **A check of the server at start** (`report_server`): `python app.py` passes uvicorn options
  (`server_options`) that ``uvicorn app:app`` does not; each one missing is logged as a warning.

Each touches attributes uvicorn does not document, typed here against `SansIOConnection` (or
uvicorn's own annotations) so that ``mypy --strict`` reports a change, and each is used only
with the versions it was tested with (`TESTED_UVICORN_VERSIONS`, `TESTED_WEBSOCKETS_VERSIONS`).
Anything else (another version, another server, another WebSocket implementation,
``FAST_PATH=false``) serves ``/ws`` through the public ASGI ``send`` and ``receive``, and says
so once at start. The request deadlines are a defence, not a speed-up: ``FAST_PATH`` leaves
them on, and only an untested uvicorn version turns them off (also said at start).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

import structlog
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.protocol import State
from websockets.server import ServerProtocol

from api.edge import REFUSED_BODY_TIMEOUT, REFUSED_HEADER_TIMEOUT
from observability import metrics
from rooms.settings import Settings

log = structlog.get_logger("collab.server")

# Versions whose `WebSocketsSansIOProtocol` has the attributes of `SansIOConnection` with the
# meaning `DirectConnection` relies on, and whose `HttpToolsProtocol` calls the parser callbacks
# the head deadline overrides in the order it expects (tests/test_ws_direct.py,
# tests/test_abuse_edge.py). Matching the pins in pyproject.toml.
TESTED_UVICORN_VERSIONS = frozenset({"0.54.0"})
TESTED_WEBSOCKETS_VERSIONS = frozenset({"17.4"})

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - a uvicorn without it is not a tested one
    WebSocketsSansIOProtocol = None  # type: ignore[assignment, misc]
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] installs httptools
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


# The switch


@dataclass(frozen=True, slots=True)
class FastPath:
    """Whether ``/ws`` may use uvicorn's connection directly; if not, why not."""

    enabled: bool
    reason: str = ""
    # Off by the operator's choice: said at info level, not as a warning.
    chosen: bool = False


def fast_path(
    setting: bool,
    uvicorn_version: str = uvicorn.__version__,
    websockets_version: str = importlib.metadata.version("websockets"),
) -> FastPath:
    """The fast path's switch: on only when ``FAST_PATH`` is and both versions are tested ones."""
    if not setting:
        return FastPath(enabled=False, reason="FAST_PATH is false", chosen=True)
    if uvicorn_version not in TESTED_UVICORN_VERSIONS or WebSocketsSansIOProtocol is None:
        return FastPath(enabled=False, reason=f"uvicorn {uvicorn_version} is not a tested version")
    if websockets_version not in TESTED_WEBSOCKETS_VERSIONS:
        return FastPath(enabled=False, reason=f"websockets {websockets_version} is not a tested version")
    return FastPath(enabled=True)


# Direct frame I/O on `/ws`


class SansIOConnection(Protocol):
    """All that the fast path uses of uvicorn's `WebSocketsSansIOProtocol` (one per connection).

    ``conn`` is websockets' sans-I/O `ServerProtocol`, of which only its public API is used.
    """

    @property
    def close_sent(self) -> bool: ...
    @property
    def disconnected(self) -> bool: ...
    @property
    def conn(self) -> ServerProtocol: ...
    @property
    def transport(self) -> asyncio.Transport: ...
    @property
    def writable(self) -> asyncio.Event: ...
    @property
    def queue(self) -> asyncio.Queue[Any]: ...
    @property
    def curr_msg_data_type(self) -> Literal["text", "bytes"]: ...
    @property
    def logger(self) -> logging.Logger: ...

    frames: list[bytes]
    read_paused: bool

    def handle_parser_exception(self) -> None: ...
    def send_receive_event_to_app(self) -> None: ...


def _sans_io_connection(connection: WebSocketsSansIOProtocol) -> SansIOConnection:
    return connection  # where mypy checks that uvicorn's class still has all of the above


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 section 5.2: FIN and the text opcode, then the unmasked payload length."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


class DirectConnection:
    """uvicorn's connection of one ``/ws`` client, written and read without ASGI's awaits."""

    def __init__(self, connection: SansIOConnection) -> None:
        self.connection = connection
        self.reading_directly = False

    def writer(self) -> Callable[[str], None] | None:
        """A function writing text frames at once while the connection is open and its buffer
        has room; None otherwise (then ASGI ``send`` waits, as uvicorn's own send does)."""
        connection = self.connection
        if (
            connection.close_sent
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
        """From now on, hand each message to ``on_message`` as soon as it is parsed; True once so.

        False while messages wait in uvicorn's queue (``receive`` them first, then ask again):
        switching then would reorder them. ``receive`` still returns the disconnect. Undo with
        `stop_reading_directly`.
        """
        connection = self.connection
        if self.reading_directly or connection.close_sent or not connection.queue.empty():
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
                # RFC 6455 section 8.1: a text message that is not UTF-8 fails the connection (1007).
                connection.logger.info("Invalid UTF-8 sequence received from client.")
                connection.conn.send_close(1007)
                connection.handle_parser_exception()
                return
            on_message(text)

        # An attribute of this one connection, shadowing the class's method until deleted.
        connection.send_receive_event_to_app = deliver  # type: ignore[method-assign]
        if connection.read_paused:
            connection.read_paused = False
            connection.transport.resume_reading()
        self.reading_directly = True
        return True

    def stop_reading_directly(self) -> None:
        """Messages go to uvicorn's queue again, and the connection no longer holds ours (which
        would keep both in a reference cycle until a full collection)."""
        if self.reading_directly:
            self.reading_directly = False
            vars(self.connection).pop("send_receive_event_to_app", None)


# The scope key under which `DirectWrites` leaves a `/ws` handler its `DirectConnection`.
CONNECTION_KEY = "collab.direct_connection"


def direct_connection(scope: Scope) -> DirectConnection | None:
    """The connection to write and read directly, or None: use ASGI ``send`` and ``receive``."""
    found = scope.get(CONNECTION_KEY)
    return found if isinstance(found, DirectConnection) else None


class DirectWrites:
    """The app's outermost ASGI layer: it alone sees what uvicorn passes in.

    For a WebSocket, uvicorn's ``send`` is a method of its connection: when the fast path is on
    and that is a `WebSocketsSansIOProtocol`, the handler finds a `DirectConnection` in its
    scope (`direct_connection`). For the lifespan, ``receive`` belongs to uvicorn's lifespan
    runner, which holds the server's `uvicorn.Config`: `report_server` says at start what is
    missing. Anything else, or another server, passes through untouched.
    """

    def __init__(self, app: ASGIApp, decision: FastPath, expected: ServerOptions) -> None:
        self.app = app
        self.decision = decision
        self.expected = expected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            report_server(_server_config(receive), self.decision, self.expected)
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and self.decision.enabled:
            connection = getattr(send, "__self__", None)
            if isinstance(connection, WebSocketsSansIOProtocol):
                scope[CONNECTION_KEY] = DirectConnection(_sans_io_connection(connection))
        try:
            await self.app(scope, receive, send)
        finally:
            # The connection holds the scope: a scope left holding the connection would keep a
            # closed connection, and all it refers to, until a full collection of the heap.
            scope.pop(CONNECTION_KEY, None)


# Request deadlines


@functools.cache
def _with_deadlines(head_timeout: float, body_timeout: float) -> type[asyncio.Protocol]:
    class HeadDeadlineProtocol(HttpToolsProtocol):
        """uvicorn's protocol, closing a connection whose request head or body is late.

        The head's deadline runs from the connection's first byte, or from the first byte of the
        next request on a kept-alive connection, to the end of the headers: trickling header
        lines does not extend it. A WebSocket handshake ends its head like any request and has
        no body. The body's deadline runs from the end of the headers to the end of the body.
        """

        _head_deadline: asyncio.TimerHandle | None = None
        _body_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_deadline is None:
                self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            super().on_headers_complete()
            # An upgrade may announce a body too, read before the connection is handed over.
            self._body_deadline = self.loop.call_later(body_timeout, self._too_late, REFUSED_BODY_TIMEOUT)

        def handle_websocket_upgrade(self) -> None:
            self._disarm_body_deadline()
            super().handle_websocket_upgrade()

        def on_message_complete(self) -> None:
            self._disarm_body_deadline()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            self._disarm_body_deadline()
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            self._head_deadline = self.loop.call_later(head_timeout, self._head_too_late)

        def _disarm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _disarm_body_deadline(self) -> None:
            if self._body_deadline is not None:
                self._body_deadline.cancel()
                self._body_deadline = None

        def _head_too_late(self) -> None:
            self._head_deadline = None
            self._close(REFUSED_HEADER_TIMEOUT)

        def _too_late(self, reason: str) -> None:
            self._body_deadline = None
            self._close(reason)

        def _close(self, reason: str) -> None:
            if not self.transport.is_closing():
                metrics.REFUSED_CONNECTIONS.labels(reason).inc()
                self.transport.close()

    return HeadDeadlineProtocol


def http_protocol(
    head_timeout: float, body_timeout: float | None = None, uvicorn_version: str = uvicorn.__version__
) -> type[asyncio.Protocol] | Literal["auto"]:
    """What to pass as ``http=`` to ``uvicorn.Config``: a protocol with the head and body
    deadlines (the body's is the head's unless given), or ``"auto"`` (uvicorn's own choice, no
    deadline) where this uvicorn is not a tested one. The same class for the same deadlines."""
    if HttpToolsProtocol is None or uvicorn_version not in TESTED_UVICORN_VERSIONS:
        return "auto"
    return _with_deadlines(head_timeout, head_timeout if body_timeout is None else body_timeout)


# How the server was started


class ServerOptions(TypedDict):
    """The `uvicorn.Config` options `python app.py` serves with, besides host and port."""

    http: type[asyncio.Protocol] | Literal["auto"]
    proxy_headers: bool
    forwarded_allow_ips: list[str] | None
    ws: Literal["websockets-sansio"]
    ws_max_size: int
    ws_per_message_deflate: bool
    ws_ping_interval: float
    ws_ping_timeout: float
    timeout_graceful_shutdown: int


def server_options(settings: Settings, uvicorn_version: str = uvicorn.__version__) -> ServerOptions:
    return ServerOptions(
        # The request head must arrive within REQUEST_HEADER_TIMEOUT_SECONDS, the body within
        # REQUEST_BODY_TIMEOUT_SECONDS.
        http=http_protocol(
            settings.request_header_timeout_seconds, settings.request_body_timeout_seconds, uvicorn_version
        ),
        # A client address from X-Forwarded-For only from the proxies listed: uvicorn's default
        # trusts 127.0.0.1, and any local process could then pick its address at will.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        # The sans-I/O websockets implementation applies back-pressure on send (wsproto buffers
        # without limit), which is what lets the registry spot and drop a slow client; it costs
        # less CPU per frame than the legacy one (p99 35 ms against 70 ms at 500 clients); and
        # it is the one the fast path knows.
        ws="websockets-sansio",
        ws_max_size=settings.frame_limit_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        # Protocol-level pings find dead sockets of every client, full-text clients included.
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        # Half of the stop's deadline for connections to close; the lifespan's flush of the
        # store has the other half (`RoomRegistry.stop`).
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_seconds / 2)),
    )


def _server_config(receive: Receive) -> uvicorn.Config | None:
    """The config of the uvicorn serving this lifespan, or None (another server)."""
    config = getattr(getattr(receive, "__self__", None), "config", None)
    return config if isinstance(config, uvicorn.Config) else None


def _shown(value: object) -> object:
    return value.__name__ if isinstance(value, type) else value


def _trusted(ips: list[str] | str) -> list[str]:
    items = ips.split(",") if isinstance(ips, str) else ips
    return sorted(item.strip().lower() for item in items if item.strip())


def server_differences(config: uvicorn.Config, expected: ServerOptions) -> dict[str, dict[str, object]]:
    """The options of a loaded `uvicorn.Config` that differ from ``expected``, by name, with
    both values (a protocol class by its name)."""
    ws_class = config.ws_protocol_class
    sans_io = isinstance(ws_class, type) and issubclass(ws_class, WebSocketsSansIOProtocol)
    wanted_ips = _trusted(expected["forwarded_allow_ips"] or []) if expected["proxy_headers"] else None
    pairs: dict[str, tuple[object, object]] = {
        "ws": (expected["ws"], expected["ws"] if sans_io else _shown(ws_class)),
        "proxy_headers": (expected["proxy_headers"], config.proxy_headers),
        "forwarded_allow_ips": (wanted_ips, _trusted(config.forwarded_allow_ips) if config.proxy_headers else None),
        "ws_max_size": (expected["ws_max_size"], config.ws_max_size),
        "ws_per_message_deflate": (expected["ws_per_message_deflate"], config.ws_per_message_deflate),
        "ws_ping_interval": (expected["ws_ping_interval"], config.ws_ping_interval),
        "ws_ping_timeout": (expected["ws_ping_timeout"], config.ws_ping_timeout),
        "timeout_graceful_shutdown": (expected["timeout_graceful_shutdown"], config.timeout_graceful_shutdown),
    }
    if expected["http"] != "auto":  # "auto": no deadline to be had from this uvicorn anyway
        pairs["http"] = (_shown(expected["http"]), _shown(config.http_protocol_class))
    return {
        name: {"expected": wanted, "actual": actual} for name, (wanted, actual) in pairs.items() if wanted != actual
    }


def report_server(
    config: uvicorn.Config | None,
    decision: FastPath,
    expected: ServerOptions,
    uvicorn_version: str = uvicorn.__version__,
) -> None:
    """Log, once at start, what this server lacks of what `python app.py` sets up.

    ``config`` is None under another server than uvicorn (or a test client): nothing of this
    module applies then, and ``/ws`` uses the ASGI interface alone. The options of an untested
    uvicorn are not compared: its config may not have the attributes read here.
    """
    tested = uvicorn_version in TESTED_UVICORN_VERSIONS
    differences = server_differences(config, expected) if config is not None and tested else {}
    if decision.enabled and config is None:
        decision = FastPath(enabled=False, reason="not served by uvicorn")
    elif decision.enabled and "ws" in differences:
        implementation = differences["ws"]["actual"]
        decision = FastPath(enabled=False, reason=f"uvicorn's WebSocket implementation is {implementation}")
    if decision.enabled:
        versions = {"uvicorn": uvicorn.__version__, "websockets": importlib.metadata.version("websockets")}
        log.info("fast_path", enabled=True, **versions)
    else:
        report = log.info if decision.chosen else log.warning
        report("fast_path", enabled=False, reason=decision.reason, fallback="ASGI send and receive")
    if config is None:
        return
    if expected["http"] == "auto":
        log.warning(
            "request_header_timeout_unsupported",
            uvicorn=uvicorn_version,
            tested=sorted(TESTED_UVICORN_VERSIONS),
            hint="partial requests are not timed out; put a reverse proxy with a header timeout in front",
        )
    if differences:
        log.warning(
            "server_options_differ",
            options=differences,
            hint="deploy with `python app.py`, which sets these (docs/operations.md)",
        )
