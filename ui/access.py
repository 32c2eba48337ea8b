"""Who a room page is for: the role its link gives (read from the room's cookie), what the page
says about it, and the pages shown to whom the room does not admit.

``/join/{room_id}/{secret}`` keeps a link's secret in an HttpOnly cookie of its own per room;
the page reads it from the request and hands it to the editor's hello on the server side, so no
script of the page ever holds it.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from api.credentials import client_address, cookie_name
from rooms.access import Act, Role, allowed
from rooms.registry import RoomRegistry

# A link's secret: URL-safe base64 (43 characters today), kept short of anything absurd.
LINK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,128}")

PRIVATE_ROOM = "This room is private. Open it with the link the interviewer gave you."
LOCKED = "The interviewer locked the editor."
ENDED = "The interview has ended: this is a read-only record."
OBSERVING = "You are observing: read-only."
# What interviewers are told instead: the editor stays theirs.
LOCKED_FOR_OTHERS = "The editor is locked: only interviewers can edit."
ENDED_FOR_INTERVIEWERS = "The interview has ended: the candidate's link no longer opens the room."


async def page_role(registry: RoomRegistry, room_id: str, request: Request) -> tuple[Role | None, str | None]:
    """The role the request's link gives in the room (None: an open room, made if need be) and
    the link's secret to join with (None for an open room). Raises `Forbidden` for a private
    room without a live link, `RateLimited` after too many bad links from one address, and the
    room's other errors (`ServerBusy`, `StorageUnavailable`...)."""
    token = request.cookies.get(cookie_name(room_id)) or None
    role = await registry.role_for(room_id, token, client_address(request), create=True)
    return role, None if role is None else token


def banner_text(role: Role | None, *, locked: bool, ended: bool) -> str | None:
    """What the page says above the editor about the member's access; None: nothing to say."""
    if role is None:
        return None
    if role is Role.INTERVIEWER:
        return ENDED_FOR_INTERVIEWERS if ended else LOCKED_FOR_OTHERS if locked else None
    if ended:
        return ENDED
    if role is Role.OBSERVER:
        return OBSERVING
    return LOCKED if locked else None


def may_edit(role: Role | None, *, locked: bool, ended: bool) -> bool:
    return allowed(role, Act.EDIT, locked=locked, ended=ended)
