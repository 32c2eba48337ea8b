"""The room logic's CPU per push, with no network: registry, document, store and fan-out.

    .venv/bin/python bench/push_cost.py                   # 50 rooms of 5, the memory store
    .venv/bin/python bench/push_cost.py --store sqlite    # committed to a SQLite file in a temp dir
    .venv/bin/python bench/push_cost.py --store sqlite --doc-chars 100000   # on large documents

Every room's members are in-process transports that take frames at once (`Transport.writer`),
so what is timed is what the server does for a push between reading its frame and writing the
frames it causes: parsing, rebasing, applying, encoding, committing, queueing and flushing.
Pushes go round the rooms and their members, each against the version its author last saw,
so about one in five is rebased over a concurrent update. Prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from observability.logs import configure_logging
from rooms.protocol import Hello
from rooms.registry import RoomRegistry
from rooms.session import Session
from rooms.settings import Settings
from rooms.store import Store
from rooms.store.memory import MemoryStore
from rooms.store.sqlite import SqliteStore


class InstantTransport:
    name = "bench"

    def __init__(self) -> None:
        self.frames = 0

    async def send(self, message: str) -> None:
        self.write(message)

    def writer(self) -> Callable[[str], None]:
        return self.write

    def write(self, message: str) -> None:
        self.frames += 1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def run(
    rooms: int,
    members: int,
    pushes: int,
    store: Store,
    transports: list[InstantTransport] | None = None,
    transport_type: type[InstantTransport] = InstantTransport,
    doc_chars: int = 0,
) -> float:
    """CPU seconds per push for one pass; ``transports`` collects the members' connections.

    Each room starts with a text of ``doc_chars`` characters (lines of code), stored before the
    timing starts."""
    registry = RoomRegistry(Settings(max_document_chars=max(100_000, 2 * doc_chars)), store=store)
    await registry.start()
    sessions: list[list[Session]] = []
    for r in range(rooms):
        room = []
        for m in range(members):
            hello = Hello(type="hello", client_id=f"c{r}-{m}", username=f"user {m}", batch=True)
            transport = transport_type()
            if transports is not None:
                transports.append(transport)
            room.append(await registry.join_versioned(f"room-{r}", transport, hello))
        sessions.append(room)
    line = "    total = compute(values[index], offset) + 1  # a line of code\n"
    text = (line * (doc_chars // len(line) + 1))[:doc_chars]
    seqs: dict[str, int] = {}
    for room in sessions:
        if text:
            seqs[room[0].client_id] = 1
            registry.receive(room[0], json.dumps({"type": "push", "version": 0, "seq": 1, "changes": [[0, text]]}))
    await registry.wait_committed()
    seen: dict[str, int] = {}  # the version each author last based a push on
    started = time.process_time()
    for i in range(pushes):
        session = sessions[i % rooms][(i // rooms) % members]
        document = session.room.document
        base = seen.get(session.client_id, document.version)
        length = document.length_at(base)
        seqs[session.client_id] = seq = seqs.get(session.client_id, 0) + 1
        changes = [length, [0, "x"]] if length else [[0, "x"]]
        registry.receive(session, json.dumps({"type": "push", "version": base, "seq": seq, "changes": changes}))
        seen[session.client_id] = document.version
        if i % 10 == 9:  # let the committer and the flush run, as the event loop would
            await asyncio.sleep(0)
            await asyncio.sleep(0)
    await registry.wait_committed()
    await asyncio.sleep(0)
    elapsed = time.process_time() - started
    await registry.stop()
    return elapsed / pushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--pushes", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--doc-chars", type=int, default=0, help="each room's text before the timed pushes")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    results = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as directory:
            store: Store = MemoryStore() if args.store == "memory" else SqliteStore(Path(directory) / "rooms.sqlite3")
            results.append(asyncio.run(run(args.rooms, args.members, args.pushes, store, doc_chars=args.doc_chars)))
    runs = ", ".join(f"{r * 1e6:.0f}" for r in results)
    print(
        f"{args.rooms} rooms of {args.members}, {args.store} store, {args.doc_chars:,} characters: "
        f"median {statistics.median(results) * 1e6:.0f} µs CPU per push (runs: {runs})"
    )


if __name__ == "__main__":
    main()
