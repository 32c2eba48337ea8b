"""Where rooms are kept: one interface, three backends (``memory`` for tests, ``sqlite`` by default,
``postgres`` for several processes sharing rooms).

The registry applies updates in memory, hands them to the store in batches (every update of one
event-loop turn, for every room, in one `Store.commit`), and shows them to clients only once
that commit returned: an edit anyone has seen is durable. A store keeps per room

* the room's row: its epoch (which names its history), language and head version;
* the op log: every committed update, with its author and time (history and playback);
* snapshots: the full text at some versions, so that loading a room, or the text at a version,
  replays a bounded number of updates;
* the dedup table: the last ``seq`` each client had applied, so that a resend after a restart is
  still recognised, and the hash of the token the client is bound to;
* when the room was last written (opened or edited), so that rooms nobody used for a while can
  be deleted (`Store.purge`);
* the runs of code that ended in the room (`RunRecord`): the newest ``keep_runs`` stored.

Versions and ``seq`` values are stored as 64-bit integers, never converted: a commit with any
other value is refused with `StoreError`; so is a commit with a run whose fields are not of
their types (`check_run`).

Nothing here is specific to SQLite: a backend needs ordered appends per room and atomic batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from rooms.changes import ChangeSet
from rooms.settings import Settings


class StoreError(Exception):
    """The store failed to read or write; what was being done is in the message."""


class StoreCorrupt(StoreError):
    """The store's data cannot be trusted: it is never replaced, the server refuses to start."""


class StoreConflict(StoreError):
    """A commit does not continue the room's stored history (another writer, or a bug)."""

    def __init__(self, room_id: str, expected: int, got: int) -> None:
        self.room_id = room_id
        self.expected = expected
        self.got = got
        super().__init__(f"room {room_id!r}: the next stored version is {expected}, the commit starts at {got}")


class StaleWrite(StoreError):
    """A write of a room that another process made or changed under it (a store that several
    processes write: `Store.shared`): the room was made with another epoch (``epoch``: it must
    be loaded again), or its access state and notes are no longer those the write replaces
    (read them again, merge, write again). Nothing of the commit is written."""

    def __init__(self, room_id: str, reason: str, *, epoch: bool = False) -> None:
        self.room_id = room_id
        self.epoch = epoch
        super().__init__(f"room {room_id!r}: {reason}")


class HistoryUnavailable(StoreError):
    """A version outside what the store keeps was asked for."""

    def __init__(self, version: int, oldest: int, head: int) -> None:
        self.version = version
        self.oldest = oldest
        self.head = head
        super().__init__(f"version {version} is not kept: the kept versions are {oldest} to {head}")


