"""Deadlines for a request: a connection that has not sent its request line and headers within
``REQUEST_HEADER_TIMEOUT_SECONDS``, or the body announced by those headers within
``REQUEST_BODY_TIMEOUT_SECONDS`` after them, is closed.

uvicorn has no such timeout: a client that opens connections and sends a header line now and
then holds each of them, and its memory, for as long as it likes (slowloris). Its keep-alive
timeout covers only the time between requests.

This reaches into uvicorn's httptools protocol class (its parser callbacks and ``transport``),
so it is used only with the uvicorn versions it was tested with (`TESTED_UVICORN_VERSIONS`).
With any other version, or without httptools, `http_protocol` returns ``"auto"`` (uvicorn's
own choice, no deadline) and logs a warning once: the per-address connection limits still
apply, and a reverse proxy with its own header timeout should stand in front (docs/operations.md).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog
import uvicorn

from api.edge import REFUSED_BODY_TIMEOUT, REFUSED_HEADER_TIMEOUT
from observability import metrics

log = structlog.get_logger("collab.http")

# Versions whose HttpToolsProtocol calls `connection_made`, `on_message_begin`,
# `on_headers_complete`, `on_message_complete`, `handle_websocket_upgrade` and `connection_lost`
# as this module expects (tests/test_abuse_edge.py).
TESTED_UVICORN_VERSIONS = frozenset({"0.54.0"})

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] installs httptools
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


def _with_deadline(base: type[Any], timeout: float, body_timeout: float) -> type[asyncio.Protocol]:
    class HeadDeadlineProtocol(base):  # type: ignore[misc]
        """uvicorn's protocol, closing a connection whose request head or body is late.

        The head's deadline runs from the connection's first byte, or from the first byte of the
        next request on a kept-alive connection, to the end of the headers: trickling header
        lines does not extend it. A WebSocket handshake ends its head like any request and has
        no body. The body's deadline runs from the end of the headers to the end of the body.
        """

        _head_deadline: asyncio.TimerHandle | None = None
        _body_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
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

        def _disarm_body_deadline(self) -> None:
            if self._body_deadline is not None:
                self._body_deadline.cancel()
                self._body_deadline = None

        def _too_late(self, reason: str) -> None:
            self._body_deadline = None
            if not self.transport.is_closing():
                metrics.REFUSED_CONNECTIONS.labels(reason).inc()
                self.transport.close()

        def _arm_head_deadline(self) -> None:
            self._head_deadline = self.loop.call_later(timeout, self._head_too_late)

        def _disarm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_late(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                metrics.REFUSED_CONNECTIONS.labels(REFUSED_HEADER_TIMEOUT).inc()
                self.transport.close()

    return HeadDeadlineProtocol


def http_protocol(
    timeout: float, body_timeout: float | None = None, version: str = uvicorn.__version__
) -> type[asyncio.Protocol] | Literal["auto"]:
    """What to pass as ``http=`` to ``uvicorn.Config``: a protocol with the head and body
    deadlines (the body's is the head's unless given), or ``"auto"`` (no deadline) where this
    uvicorn is not one it was tested with."""
    if HttpToolsProtocol is None or version not in TESTED_UVICORN_VERSIONS:
        log.warning(
            "request_header_timeout_unsupported",
            uvicorn=version,
            tested=sorted(TESTED_UVICORN_VERSIONS),
            hint="partial requests are not timed out; put a reverse proxy with a header timeout in front",
        )
        return "auto"
    return _with_deadline(HttpToolsProtocol, timeout, timeout if body_timeout is None else body_timeout)
