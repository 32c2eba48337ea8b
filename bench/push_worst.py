"""The server CPU of the costliest single push the default limits allow, with no network.

    .venv/bin/python bench/push_worst.py                        # every shape, default settings
    MAX_REBASE_STEPS=100000 .venv/bin/python bench/push_worst.py   # settings from the environment

A room's history is filled with updates of many parts each (one keystroke-sized insertion every
few units), then one push of many parts is sent against an old version, as a frame through
`RoomRegistry.receive`: parsing, the cost checks, building the ChangeSet, rebasing it over every
update since, applying it and queueing the update for the room's members. The push is made as
large as `MAX_CHANGE_PARTS` allows and as far behind as `MAX_REBASE_VERSIONS` and
`MAX_REBASE_STEPS` allow, in a few shapes (few versions of many parts, many versions of few);
each shape is timed with `time.process_time` over several fresh rooms (after a full garbage
collection, so that what is timed is the push's own work) and the median and maximum printed.
A push beyond the limits is refused before any of this work; its cost is printed too. Last, a
full-text ``code_change`` of a whole document that differs everywhere, which `DIFF_MAX_STEPS` bounds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from observability.logs import configure_logging
from rooms.protocol import Hello
from rooms.registry import RoomRegistry
from rooms.settings import Settings

REPEATS = 5


class InstantTransport:
    name = "bench"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.write(message)

    def writer(self) -> Callable[[str], None]:
        return self.write

    def write(self, message: str) -> None:
        self.sent.append(message[:200])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def many_parts(length: int, parts: int, text: str) -> list[Any]:
    """A ChangeSet of about ``parts`` parts over a document of ``length`` units: one insertion
    of ``text`` every few units (a multi-cursor edit)."""
    inserts = max(1, (parts - 1) // 2)
    gap = max(1, length // (inserts + 1))
    out: list[Any] = []
    position = 0
    for _ in range(inserts):
        if position + gap > length:
            break
        out.append(gap)
        out.append([0, text])
        position += gap
    if length - position:
        out.append(length - position)
    return out or [[0, text]]


async def one(settings: Settings, behind: int, update_parts: int, push_parts: int) -> tuple[float, str]:
    registry = RoomRegistry(settings)
    writer_transport, pusher_transport = InstantTransport(), InstantTransport()
    writer = await registry.join_versioned("r", writer_transport, Hello(type="hello", client_id="w"))
    pusher = await registry.join_versioned("r", pusher_transport, Hello(type="hello", client_id="p"))
    for session in (writer, pusher):
        session.limit.own.burst = session.limit.own.tokens = 10**9
        if session.limit.shared is not None:
            session.limit.shared.burst = session.limit.shared.tokens = 10**9
    document = writer.room.document
    # A base text long enough for parts that far apart, then the history the push is behind.
    registry.receive(writer, json.dumps(_push(0, 1, [[0, "." * 20_000]])))
    base = document.version
    base_length = document.length
    for seq in range(2, behind + 2):
        changes = many_parts(document.length, update_parts, "u")
        registry.receive(writer, json.dumps(_push(document.version, seq, changes)))
    assert document.version == base + behind, "the history was not built"
    await registry.wait_committed()
    frame = json.dumps(_push(base, 1, many_parts(base_length, push_parts, "p")))
    gc.collect()  # the garbage of building the room is not the push's to collect
    started = time.process_time()
    registry.receive(pusher, frame)
    spent = time.process_time() - started
    await registry.wait_committed()
    errors = [json.loads(m)["code"] for m in pusher_transport.sent if m.startswith('{"type":"error"')]
    outcome = "applied" if document.version == base + behind + 1 else ", ".join(errors) or "refused"
    await registry.stop()
    return spent, outcome


async def full_text_change(settings: Settings) -> float:
    """A full-text ``code_change`` that differs from the text everywhere: the diff at its budget."""
    rng = random.Random(1)
    size = settings.max_document_chars
    registry = RoomRegistry(settings)
    session = await registry.join_full_text("s", InstantTransport(), "writer")
    session.limit.own.burst = session.limit.own.tokens = 10**9
    registry.receive(session, json.dumps({"type": "code_change", "code": "".join(rng.choices("ab", k=size))}))
    frame = json.dumps({"type": "code_change", "code": "".join(rng.choices("ab", k=size))})
    gc.collect()
    started = time.process_time()
    registry.receive(session, frame)
    spent = time.process_time() - started
    await registry.wait_committed()
    await registry.stop()
    return spent


def _push(version: int, seq: int, changes: list[Any]) -> dict[str, Any]:
    return {"type": "push", "version": version, "seq": seq, "changes": changes}


async def main() -> None:
    configure_logging("console", "WARNING")
    settings = Settings(data_dir=Path("/nonexistent"))
    parts = settings.max_change_parts
    steps = settings.max_rebase_steps
    versions = settings.max_rebase_versions
    print(
        f"MAX_CHANGE_PARTS={parts} MAX_REBASE_VERSIONS={versions} MAX_REBASE_STEPS={steps} "
        f"REBASE_STEPS_PER_TOKEN={settings.rebase_steps_per_token}"
    )
    shapes = []
    # Few versions of many parts, many versions of few, and in between; each at the step bound.
    for update_parts in (parts, parts // 2, parts // 10, 3):
        behind = min(versions, steps // (parts + update_parts))
        shapes.append((behind, update_parts, parts))
    shapes.append((min(versions, steps // 4), 3, 1))  # the most versions, tiny pushes
    worst = 0.0
    for behind, update_parts, push_parts in shapes:
        samples = [await one(settings, behind, update_parts, push_parts) for _ in range(REPEATS)]
        spent = max(sample[0] for sample in samples)
        median = statistics.median(sample[0] for sample in samples)
        worst = max(worst, median)
        print(
            f"{behind:4d} versions behind of {update_parts:4d} parts, a push of {push_parts:4d} parts: "
            f"median {median * 1000:5.1f} ms CPU, max {spent * 1000:5.1f} ({samples[0][1]})"
        )
    # Just beyond the limits: refused before any work.
    refused = await one(settings, steps // (2 * parts) + 1, parts, parts)
    print(f"one version more (refused): {refused[0] * 1000:.1f} ms CPU: {refused[1]}")
    print(f"worst allowed push: {worst * 1000:.1f} ms CPU (median of {REPEATS})")
    full_text = statistics.median([await full_text_change(settings) for _ in range(REPEATS)])
    print(
        f"a full-text code_change of {settings.max_document_chars} characters, all different "
        f"(DIFF_MAX_STEPS={settings.diff_max_steps}): {full_text * 1000:.1f} ms CPU"
    )


if __name__ == "__main__":
    asyncio.run(main())