@dataclass(frozen=True, slots=True)
class Record:
    """One committed update as it is stored: ``version`` is the document's version after it."""

    version: int
    client_id: str
    seq: int
    changes: str  # the ChangeSet's JSON, as on the wire
    user_id: str = ""
    author: str = ""  # the author's display name when it was made
    color: str = ""  # the author's colour, #rrggbb
    time: float = 0.0  # Unix time the server applied it (the commit follows), in seconds

    def change_set(self) -> ChangeSet:
        return ChangeSet.from_json(json.loads(self.changes))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One finished run, as the history shows it (a marker on the playback slider)."""

    run_id: str
    version: int  # the document version the code was taken from
    user_id: str
    author: str  # display name when it ran
    color: str
    language: str  # python | javascript
    kind: str  # code | tests
    started: float  # Unix time the room started it
    duration_ms: int
    status: str  # ok | error | timeout | stopped | lost
    truncated: bool
    output: str  # JSON: [[stream, text], ...] (capped at MAX_RUN_OUTPUT_CHARS of text)
    tests: str = ""  # JSON: [{"name","passed","error","args","expected","actual"}], "" for code runs


INT64 = range(-(2**63), 2**63)  # what SQLite stores as an INTEGER
_RUN_TEXTS = ("run_id", "user_id", "author", "color", "language", "kind", "status", "output", "tests")


def int64(value: object) -> bool:
    return type(value) is int and value in INT64


def check_run(room_id: str, run: RunRecord) -> None:
    """Raise `StoreError` unless every field of ``run`` is of its type (checked before a commit
    writes anything, so that a bad run fails the whole commit, in every backend alike)."""
    # Read as objects: a caller's bug is what this is for, whatever the annotations say.
    value: dict[str, object] = {name: getattr(run, name, None) for name in RunRecord.__slots__}
    started = value["started"]
    problem = ""
    if not (int64(value["version"]) and int64(value["duration_ms"])):
        problem = f"version {value['version']!r} and duration_ms {value['duration_ms']!r} must be 64-bit integers"
    elif not (isinstance(started, int | float) and type(started) is not bool and math.isfinite(started)):
        problem = f"started {started!r} must be a finite number"
    elif type(value["truncated"]) is not bool:
        problem = f"truncated {value['truncated']!r} must be a bool"
    else:
        wrong = [name for name in _RUN_TEXTS if type(value[name]) is not str]
        problem = f"{wrong[0]} {value[wrong[0]]!r} must be a str" if wrong else ""
    if problem:
        raise StoreError(f"room {room_id!r}: run {value['run_id']!r}: {problem}")


@dataclass(frozen=True, slots=True)
class RoomWrite:
    """What one commit writes for one room: its updates, and maybe a snapshot after them."""

    room_id: str
    epoch: str
    language: str
    records: Sequence[Record] = ()
    # The text after the last record: kept as a snapshot when it is given.
    snapshot: str | None = None
    head: int = 0  # the version after this write (== records[-1].version when there are records)
    # client_id -> the hex hash of the token the client is bound to. Stored with the client's
    # row, so only for clients with records in this write; a client missing here, or with "",
    # keeps the token it had.
    tokens: Mapping[str, str] = field(default_factory=dict)
    # The room's access state (`rooms.access.Access.to_json`) and interviewers' notes: both
    # given when either changed, None (with ``notes``) when neither did.
    access: str | None = None
    notes: str = ""
    # The access state and notes ``access`` and ``notes`` replace, as the writer last read or
    # wrote them: a store that several processes write refuses the commit (`StaleWrite`) when
    # others are stored now. None: not checked.
    access_base: tuple[str, str] | None = None
    # Whether ``language`` is a change of this write: a store that several processes write
    # keeps the stored language otherwise (another process may have changed it meanwhile).
    language_changed: bool = True
    # Runs that ended since the last commit, in the order they ended (and are kept in). A write
    # may hold only runs; a run whose (room_id, run_id) is stored already is skipped (a retry).
    runs: Sequence[RunRecord] = ()


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room_id: str
    epoch: str
    language: str
    version: int  # the head: the last committed version
    oldest: int  # the oldest version whose text the store can still give


@dataclass(slots=True)
class StoredRoom:
    """Everything needed to bring a room back into memory."""

    info: RoomInfo
    snapshot_version: int
    snapshot_text: str
    # The records after the snapshot, and up to ``history`` before the head when there are
    # more kept (so that clients a little behind can still be caught up and rebased), in order.
    records: list[Record] = field(default_factory=list)
    # client_id -> (last applied seq, the version that seq made)
    clients: dict[str, tuple[int, int]] = field(default_factory=dict)
    # client_id -> token hash, for the clients bound to a token
    tokens: dict[str, str] = field(default_factory=dict)
    access: str = ""  # "" for an open room (see `rooms.access.Access.from_json`)
    notes: str = ""

    def text(self) -> str:
        """The text at the head: the snapshot with the records after it applied."""
        return replay(self.snapshot_text, self.snapshot_version, self.records)


def replay(text: str, version: int, records: Sequence[Record], until: int | None = None) -> str:
    """``text`` (at ``version``) with every record after ``version`` up to ``until`` applied."""
    for record in records:
        if record.version <= version:
            continue
        if until is not None and record.version > until:
            break
        text = record.change_set().apply(text)
    return text


class Store(ABC):
    """A room store. Every method may be called from the event loop; none blocks it."""

    # Shown in logs and /readyz.
    name: str = "store"
    # Its connections belong to the event loop that opened it (closed and opened again to be
    # used in another one).
    bound_to_loop: bool = False
    # Several processes may write it: it refuses a room's write in another epoch than the
    # stored one, and one whose access state replaces another than the stored one
    # (`StaleWrite`). A store one process writes keeps the first epoch and takes any access.
    shared: bool = False

    @abstractmethod
    async def open(self) -> None:
        """Get ready (create or check files, connect); raises `StoreCorrupt` on bad data."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending work and release resources; the store is not used again."""

    @abstractmethod
    async def commit(self, writes: Sequence[RoomWrite]) -> None:
        """Write every room's records (and runs, access, snapshot) in one atomic, durable step:
        all of them or none. A room's runs beyond the newest ``keep_runs`` are deleted in the
        same step, the oldest first.

        Raises `StoreConflict` when a room's records do not continue its stored head, and
        `StoreError` when a value cannot be stored as it is (`check_run`).
        """

    @abstractmethod
    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        """The room as last committed, or None if it was never stored."""

    @abstractmethod
    async def info(self, room_id: str) -> RoomInfo | None:
        """The room's row, or None if it was never stored."""

    @abstractmethod
    async def access(self, room_id: str) -> str | None:
        """The room's access state as stored (`rooms.access.Access.to_json`; "" for an open
        room), or None if the room was never stored."""

    @abstractmethod
    async def head(self, room_ids: Collection[str]) -> dict[str, int]:
        """The stored head version of each of ``room_ids`` that is stored (one read for all of
        them: processes sharing rooms ask it for every room they serve, to notice what they missed)."""

    async def accesses(self, room_ids: Collection[str]) -> dict[str, tuple[str, str, str]]:
        """The stored access state, notes and language of each of ``room_ids`` that is stored
        (access and notes "" when none): processes sharing rooms compare them with their own.
        A load per room here; a store that several processes share reads them all at once."""
        found: dict[str, tuple[str, str, str]] = {}
        for room_id in room_ids:
            stored = await self.load(room_id, 0)
            if stored is not None:
                found[room_id] = (stored.access, stored.notes, stored.info.language)
        return found

    async def access_digests(self, room_ids: Collection[str]) -> dict[str, str]:
        """`digest_of` each stored room's `accesses` entry: what a process compares with its
        own every few seconds, without reading every room's notes each time."""
        return {room_id: self.digest_of(*state) for room_id, state in (await self.accesses(room_ids)).items()}

    def digest_of(self, access: str, notes: str, language: str) -> str:
        """A digest of a room's access state, notes and language, as `access_digests` gives it."""
        return "".join(
            hashlib.md5(text.encode(), usedforsecurity=False).hexdigest() for text in (access, notes, language)
        )

    @abstractmethod
    async def text_at(self, room_id: str, version: int) -> str:
        """The text at ``version``; `HistoryUnavailable` if it is not kept, `KeyError` if no room."""

    @abstractmethod
    async def history(self, room_id: str, since: int, limit: int) -> list[Record]:
        """Up to ``limit`` kept records with a version above ``since``, oldest first."""

    @abstractmethod
    async def runs(self, room_id: str, limit: int) -> list[RunRecord]:
        """The room's ``limit`` last stored runs, oldest first; [] for an unknown room."""

    @abstractmethod
    async def check(self) -> None:
        """Raise `StoreError` unless the store can be read right now; never waits behind other reads."""

    @abstractmethod
    async def purge(self, before: float, keep: Collection[str], limit: int | None = None) -> list[str]:
        """Delete every room last written before ``before`` (Unix time), except those in ``keep``,
        with its whole history and clients; the ids of the deleted rooms. With ``limit``, at
        most that many (call again for the rest: a caller that must hold other work while a
        purge runs then holds it for one batch at a time).

        ``keep`` must hold every room the caller has in memory or is loading: a room deleted
        under it would have its next commit refused (`StoreConflict`), or written as a new,
        empty room.
        """

    @abstractmethod
    async def count_expired(self, before: float, keep: Collection[str]) -> int:
        """How many rooms `purge` with the same arguments would delete now."""


def make_store(settings: Settings) -> Store:
    """The store the settings ask for (``STORE``)."""
    if settings.store == "memory":
        from rooms.store.memory import MemoryStore

        return MemoryStore(keep_versions=settings.history_keep_versions, keep_runs=settings.max_stored_runs_per_room)
    if settings.store == "postgres":
        from rooms.store.postgres import PostgresStore

        return PostgresStore(
            settings.database_url,
            pool_size=settings.database_pool_size,
            keep_versions=settings.history_keep_versions,
            keep_runs=settings.max_stored_runs_per_room,
            timeout=settings.database_timeout_seconds,
        )
    from rooms.store.sqlite import SqliteStore

    return SqliteStore(
        settings.database_path,
        keep_versions=settings.history_keep_versions,
        keep_runs=settings.max_stored_runs_per_room,
        synchronous=settings.sqlite_synchronous,
        api_read_threads=settings.api_read_threads,
    )
