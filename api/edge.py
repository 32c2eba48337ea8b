"""The HTTP edge: what every request and WebSocket passes before the application sees it.

Three pure ASGI layers, outermost first (`install` adds them in this order):

- `SecurityHeaders`: a Content-Security-Policy and its companions on every HTTP response.
- `HostCheck`: the ``Host`` header must name this server (DNS rebinding: a page whose own name
  resolves to 127.0.0.1 would otherwise read the API and join rooms as a same-origin page).
- `ConnectionLimits`: open WebSockets (``/ws`` and NiceGUI's socket.io) per client address and
  in total; one more is refused before its handshake is accepted.

Refusals happen before ``websocket.accept``: uvicorn answers the handshake with the status
given (``websocket.http.response``), or 403 where a server lacks that extension.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.origins import LOOPBACK_NAMES, is_loopback
from observability import metrics
from rooms.limits import address_key
from rooms.settings import Settings

# NiceGUI renders Vue templates in the browser (`new Function`) and puts its start-up code in
# inline scripts, so scripts need 'unsafe-inline' and 'unsafe-eval'; everything else is as
# strict as the pages allow. The WebSocket (`connect-src`) goes back to the page's own host.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    # Room links are capabilities: a link followed from a room must not carry it to another site.
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),  # frame-ancestors, for browsers that predate it
)

# `collab_refused_connections_total` reasons; every one is exported from the start, at 0.
REFUSED_PER_ADDRESS = "per_address"
REFUSED_TOTAL = "total"
REFUSED_HOST = "host"
REFUSED_HEADER_TIMEOUT = "header_timeout"
REFUSED_BODY_TIMEOUT = "body_timeout"
for _reason in (REFUSED_PER_ADDRESS, REFUSED_TOTAL, REFUSED_HOST, REFUSED_HEADER_TIMEOUT, REFUSED_BODY_TIMEOUT):
    metrics.REFUSED_CONNECTIONS.labels(_reason)

# Seconds a refused WebSocket client is asked to wait before it tries again.
RETRY_AFTER_SECONDS = 5


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(header for header in SECURITY_HEADERS if header[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def host_name(host: str) -> str:
    """The name in a ``Host`` header: no port, no IPv6 brackets, lowercase, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host: str | None, patterns: Sequence[str]) -> bool:
    """Whether ``host`` (a ``Host`` header) matches one of ``patterns``.

    A pattern is a name, ``*.example.com`` (any name below example.com, not example.com
    itself) or ``*`` (any).
    """
    if "*" in patterns:
        return True
    name = host_name(host or "")
    if not name:
        return False
    for pattern in patterns:
        pattern = host_name(pattern) if not pattern.startswith("*.") else pattern.lower()
        if (pattern.startswith("*.") and name.endswith(pattern[1:])) or name == pattern:
            return True
    return False


def allowed_hosts(settings: Settings) -> list[str]:
    """``ALLOWED_HOSTS``, or its default: loopback names on a loopback ``HOST``, else any."""
    if settings.allowed_hosts:
        return list(settings.allowed_hosts)
    if is_loopback(settings.host):
        return sorted({*LOOPBACK_NAMES, host_name(settings.host)})
    return ["*"]


async def refuse_websocket(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """Answers a WebSocket handshake with ``status`` instead of accepting it."""
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"error": "refused", "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 503:
            headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # a 403 to the handshake


class HostCheck:
    """Refuses requests whose ``Host`` is not allowed: HTTP with 400, WebSockets with 403."""

    def __init__(self, app: ASGIApp, patterns: Iterable[str]) -> None:
        self.app = app
        self.patterns = tuple(patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.patterns:
            await self.app(scope, receive, send)
            return
        hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
        host = hosts[0] if hosts else None
        # Two Host headers are refused (RFC 9112 section 3.2): a proxy may read the other one.
        if len(hosts) == 1 and host_allowed(host, self.patterns):
            await self.app(scope, receive, send)
            return
        metrics.REFUSED_CONNECTIONS.labels(REFUSED_HOST).inc()
        message = f"this server does not answer to the host {(host or '')[:100]!r}; see ALLOWED_HOSTS"
        if scope["type"] == "websocket":
            await refuse_websocket(scope, receive, send, 403, message)
            return
        body = json.dumps({"error": "host_not_allowed", "message": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ConnectionLimits:
    """At most ``per_address`` open WebSockets per client address and ``total`` in all.

    A connection counts from its handshake until its ASGI call ends, refused ones not at all.
    The count per address is a dict of the addresses holding a connection now: its size is
    bounded by ``total``. Long-polling socket.io requests are plain HTTP and are not counted.
    """

    def __init__(self, app: ASGIApp, per_address: int, total: int) -> None:
        self.app = app
        self.per_address = per_address
        self.total = total
        self.open = 0
        self.by_address: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = address_key(client[0]) if client else ""
        held = self.by_address.get(address, 0)
        if self.open >= self.total:
            metrics.REFUSED_CONNECTIONS.labels(REFUSED_TOTAL).inc()
            await refuse_websocket(scope, receive, send, 503, "the server is at its connection limit; try again later")
            return
        if held >= self.per_address:
            metrics.REFUSED_CONNECTIONS.labels(REFUSED_PER_ADDRESS).inc()
            await refuse_websocket(
                scope, receive, send, 503, f"too many connections from your address (at most {self.per_address})"
            )
            return
        self.open += 1
        self.by_address[address] = held + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            remaining = self.by_address[address] - 1
            if remaining:
                self.by_address[address] = remaining
            else:
                del self.by_address[address]


def install(application: FastAPI, settings: Settings) -> None:
    """Wraps the whole application (pages, API, ``/ws``, ``/metrics``, socket.io) in the edge."""
    # Starlette puts the last one added outermost.
    application.add_middleware(
        ConnectionLimits, per_address=settings.max_connections_per_address, total=settings.max_connections
    )
    application.add_middleware(HostCheck, patterns=allowed_hosts(settings))
    application.add_middleware(SecurityHeaders)
