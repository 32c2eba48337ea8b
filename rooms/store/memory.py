"""The in-memory store: the whole contract, nothing kept across a restart. For tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from rooms.store import (
    HistoryUnavailable,
    Record,
    RoomInfo,
    RoomWrite,
    Store,
    StoreConflict,
    StoredRoom,
    replay,
)


@dataclass
class _Room:
    info: RoomInfo
    records: list[Record] = field(default_factory=list)  # every kept record, in order
    snapshots: dict[int, str] = field(default_factory=lambda: {0: ""})
    clients: dict[str, tuple[int, int]] = field(default_factory=dict)


class MemoryStore(Store):
    name = "memory"

    def __init__(self, keep_versions: int = 0) -> None:
        self.keep_versions = keep_versions  # 0: keep every version
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
            stored = self._rooms.get(write.room_id)
            head = stored.info.version if stored is not None else 0
            if write.records and write.records[0].version != head + 1:
                raise StoreConflict(write.room_id, head + 1, write.records[0].version)
        for write in writes:
            room = self._rooms.get(write.room_id)
            if room is None:
                room = self._rooms[write.room_id] = _Room(RoomInfo(write.room_id, write.epoch, write.language, 0, 0))
            room.records.extend(write.records)
            for record in write.records:
                room.clients[record.client_id] = (record.seq, record.version)
            head = write.records[-1].version if write.records else room.info.version
            room.info = replace(room.info, language=write.language, version=head)
            if write.snapshot is not None:
                room.snapshots[head] = write.snapshot
                self._prune(room)
        self.commits += 1

    def _prune(self, room: _Room) -> None:
        if not self.keep_versions:
            return
        below = min(room.info.version - self.keep_versions, max(room.snapshots))
        anchor = max(version for version in room.snapshots if version <= max(below, 0))
        room.records = [record for record in room.records if record.version > anchor]
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
            records=[record for record in room.records if record.version > start],
            clients=dict(room.clients),
        )

    async def info(self, room_id: str) -> RoomInfo | None:
        room = self._rooms.get(room_id)
        return None if room is None else room.info

    async def text_at(self, room_id: str, version: int) -> str:
        room = self._rooms[room_id]
        if not room.info.oldest <= version <= room.info.version:
            raise HistoryUnavailable(version, room.info.oldest, room.info.version)
        base = max(v for v in room.snapshots if v <= version)
        return replay(room.snapshots[base], base, room.records, until=version)

    async def history(self, room_id: str, since: int, limit: int) -> list[Record]:
        room = self._rooms.get(room_id)
        if room is None:
            raise KeyError(room_id)
        return [record for record in room.records if record.version > since][:limit]
