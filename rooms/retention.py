"""Retention: delete the rooms nobody has opened or edited for a while, from the running server
(`Retention`) or from the command line (``python -m rooms.retention``).

A room whose last write (an edit, a language change, being opened) is older than
``ROOM_RETENTION_DAYS`` is deleted with its whole history, snapshots and clients. The command
prints how many rooms it deleted, never which: room ids can be personal data too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Collection, Sequence
from typing import Protocol

import structlog

from rooms.settings import Settings, load_settings
from rooms.store import Store, StoreError, make_store

log = structlog.get_logger("collab.rooms")

DAY_SECONDS = 86_400.0
RETENTION_INTERVAL_SECONDS = 3600.0
# Rooms deleted per store call: a room load waits for at most one such batch.
PURGE_BATCH = 500


class Rooms(Protocol):
    """What retention needs of the server's rooms."""

    settings: Settings
    store: Store

    @property
    def rooms(self) -> Collection[str]: ...

    def opening(self) -> set[str]: ...

    def touch_loaded(self) -> None: ...


class Retention:
    """The server's own purge: once at start, then every `RETENTION_INTERVAL_SECONDS`. Rooms
    in memory, or being loaded, are never deleted."""

    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms
        self._batch: asyncio.Future[None] | None = None  # resolved when the batch in progress ends
        self._running = False

    async def run(self, interval: float) -> None:
        """Purge now and every ``interval`` seconds; a failing run is logged."""
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("retention_failed")
            await asyncio.sleep(interval)

    async def wait_for_batch(self) -> None:
        """Return once no purge batch that began before this call is running. A room load
        waits here: every later batch keeps the room (it is being opened), so one wait is
        enough."""
        if self._batch is not None:
            await asyncio.shield(self._batch)

    async def purge(self) -> int:
        """Delete the stored rooms nobody opened for ``room_retention_days`` (0: keep forever),
        with their history; the count deleted. It goes in batches of `PURGE_BATCH` rooms."""
        rooms = self.rooms
        days = rooms.settings.room_retention_days
        if not days or self._running:
            return 0
        self._running = True
        loop = asyncio.get_running_loop()
        deleted = 0
        try:
            # A room open for longer than the retention period without an edit is still in use:
            # its stored row is touched, so it is not purged the moment it is unloaded.
            rooms.touch_loaded()
            before = time.time() - days * DAY_SECONDS
            while True:
                self._batch = loop.create_future()
                try:
                    keep = set(rooms.rooms) | rooms.opening()
                    batch = await rooms.store.purge(before, keep, limit=PURGE_BATCH)
                finally:
                    self._batch.set_result(None)
                    self._batch = None
                deleted += len(batch)
                if len(batch) < PURGE_BATCH:
                    break
        finally:
            self._running = False
        log.info("rooms_purged", count=deleted)
        return deleted


CAVEAT = """\
Safe to run while the server runs: it deletes in short transactions, between the server's
commits. One caveat: a room the running server holds in memory (someone has had it open all
along) but that nobody opened or edited for the whole period may be deleted under it, and a
later edit there is then refused or starts an empty room. The server's own periodic purge
never deletes a room it holds; stop the server before running this to rule the case out.
"""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rooms.retention",
        description="Delete the rooms nobody has opened or edited for ROOM_RETENTION_DAYS days (or --days).",
        epilog=CAVEAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--days", type=float, help="delete rooms unused for this many days instead of ROOM_RETENTION_DAYS"
    )
    parser.add_argument("--dry-run", action="store_true", help="count the rooms it would delete, delete nothing")
    return parser


async def run(store: Store, days: float, dry_run: bool, now: float) -> str:
    """Purge (or count) the rooms ``store`` last wrote before ``days`` ago; the line to print."""
    before = now - days * DAY_SECONDS
    await store.open()
    try:
        if dry_run:
            return f"{await store.count_expired(before, ())} rooms unused for {days:g} days would be deleted"
        return f"deleted {len(await store.purge(before, ()))} rooms unused for {days:g} days"
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings or load_settings()
    days = settings.room_retention_days if args.days is None else args.days
    if args.days is None and days == 0:
        print("ROOM_RETENTION_DAYS is 0: rooms are kept forever. Pass --days N to delete them anyway.", file=sys.stderr)
        return 2
    if days <= 0:
        print(f"--days must be more than 0, not {days:g}", file=sys.stderr)
        return 2
    if settings.store == "memory":
        print("STORE=memory keeps no rooms across a restart: nothing to delete")
        return 0
    try:
        print(asyncio.run(run(make_store(settings), days, args.dry_run, time.time())))
    except StoreError as exc:
        print(f"retention failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
