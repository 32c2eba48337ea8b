"""Private rooms in the registry: making one, and checking the links presented for one.

A link is checked where it is presented (opening it, a page's request, a rooms-API request, a
``hello``'s ``token``), against the loaded room or, for a room not in memory, the access state
in the store, without loading the room. Every check is counted in
``collab_link_redemptions_total{result}``, and an address that presents
``LINK_FAILURES_PER_ADDRESS_PER_MINUTE`` unknown or revoked links within a minute has every
link refused (`TooManyFailedLinks`) until the oldest failure is a minute old.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable

import structlog

from observability import metrics
from rooms.access import Access, Role, admit
from rooms.addresses import Address
from rooms.committer import Committer
from rooms.errors import Forbidden, RateLimited, StorageUnavailable, UnknownRoom
from rooms.lifecycle import LoadedRooms
from rooms.room import Room, RoomId
from rooms.settings import Settings
from rooms.store import Store

log = structlog.get_logger("collab.rooms")


class PrivateRooms:
    """The private-room half of `rooms.registry.RoomRegistry` (see the module docstring)."""

    settings: Settings
    clock: Callable[[], float]
    store: Store
    rooms: dict[RoomId, Room]
    loaded: LoadedRooms
    committer: Committer

    @abstractmethod
    async def open(self, room_id: RoomId, address: str = "", *, create: bool = True, private: bool = False) -> Room: ...

    @abstractmethod
    def _carry_out(self, room: Room) -> None: ...

    @abstractmethod
    def _address(self, address: str) -> Address | None: ...

    async def create_private(self, room_id: RoomId, address: str = "") -> dict[Role, str]:
        """Make a new private room; the secret of each role's link, once the room is stored
        (a link handed out before would not survive a failed commit). `Forbidden` when
        a room with this id exists already, `StorageUnavailable` when it cannot be stored."""
        if room_id in self.rooms:
            raise Forbidden("a room with this id exists already")
        room = await self.open(room_id, address, private=True)
        try:
            secrets = room.make_private()
        finally:
            self._carry_out(room)
            self.loaded.schedule_eviction(room)
        if not await self.durable(room_id):
            raise StorageUnavailable()
        log.info("private_room_created", room_id=room_id)
        return secrets

    async def durable(self, room_id: RoomId) -> bool:
        """Wait until every change the room has made so far is committed: True then; False when
        the room is not loaded, its commit failed (it was reset), or it takes longer than
        ``SHUTDOWN_TIMEOUT_SECONDS``. For a change a page must not show before it is stored
        (a renewed link, saved notes)."""
        room = self.rooms.get(room_id)
        if room is None:
            return False
        return await self.committer.wait_durable(room, room.changes_made, self.settings.shutdown_timeout_seconds)

    async def role_for(
        self, room_id: RoomId, token: str | None, address: str = "", *, create: bool = False
    ) -> Role | None:
        """The role a link's secret (``token``, None: no link) gives in a room: None in an
        open room. With ``create`` and no token, the room is opened (made open if the store
        does not have it, as a join would); otherwise it is only read (the loaded room, or the
        access state in the store): a link never makes a room.

        Raises `UnknownRoom` for a room that does not exist, `Forbidden` for a private room
        and a secret it does not take, and `TooManyFailedLinks` for an address that presented
        too many bad ones lately. Every link checked is counted
        (``collab_link_redemptions_total``)."""
        attempt = self._link_attempt(address) if token is not None else None
        try:
            room = self.rooms.get(room_id)
            if room is None and create and token is None:
                room = await self.open(room_id, address)
                self.loaded.schedule_eviction(room)
            if room is not None:
                access = room.access
            else:
                stored = await self.store.access(room_id)
                if stored is None:
                    if token is not None:
                        _failed(attempt, "unknown")
                    raise UnknownRoom()
                try:
                    access = Access.from_json(stored)
                except ValueError as exc:
                    log.error("room_access_unreadable", room_id=room_id, reason=str(exc))
                    raise StorageUnavailable() from exc
            return self._admission(access, token, attempt)
        finally:
            if attempt is not None:
                attempt.settle()

    def _link_attempt(self, address: str) -> LinkAttempt | None:
        """Check the address's quota of bad links and count this attempt as one of them until
        it turns out good: attempts made at once cannot all pass the check before any of
        them failed. None for an unknown address (no quota). Raises `TooManyFailedLinks`."""
        entry = self._address(address)
        if entry is None:
            return None
        try:
            entry.check_links(self.clock(), self.settings.link_failures_per_address_per_minute)
        except RateLimited:
            metrics.LINK_REDEMPTIONS.labels("rate_limited").inc()
            metrics.RATE_LIMITED.inc()
            raise
        return LinkAttempt(entry, self.clock())

    def _admission(self, access: Access, token: str | None, attempt: LinkAttempt | None) -> Role | None:
        """`rooms.access.admit`, counted: a link that fails counts against its address."""
        try:
            role, link = admit(access, token, open_rooms=self.settings.open_rooms)
        except Forbidden:
            if token is not None and access.private:
                link = access.link_for(token)
                _failed(attempt, "unknown" if link is None else "revoked" if link.revoked else "ended")
            raise
        if link is not None:
            metrics.LINK_REDEMPTIONS.labels("ok").inc()
        return role


def _failed(attempt: LinkAttempt | None, result: str) -> None:
    """A link turned out bad: counted now (unknown address), or when its attempt settles."""
    if attempt is not None:
        attempt.failed(result)
    else:
        metrics.LINK_REDEMPTIONS.labels(result).inc()


class LinkAttempt:
    """One link presented from a known address: counted as a failure from the start, and no
    longer once it turns out not to be one (`settle` without `failed`)."""

    def __init__(self, entry: Address, now: float) -> None:
        self.entry = entry
        self.stamp = now
        self.failure: str | None = None
        entry.failed_links.append(now)

    def failed(self, result: str) -> None:
        self.failure = result

    def settle(self) -> None:
        if self.failure is not None:
            metrics.LINK_REDEMPTIONS.labels(self.failure).inc()
        else:
            with contextlib.suppress(ValueError):
                self.entry.failed_links.remove(self.stamp)
