"""``python -m rooms.retention``: delete the rooms nobody has opened or edited for a while.

A room whose last write (an edit, a language change, being opened) is older than
``ROOM_RETENTION_DAYS`` is deleted with its whole history, snapshots and clients. The command
prints how many rooms it deleted, never which: room ids can be personal data too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from rooms.settings import Settings, load_settings
from rooms.store import Store, StoreError, make_store

DAY_SECONDS = 86_400.0

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
