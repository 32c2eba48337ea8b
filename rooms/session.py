"""A client's place in a room, and what a room asks its driver to do.

`Session` is the protocol state of one connection in one `Room` (who it is, what it may still
send, how it is to be closed); the connection itself (transport, outgoing queue) belongs to the
driver. A room answers every event with *actions*, taken with `Room.take_actions`, in the order
the driver must carry them out:

* `Send`: queue a message (or a burst of frames that must leave together) for one session;
* `Left`: a session left the room; close its connection with ``session.close_code``;
* `Refused`: a message of a session was refused (an ``error`` reply, if due, follows as a `Send`);
* `Store`: the room has changes to commit (`Room.take_write`);
* `Reset`: the room cannot go on (its store is too far behind); the driver unloads it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from rooms.access import Role
from rooms.document import ClientId
from rooms.errors import RoomError
from rooms.limits import MessageLimit
from rooms.presence import UserId
from rooms.protocol import WireProtocol

if TYPE_CHECKING:
    from rooms.room import Room

# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REPLACED = 4001  # private-use code: a newer connection took over this client_id
CLOSE_REVOKED = 4003  # private-use code: removed, its link revoked, or the interview ended


class DropReason(StrEnum):
    """Why a client was disconnected against its will (the ``reason`` label of drops)."""

    QUEUE_OVERFLOW = "queue_overflow"
    SEND_TIMEOUT = "send_timeout"
    SEND_FAILED = "send_failed"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"


def token_hash(token: str) -> str:
    """What a room and the store keep of a resume token: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(eq=False, slots=True, weakref_slot=True)
class Session:
    """One client connection in one room, as the room sees it."""

    room: Room
    user_id: UserId
    client_id: ClientId
    protocol: WireProtocol
    limit: MessageLimit
    last_seen: float  # when it last sent anything (the heartbeat drops a silent one)
    batch: bool = False  # it takes several messages in one frame (a JSON array)
    full_text_seq: int = 0  # the seq given to its next `code_change`
    closed: bool = False
    # How the connection is to be closed, once it is: set by whatever ends the session.
    close_code: int = CLOSE_NORMAL
    close_reason: str = ""
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    # In a private room: its role, and the link it came through (revoking that link ends it).
    role: Role | None = None
    link_id: str | None = None
    revoked: bool = False  # its link was revoked: refused everything, closed once that is durable
    # Its client's address as the limits per address count it (`rooms.limits.address_key`), set
    # by the registry; "" when unknown. What an open room's run bucket is kept by.
    address: str = ""


@dataclass(slots=True)  # not frozen: one is made per recipient of every update, and frozen
class Send:  # dataclasses are slower to build
    session: Session
    message: str | tuple[str, ...]
    kind: str  # the type of the message (of the first, for a burst), for the driver's counts
    # For a burst: how many messages of other types follow the first, by type.
    extra: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Closing:
    """Not an action: a session to close once the change that ends it is committed (after the
    messages held for that commit, see `Room.committed`)."""

    session: Session
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Left:
    session: Session
    drop: DropReason | None = None  # why the room dropped it, when it did


@dataclass(frozen=True, slots=True)
class Refused:
    session: Session
    error: RoomError


@dataclass(frozen=True, slots=True)
class Store:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    reason: str


@dataclass(frozen=True, slots=True)
class Shared:
    """Something this process's members did that other processes serving the room must show
    (a room shared by several processes, `rooms.room_remote`): ``kind`` is joined, left, cursor
    or language."""

    kind: str
    payload: dict[str, Any]


Action = Send | Left | Refused | Store | Reset | Shared
STORE = Store()
