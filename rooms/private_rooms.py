"""Private rooms in the registry: making one, and checking the links presented for one.

A link is checked where it is presented (opening it, a page's request, a rooms-API request, a
``hello``'s ``token``), against the loaded room or, for a room not in memory, the access state
in the store, without loading the room. Every check is counted in
``collab_link_redemptions_total{result}``, and an address that presents
``LINK_FAILURES_PER_ADDRESS_PER_MINUTE`` unknown or revoked links within a minute has every
link refused (`TooManyFailedLinks`) until the oldest failure is a minute old.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import structlog

from observability import metrics
from rooms.access import Access, Role, admit
from rooms.addresses import Address
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

    @abstractmethod
    async def open(self, room_id: RoomId, address: str = "", *, create: bool = True, private: bool = False) -> Room: ...

    @abstractmethod
    def _carry_out(self, room: Room) -> None: ...

    @abstractmethod
    def _address(self, address: str) -> Address | None: ...

    async def create_private(self, room_id: RoomId, address: str = "") -> str:
        """Make a new private room; the secret of its interviewer link. `Forbidden` when a room
        with this id exists already."""
        if room_id in self.rooms:
            raise Forbidden("a room with this id exists already")
        room = await self.open(room_id, address, private=True)
        try:
            secret = room.make_private()
        finally:
            self._carry_out(room)
            self.loaded.schedule_eviction(room)
        log.info("private_room_created", room_id=room_id)
        return secret

    async def role_for(
        self, room_id: RoomId, token: str | None, address: str = "", *, create: bool = False
    ) -> Role | None:
        """The role a link's secret (``token``, None: no link) gives in a room: None in an
        open room. With ``create``, the room is opened (made open if the store does not have
        it, as a join would); without, it is only read (the loaded room, or the store).

        Raises `UnknownRoom` for a room that does not exist, `Forbidden` for a private room
        and a secret it does not take, and `TooManyFailedLinks` for an address that presented
        too many bad ones lately. Every link checked is counted
        (``collab_link_redemptions_total``)."""
        if token is not None:
            self._check_links(address)
        room = self.rooms.get(room_id)
        if room is None and create:
            room = await self.open(room_id, address)
            self.loaded.schedule_eviction(room)
        if room is not None:
            access = room.access
        else:
            stored = await self.store.access(room_id)
            if stored is None:
                if token is not None:
                    self._link_failed(address, "unknown")
                raise UnknownRoom()
            try:
                access = Access.from_json(stored)
            except ValueError as exc:
                log.error("room_access_unreadable", room_id=room_id, reason=str(exc))
                raise StorageUnavailable() from exc
        return self._admission(access, token, address)

    def _check_links(self, address: str) -> None:
        entry = self._address(address)
        if entry is not None:
            try:
                entry.check_links(self.clock(), self.settings.link_failures_per_address_per_minute)
            except RateLimited:
                metrics.LINK_REDEMPTIONS.labels("rate_limited").inc()
                metrics.RATE_LIMITED.inc()
                raise

    def _admission(self, access: Access, token: str | None, address: str) -> Role | None:
        """`rooms.access.admit`, counted: a link that fails is charged to ``address``."""
        try:
            role, link = admit(access, token, open_rooms=self.settings.open_rooms)
        except Forbidden:
            if token is not None and access.private:
                link = access.link_for(token)
                self._link_failed(address, "unknown" if link is None else "revoked" if link.revoked else "ended")
            raise
        if link is not None:
            metrics.LINK_REDEMPTIONS.labels("ok").inc()
        return role

    def _link_failed(self, address: str, result: str) -> None:
        metrics.LINK_REDEMPTIONS.labels(result).inc()
        entry = self._address(address)
        if entry is not None:
            entry.failed_links.append(self.clock())
