"""What every connection from one client address shares: its message rate, its live sessions and
the rooms it made lately; and the bounded table of them. Pure data and arithmetic (the caller
passes the clock in), like `rooms.limits`.

Addresses are counted by `address_key` (an IPv6 client's /64), so that a client cannot take a
fresh entry for every connection.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from rooms.errors import TooManyFailedLinks, TooManyNewRooms
from rooms.limits import TokenBucket, address_key

# The most client addresses remembered at once (their rate buckets and recent new rooms). Idle
# ones are forgotten first: a full bucket and no room made within the last minute is all a
# fresh entry would hold anyway.
ADDRESS_TABLE_LIMIT = 50_000
NEW_ROOM_WINDOW_SECONDS = 60.0


@dataclass(eq=False)
class Address:
    """What is shared by every connection from one client address."""

    bucket: TokenBucket  # messages, across all its connections
    sessions: int = 0  # live sessions from it
    new_rooms: deque[float] = field(default_factory=deque)  # when it made rooms, within the window
    failed_links: deque[float] = field(default_factory=deque)  # when it presented a bad link, likewise

    def made_room_since(self, since: float) -> bool:
        return bool(self.new_rooms) and self.new_rooms[-1] > since

    def idle(self, now: float) -> bool:
        """True when forgetting this entry changes nothing: a fresh one would be the same."""
        bucket = self.bucket
        full = bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst
        window = now - NEW_ROOM_WINDOW_SECONDS
        failed = bool(self.failed_links) and self.failed_links[-1] > window
        return not self.sessions and full and not self.made_room_since(window) and not failed

    def check_new_room(self, now: float, quota: int) -> None:
        """Raise `TooManyNewRooms` when this address made ``quota`` rooms within the window."""
        made = self.new_rooms
        while made and made[0] <= now - NEW_ROOM_WINDOW_SECONDS:
            made.popleft()
        if len(made) >= quota:
            raise TooManyNewRooms(quota, made[0] + NEW_ROOM_WINDOW_SECONDS - now)

    def check_links(self, now: float, quota: int) -> None:
        """Raise `TooManyFailedLinks` when this address presented ``quota`` bad links within
        the window: then no link of it is even looked at until the oldest failure ages out."""
        failed = self.failed_links
        while failed and failed[0] <= now - NEW_ROOM_WINDOW_SECONDS:
            failed.popleft()
        if len(failed) >= quota:
            raise TooManyFailedLinks(quota, failed[0] + NEW_ROOM_WINDOW_SECONDS - now)


class AddressTable:
    """The entries of client addresses, made on first use, at most `ADDRESS_TABLE_LIMIT`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._entries: OrderedDict[str, Address] = OrderedDict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, address: str, now: float) -> Address | None:
        """The entry of ``address``; None for an unknown address ("")."""
        if not address:
            return None
        key = address_key(address)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        if len(self._entries) >= ADDRESS_TABLE_LIMIT:
            self._forget(now)
        entry = self._entries[key] = Address(TokenBucket.full(self.rate, self.burst, now))
        return entry

    def _forget(self, now: float) -> None:
        """Make room: the idle entries go, then, if that was not enough, the least recently used
        with no connection, but never one that made a room this minute (that would reset its
        quota)."""
        entries = self._entries
        for key, entry in list(entries.items()):
            if entry.idle(now):
                del entries[key]
        target = ADDRESS_TABLE_LIMIT * 9 // 10
        window = now - NEW_ROOM_WINDOW_SECONDS
        for key, entry in list(entries.items()):
            if len(entries) <= target:
                break
            if not entry.sessions and not entry.made_room_since(window):
                del entries[key]
