"""Waiting for the room to store a change before the page reports it done.

The room takes a control (`RoomRegistry.handle`) in memory; the commit that stores it comes a
moment later, and if that commit fails the room is reset to what the store holds: the change
never happened. So a page that shows what a change made (a new link, notes saved) waits until
the room's changes are durable (`RoomRegistry.durable`) and says "Saving…" meanwhile, once
that takes long enough to notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

SAVING = "Saving…"
NOT_SAVED = "The change could not be saved: try again"
# A wait shorter than this goes unsaid: "Saving…" would only flicker.
SAVING_SHOWN_AFTER_SECONDS = 0.3


async def wait_stored(stored: Awaitable[bool], saving: Callable[[bool], None]) -> bool:
    """Await ``stored`` (the room's `durable`, or what calls it) and return what it says;
    ``saving(True)`` once it has taken `SAVING_SHOWN_AFTER_SECONDS`, ``saving(False)`` when it
    is over. ``stored`` runs in the caller's task, at once: the changes it waits for are those
    the room has made when this is called, nothing it makes later."""
    timer = asyncio.get_running_loop().call_later(SAVING_SHOWN_AFTER_SECONDS, saving, True)
    try:
        return await stored
    finally:
        timer.cancel()
        saving(False)
