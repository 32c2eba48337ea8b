"""Who a request is: its client's address, and the credential it carries for a private room
(its link's secret, as ``Authorization: Bearer <secret>`` from raw clients or in the room's
cookie from browsers, set by ``/join/{room_id}/{secret}``: see `api.links`)."""

from __future__ import annotations

from starlette.requests import HTTPConnection

COOKIE_PREFIX = "collab_link_"


def cookie_name(room_id: str) -> str:
    """The cookie that holds a browser's link secret for one room."""
    return f"{COOKIE_PREFIX}{room_id}"


def client_address(request: HTTPConnection) -> str:
    """The client's address as every limit sees it (uvicorn takes it from a trusted proxy's
    ``X-Forwarded-For``); "" when unknown."""
    return request.client.host if request.client is not None and request.client.host else ""


def credential(request: HTTPConnection, room_id: str) -> str | None:
    """The link secret a request carries for a room: ``Authorization: Bearer``, else the
    room's cookie; None without either."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(cookie_name(room_id)) or None
