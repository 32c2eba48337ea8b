"""Private rooms over HTTP: making one (``POST /api/rooms``), opening a link (``GET
/join/{room_id}/{secret}``), and the credential a request carries for a room.

A link is a credential: opening it checks it (rate-limited per client address: see
`RoomRegistry.role_for`), sets a cookie for that room only (HttpOnly, so no script reads it;
SameSite=Strict, so no other site's request carries it), and sends the browser on to
``/room/{room_id}``, which takes the secret out of the address bar (every response carries
``Referrer-Policy: no-referrer``, so it leaves in no ``Referer`` either). The page reads the
cookie to learn the role; raw clients send the secret in ``hello``'s ``token``, and rooms-API
clients as ``Authorization: Bearer <secret>``.

The next page is reached by a ``<meta http-equiv="refresh">`` rather than a redirect: browsers
do not send SameSite=Strict cookies on a redirect that a link on another site started (a link
opened from a mail or a chat), and they do on a navigation the page itself makes. For the same
reason a link opened from another site is first answered with a page that opens it again from
this site (``Sec-Fetch-Site``): only then does the browser send the room's cookie, which says
whether it already holds a higher role's link for the room (an interviewer trying the candidate
link keeps their role).
"""

from __future__ import annotations

import html

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from api.credentials import client_address, cookie_name
from api.health import running_registry
from api.rooms import ApiError, JsonErrorRoute, check_origin, server_unavailable
from rooms.access import Role
from rooms.errors import Forbidden, RateLimited, RoomError, UnknownRoom
from rooms.limits import ROOM_ID, new_room_id
from rooms.registry import RoomRegistry

log = structlog.get_logger("collab.api")

# A browser keeps a room's credential this long after it last opened the link.
COOKIE_MAX_AGE_SECONDS = 30 * 24 * 3600

# The query of a link opened again from this site (`open_link`).
AGAIN = "again"

router = APIRouter()
create_router = APIRouter(prefix="/api/rooms", route_class=JsonErrorRoute)


def link_url(request: Request, room_id: str, secret: str) -> str:
    """The URL of a link, on the server the request came to."""
    return f"{str(request.base_url).rstrip('/')}/join/{room_id}/{secret}"


async def _is_interviewer(registry: RoomRegistry, room_id: str, token: str) -> bool:
    try:
        return await registry.role_for(room_id, token) is Role.INTERVIEWER
    except RoomError:
        return False


def _page(
    status: int, title: str, body: str, *, next_path: str | None = None, room_path: str | None = None
) -> HTMLResponse:
    refresh = f'<meta http-equiv="refresh" content="0;url={html.escape(next_path)}">' if next_path else ""
    target = next_path or room_path
    link = (
        f'<p><a href="{html.escape(target)}">Continue to the room</a></p>'
        if target
        else '<p><a href="/">Go to the start page</a></p>'
    )
    page = (
        # An icon of its own: a browser new to the server would otherwise fetch /favicon.ico
        # while it follows the refresh, and both answers would start a session of their own
        # (the name the user then gives could be kept under the one the browser drops).
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)} · collab pad</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(body)}</p>{link}</body></html>"
    )
    response = HTMLResponse(page, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/join/{room_id}/{secret}", include_in_schema=False)
async def open_link(request: Request, room_id: str, secret: str) -> HTMLResponse:
    """Check a link, keep it in the room's cookie, and go on to the room."""
    if request.headers.get("sec-fetch-dest", "document") != "document":
        # Not a page being opened (an image or a script of some site pointing here): checking
        # it would let any site spend its visitors' allowance of bad links.
        return _page(400, "Open this link in a browser tab", "A link to a room opens as a page.")
    if (
        request.headers.get("sec-fetch-site", "none") not in ("none", "same-origin")
        and AGAIN not in request.query_params
    ):
        # Opened from another site (a mail, a chat): the browser sent none of this site's
        # SameSite=Strict cookies, so a link this browser holds for the room cannot be seen
        # here. The page opens the same address again, from this site, with them (once: a
        # browser that calls that navigation cross-site too is served as it is).
        raw = request.scope.get("raw_path") or request.url.path.encode()
        return _page(200, "Opening the link", "One moment.", next_path=f"{raw.decode('latin-1')}?{AGAIN}=1")
    registry = running_registry(request.app)
    if registry is None:
        return _page(503, "Try again in a moment", "The server is starting or stopping.")
    if not ROOM_ID.fullmatch(room_id):
        return _page(404, "This is not a room link", "Check that the whole link was copied.")
    try:
        role = await registry.role_for(room_id, secret, client_address(request))
    except RateLimited as limited:
        response = _page(429, "Too many links tried", str(limited))
        response.headers["Retry-After"] = str(max(1, round(limited.retry_after)))
        return response
    except UnknownRoom:
        return _page(404, "This room does not exist", "It may have been deleted after a long time unused.")
    except Forbidden as refused:
        return _page(403, "This link does not open the room", f"{refused}.")
    except RoomError as error:
        return _page(503, "Try again in a moment", str(error))
    if role is None:  # an open room: no credential needed, none kept
        return _page(200, "Opening the room", "This room is open.", next_path=f"/room/{room_id}")
    held = request.cookies.get(cookie_name(room_id))
    if held and held != secret and role is not Role.INTERVIEWER and await _is_interviewer(registry, room_id, held):
        # An interviewer trying the link they send: keeping it would lock them out of their room.
        return _page(
            200,
            "You are this room's interviewer",
            f"This browser opens the room as its interviewer; this link would make it a {role.value}. "
            "To see the room as they will, open the link in a private window.",
            next_path=None,
            room_path=f"/room/{room_id}",
        )
    response = _page(200, "Opening the room", f"You join as {role.value}.", next_path=f"/room/{room_id}")
    response.set_cookie(
        cookie_name(room_id),
        secret,
        max_age=COOKIE_MAX_AGE_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@create_router.post("", status_code=201)
async def create_room(request: Request) -> JSONResponse:
    """Make a private room: its id, and the secret and URL of each role's link."""
    check_origin(request)  # no other site's page makes rooms in its visitors' names
    registry = running_registry(request.app)
    if registry is None:
        raise server_unavailable()
    room_id = new_room_id()
    try:
        secrets = await registry.create_private(room_id, client_address(request))
    except RateLimited as limited:
        raise ApiError(429, limited.code, str(limited)) from None
    except RoomError as error:
        raise ApiError(503, error.code, str(error)) from None
    tokens = {role.value: secret for role, secret in secrets.items()}
    links = {role: link_url(request, room_id, token) for role, token in tokens.items()}
    return JSONResponse({"room_id": room_id, "tokens": tokens, "links": links}, status_code=201)
