"""The in-memory store: the whole contract, nothing kept across a restart. For tests."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from rooms.store import (
    HistoryUnavailable,
    Record,
    RoomInfo,
    RoomWrite,
    RunRecord,
    Store,
    StoreConflict,
    StoredRoom,
    StoreError,
    check_run,
    int64,
    replay,
)


@dataclass
class _Room:
    info: RoomInfo
    updated: float  # Unix time of the last write
    records: list[Record] = field(default_factory=list)  # every kept record, in order
    snapshots: dict[int, str] = field(default_factory=lambda: {0: ""})
    clients: dict[str, tuple[int, int]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    access: str = ""
    notes: str = ""
    runs: dict[str, RunRecord] = field(default_factory=dict)  # by run_id, in the order stored

    def records_after(self, version: int, limit: int | None = None) -> list[Record]:
        """The kept records after ``version``, found by bisection: a read costs what it returns."""
        start = bisect.bisect_right(self.records, version, key=lambda record: record.version)
        return self.records[start : None if limit is None else start + max(limit, 0)]


class MemoryStore(Store):
    name = "memory"

    def __init__(self, keep_versions: int = 0, clock: Callable[[], float] = time.time, *, keep_runs: int = 200) -> None:
        self.keep_versions = keep_versions  # 0: keep every version
        self.keep_runs = keep_runs  # the newest runs kept per room
        self.clock = clock  # the time a write is stored at
        self._rooms: dict[str, _Room] = {}
        self.commits = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def check(self) -> None:
        pass

    async def commit(self, writes: Sequence[RoomWrite]) -> None:
        # Check every write before changing anything: a commit is all or nothing.
        for write in writes:
            for record in write.records:
                if not (int64(record.version) and int64(record.seq)):
                    raise StoreError(
                        f"room {write.room_id!r}: version {record.version!r} and seq {record.seq!r} "
                        "must be 64-bit integers"
                    )
            for run in write.runs:
                check_run(write.room_id, run)
            stored = self._rooms.get(write.room_id)
            head = stored.info.version if stored is not None else 0
            if write.records and write.records[0].version != head + 1:
                raise StoreConflict(write.room_id, head + 1, write.records[0].version)
        now = self.clock()
        for write in writes:
            room = self._rooms.get(write.room_id)
            if room is None:
                room = self._rooms[write.room_id] = _Room(
                    RoomInfo(write.room_id, write.epoch, write.language, 0, 0), now
                )
            room.updated = now
            room.records.extend(write.records)
            for record in write.records:
                room.clients[record.client_id] = (record.seq, record.version)
                if write.tokens.get(record.client_id):
                    room.tokens[record.client_id] = write.tokens[record.client_id]
            head = write.records[-1].version if write.records else room.info.version
            room.info = replace(room.info, language=write.language, version=head)
            if write.snapshot is not None:
                room.snapshots[head] = write.snapshot
                self._prune(room)
            if write.access is not None:
                room.access, room.notes = write.access, write.notes
            if write.runs:
                for run in write.runs:
                    room.runs.setdefault(run.run_id, run)  # a run stored already: a retried commit
                for run_id in list(room.runs)[: max(len(room.runs) - self.keep_runs, 0)]:
                    del room.runs[run_id]  # the oldest first
        self.commits += 1

    def _prune(self, room: _Room) -> None:
        if not self.keep_versions:
            return
        below = min(room.info.version - self.keep_versions, max(room.snapshots))
        anchor = max(version for version in room.snapshots if version <= max(below, 0))
        room.records = room.records_after(anchor)
        room.snapshots = {version: text for version, text in room.snapshots.items() if version >= anchor}
        room.info = replace(room.info, oldest=anchor)

    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        room = self._rooms.get(room_id)
        if room is None:
            return None
        snapshot = max(room.snapshots)
        start = min(snapshot, room.info.version - history)
        return StoredRoom(
            info=room.info,
            snapshot_version=snapshot,
            snapshot_text=room.snapshots[snapshot],
            records=room.records_after(start),
            clients=dict(room.clients),
            tokens=dict(room.tokens),
            access=room.access,
            notes=room.notes,
        )

    async def info(self, room_id: str) -> RoomInfo | None:
        room = self._rooms.get(room_id)
        return None if room is None else room.info

    async def head(self, room_ids: Collection[str]) -> dict[str, int]:
        return {room_id: self._rooms[room_id].info.version for room_id in room_ids if room_id in self._rooms}

    async def access(self, room_id: str) -> str | None:
        room = self._rooms.get(room_id)
        return None if room is None else room.access

    async def text_at(self, room_id: str, version: int) -> str:
        room = self._rooms[room_id]
        if not room.info.oldest <= version <= room.info.version:
            raise HistoryUnavailable(version, room.info.oldest, room.info.version)
        base = max(v for v in room.snapshots if v <= version)
        return replay(room.snapshots[base], base, room.records_after(base), until=version)

    async def history(self, room_id: str, since: int, limit: int) -> list[Record]:
        room = self._rooms.get(room_id)
        if room is None:
            raise KeyError(room_id)
        return room.records_after(since, limit)

    async def runs(self, room_id: str, limit: int) -> list[RunRecord]:
        room = self._rooms.get(room_id)
        if room is None or limit <= 0:
            return []
        return list(room.runs.values())[-limit:]

    def _expired(self, before: float, keep: Collection[str]) -> list[str]:
        return [room_id for room_id, room in self._rooms.items() if room.updated < before and room_id not in keep]

    async def purge(self, before: float, keep: Collection[str], limit: int | None = None) -> list[str]:
        deleted = self._expired(before, keep)[:limit]
        for room_id in deleted:
            del self._rooms[room_id]
        return deleted

    async def count_expired(self, before: float, keep: Collection[str]) -> int:
        return len(self._expired(before, keep))
