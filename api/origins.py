"""The ``Origin`` check for browser WebSocket handshakes.

Browsers send ``Origin`` on every WebSocket handshake and let any page open a socket to any
host, so without this check a page on another site could join rooms in its visitors' names
(cross-site WebSocket hijacking). Non-browser clients send no ``Origin`` and are let through.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    return host.strip("[]").lower() in LOOPBACK_NAMES or host.startswith("127.")


def origin_allowed(
    origin: str | None, host: str | None, allowed: Sequence[str], *, loopback_only: bool = False
) -> bool:
    """Whether a handshake with this ``Origin`` may proceed.

    ``allowed`` lists full origins (``https://pad.example.com``) or ``*``; when it is empty only
    the origin of the ``Host`` the request was sent to is accepted. When ``Host`` names no port
    only the host names are compared, because a TLS-terminating proxy forwards an ``https``
    page's handshake to a plain-http server.

    ``loopback_only`` (the server listens on a loopback address) also requires a browser to
    address the server by a loopback name: a page that rebinds its own DNS name to 127.0.0.1
    would otherwise pass as same-origin (DNS rebinding).
    """
    if origin is None:
        return True
    origin = origin.strip().rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    if allowed or not host:
        return False
    try:
        source = urlsplit(origin)
        target = urlsplit(f"//{host.strip()}")
        source_port = source.port or _DEFAULT_PORTS.get(source.scheme)
        target_port = target.port
    except ValueError:
        return False  # a malformed port on either side
    if source.scheme not in _DEFAULT_PORTS or not source.hostname:
        return False  # "null" (sandboxed frames, file://) and other opaque origins
    if source.hostname.lower() != (target.hostname or "").lower():
        return False
    if loopback_only and not is_loopback(source.hostname):
        return False
    return target_port is None or source_port == target_port
