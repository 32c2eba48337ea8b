"""Rate and size limits, as plain data and arithmetic (the caller passes the clock in).

The token bucket lets a burst through (a paste, a reconnect that resends queued work) and then
holds a connection to a sustained rate. The defaults never trouble a fast typist (a keystroke
is one push; people peak around 15 a second) but stop a flood within a fraction of a second.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import unicodedata
from dataclasses import dataclass

from rooms.errors import InvalidMessage, RateLimited, RoomError

ANONYMOUS = "Anonymous"
# A room id, in a URL (`/ws/{room_id}`, `/room/{room_id}`): 1 to 64 url-safe characters.
ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A new room's id: 96 random bits, 16 URL-safe characters (a private room's id is no secret,
# its links are; an open room's id is all there is).
ROOM_ID_BYTES = 12


def new_room_id() -> str:
    return secrets.token_urlsafe(ROOM_ID_BYTES)


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``rate`` tokens a second refill it up to ``burst``; each message takes one."""

    rate: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=float(burst), updated=now)

    def take(self, now: float, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens or raise `RateLimited` saying when enough will be back."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = now
        # The tolerance keeps float rounding from refusing a client that sends at exactly the rate.
        if self.tokens + 1e-9 < cost:
            raise RateLimited(retry_after=(cost - self.tokens) / self.rate)
        self.tokens -= cost


# A client over its rate is told so at most once in this many seconds: a flood gets one reply a
# second, not one per message it sent.
REFUSAL_REPLY_INTERVAL_SECONDS = 1.0


@dataclass(slots=True)
class MessageLimit:
    """What one connection may send: its own bucket and, when its address is known, the bucket
    every connection from that address shares (so reconnecting does not refill it); and when it
    was last told it is over its rate. Every transport charges and answers through this."""

    own: TokenBucket
    shared: TokenBucket | None = None
    last_refusal_reply: float = float("-inf")

    def charge(self, now: float, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens of both buckets, or neither: `RateLimited` if either is short."""
        self.own.take(now, cost)
        if self.shared is not None:
            try:
                self.shared.take(now, cost)
            except RateLimited:
                self.own.tokens += cost  # refused: the connection spent nothing
                raise

    def reply_due(self, error: RoomError, now: float) -> bool:
        """Whether a refusal gets an ``error`` reply: always, except a rate limit told within
        the last `REFUSAL_REPLY_INTERVAL_SECONDS`."""
        if not isinstance(error, RateLimited):
            return True
        if now - self.last_refusal_reply < REFUSAL_REPLY_INTERVAL_SECONDS:
            return False
        self.last_refusal_reply = now
        return True


def clean_username(raw: object, max_chars: int) -> str:
    """A display name that is safe to show anywhere as text.

    Non-strings, and names left empty after cleaning, become ``"Anonymous"`` (the full-text protocol's
    rule). Control and format characters (newlines, bidi overrides, zero-width joiners used for
    spoofing) are removed, runs of whitespace collapse to one space, and the result is cut to
    ``max_chars`` characters. Markup is *not* escaped here: names are data, and every view shows
    them as text.
    """
    if not isinstance(raw, str):
        return ANONYMOUS
    kept = []
    for char in raw:
        category = unicodedata.category(char)
        if category.startswith("Z") or char.isspace():
            kept.append(" ")
        elif category[0] != "C":
            kept.append(char)
    name = " ".join("".join(kept).split())[:max_chars].strip()
    return name or ANONYMOUS


LANGUAGE_MAX_CHARS = 40


def clean_language(raw: object) -> str:
    """A language name such as ``python`` or ``C++``: short, printable, no markup characters."""
    if not isinstance(raw, str):
        raise InvalidMessage("language must be a string")
    name = raw.strip()
    if not name or len(name) > LANGUAGE_MAX_CHARS:
        raise InvalidMessage(f"language must be 1 to {LANGUAGE_MAX_CHARS} characters, got {len(name)}")
    if not all(char.isalnum() or char in "+#._- " for char in name):
        raise InvalidMessage(f"language {name!r} may only hold letters, digits, spaces and + # . _ -")
    return name


# An IPv6 client is usually given a whole /64: limits per address count the network, not the
# one address, or a client could take a fresh one for every connection.
IPV6_PREFIX = 64


def address_key(address: str) -> str:
    """What the limits per client address count: an IPv4 address, or an IPv6 address's /64."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP address (a test client's name, a Unix socket)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return address
