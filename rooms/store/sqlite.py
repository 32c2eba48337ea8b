"""The SQLite store: one file under ``DATA_DIR``, WAL mode, the default.

Writes go through one connection on one thread, reads through another (WAL lets readers go on
while a commit is written), so no call blocks the event loop and commits are strictly ordered.
``synchronous=FULL`` by default: a commit is on disk (fsync) before it returns, so an update
shown to anyone survives a crash of the process and of the machine; ``NORMAL`` survives a crash
of the process only, and costs less.

The file is checked when it is opened (its header, ``PRAGMA quick_check`` and the schema
version): a truncated or corrupt file stops the start with a message naming it. It is never
replaced or "repaired" behind anyone's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from rooms.store import (
    HistoryUnavailable,
    Record,
    RoomInfo,
    RoomWrite,
    Store,
    StoreConflict,
    StoreCorrupt,
    StoredRoom,
    StoreError,
    replay,
)

SCHEMA_VERSION = 1
HEADER = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    language TEXT NOT NULL,
    version INTEGER NOT NULL,
    oldest INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE updates (
    room_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    changes TEXT NOT NULL,
    user_id TEXT NOT NULL,
    author TEXT NOT NULL,
    color TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (room_id, version)
) WITHOUT ROWID;
CREATE TABLE snapshots (
    room_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (room_id, version)
) WITHOUT ROWID;
CREATE TABLE clients (
    room_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (room_id, client_id)
) WITHOUT ROWID;
"""
TABLES = {"rooms", "updates", "snapshots", "clients"}

T = TypeVar("T")
Synchronous = Literal["full", "normal"]
# Commits: one JSON batch, spread over the tables by a trigger of the writer's connection
# (temporary: nothing of it is in the file). The batch is [rooms, updates, clients, snapshots,
# time]: rooms as [room_id, epoch, language, head or null, first version or null], updates and
# clients as their tables' columns, snapshots as [room_id, text] (at the room's new head).
CONFLICT = "collab: the first version of a commit does not follow the head of its room"
COMMIT_TRIGGER = f"""
CREATE TEMP VIEW incoming (batch) AS SELECT NULL;
CREATE TEMP TRIGGER incoming_commit INSTEAD OF INSERT ON incoming BEGIN
    SELECT RAISE(ABORT, '{CONFLICT}') FROM json_each(NEW.batch, '$[0]') AS r
        WHERE r.value ->> 4 IS NOT NULL
        AND r.value ->> 4 != coalesce((SELECT version FROM rooms WHERE room_id = r.value ->> 0), 0) + 1;
    INSERT INTO rooms (room_id, epoch, language, version, created, updated)
        SELECT value ->> 0, value ->> 1, value ->> 2,
            coalesce(value ->> 3, (SELECT version FROM rooms AS stored WHERE stored.room_id = value ->> 0), 0),
            NEW.batch ->> 4, NEW.batch ->> 4
        FROM json_each(NEW.batch, '$[0]') WHERE true
        ON CONFLICT (room_id) DO UPDATE
            SET language = excluded.language, version = excluded.version, updated = excluded.updated;
    INSERT INTO updates
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
            value ->> 7, value ->> 8
        FROM json_each(NEW.batch, '$[1]');
    INSERT INTO clients
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(NEW.batch, '$[2]') WHERE true
        ON CONFLICT (room_id, client_id) DO UPDATE SET seq = excluded.seq, version = excluded.version;
    INSERT OR REPLACE INTO snapshots
        SELECT value ->> 0, (SELECT version FROM rooms WHERE room_id = value ->> 0), value ->> 1
        FROM json_each(NEW.batch, '$[3]');
END;
"""
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, path: Path, *, keep_versions: int = 0, synchronous: Synchronous = "full") -> None:
        self.path = path
        self.keep_versions = keep_versions  # 0: keep every version
        self.synchronous = synchronous
        self._writer = self._reader = ThreadPoolExecutor(1)  # replaced by `open`
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None

    # Lifecycle

    async def open(self) -> None:
        """Open (creating or checking the file); a second call while open does nothing."""
        if self._write is not None:
            return
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="collab-store-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="collab-store-read")
        await self._on(self._writer, self._open_writer)
        self._read = await self._on(self._reader, lambda: self._connect(readonly=True))

    async def close(self) -> None:
        for executor, attribute in ((self._reader, "_read"), (self._writer, "_write")):
            connection = getattr(self, attribute)
            if connection is not None:
                await self._on(executor, connection.close)
                setattr(self, attribute, None)
            executor.shutdown(wait=False)  # idle: its last call was awaited above

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                # A URI (for read-only mode) of the absolute path, escaped: `#` or `?` in a
                # directory name would otherwise cut the path short.
                f"{self.path.resolve().as_uri()}?mode={'ro' if readonly else 'rwc'}",
                uri=True,
                isolation_level=None,  # a commit is one statement; pruning opens its own transaction
                check_same_thread=False,  # each connection is used by its own one thread
            )
            connection.execute("PRAGMA busy_timeout = 5000")
            return connection
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(str(exc)) from exc

    def _corrupt(self, detail: str) -> StoreCorrupt:
        return StoreCorrupt(
            f"{self.path} is not a usable collab pad database ({detail}); it was left as it is: "
            "restore it from a backup, or move it away to start with no rooms"
        )

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            with self.path.open("rb") as file:
                if file.read(len(HEADER)) != HEADER:
                    raise self._corrupt("the file does not start with an SQLite header")
        connection = self._connect()
        try:
            if existed:
                self._check(connection)
            else:
                # Incremental vacuum gives the pages of pruned history back to the file system.
                # It must be chosen before anything is written: switching to WAL writes the
                # file's first page, after which this pragma is silently ignored.
                connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            if not existed:
                connection.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            # The trigger lives in the connection's temporary schema: kept in memory, so that a
            # read-only root file system (no writable temp directory) does not stop the start.
            connection.execute("PRAGMA temp_store = MEMORY")
            connection.executescript(COMMIT_TRIGGER)
        except BaseException:
            connection.close()
            raise
        self._write = connection

    def _check(self, connection: sqlite3.Connection) -> None:
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(str(exc)) from exc
        if problems != ["ok"]:
            raise self._corrupt("integrity check: " + "; ".join(problems[:3]))
        if version != SCHEMA_VERSION or not TABLES <= tables:
            raise self._corrupt(f"schema version {version} with tables {sorted(tables)}, expected {SCHEMA_VERSION}")

    async def _on(self, executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, call)
        except RuntimeError as exc:  # `close` shut the executor down
            raise StoreError(f"{self.path} is not open") from exc
        try:
            return await future
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.OperationalError):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise self._corrupt(str(exc)) from exc

    def _writer_connection(self) -> sqlite3.Connection:
        if self._write is None:
            raise StoreError(f"{self.path} is not open")
        return self._write

    def _reader_connection(self) -> sqlite3.Connection:
        if self._read is None:
            raise StoreError(f"{self.path} is not open")
        return self._read

    # Writing

    async def commit(self, writes: Sequence[RoomWrite]) -> None:
        await self._on(self._writer, lambda: self._commit(writes))

    def _commit(self, writes: Sequence[RoomWrite]) -> None:
        # One statement per commit, whatever its size: sqlite3 lets go of the GIL around every
        # statement step, and under load each step back waits for the event loop's thread to let
        # go in turn (up to the interpreter's switch interval). The batch goes in as one JSON
        # text that the `incoming` trigger spreads over the tables, in one implicit transaction.
        db = self._writer_connection()
        batch = [
            [
                [
                    write.room_id,
                    write.epoch,
                    write.language,
                    write.records[-1].version if write.records else None,
                    write.records[0].version if write.records else None,
                ]
                for write in writes
            ],
            [
                [write.room_id, r.version, r.client_id, r.seq, r.changes, r.user_id, r.author, r.color, r.time]
                for write in writes
                for r in write.records
            ],
            [
                [write.room_id, client, seq, version]
                for write in writes
                for client, (seq, version) in {r.client_id: (r.seq, r.version) for r in write.records}.items()
            ],
            [[write.room_id, write.snapshot] for write in writes if write.snapshot is not None],
            time.time(),
        ]
        try:
            db.execute("INSERT INTO incoming VALUES (?)", (_JSON.encode(batch),))
        except sqlite3.IntegrityError as exc:
            if CONFLICT in str(exc):
                raise self._conflict(db, writes) from None
            raise
        snapshots = [write.room_id for write in writes if write.snapshot is not None]
        if not snapshots or not self.keep_versions:
            return
        # Pruning needs no part of the commit's atomicity: what it removes is older than a
        # snapshot that is stored already, and a failure here must not report the commit as
        # failed (the registry would reset rooms whose updates are stored); the next snapshot
        # tries again. `execute` steps a statement without result columns once, and each step
        # of this pragma frees one page; `executescript` runs it to the end.
        with contextlib.suppress(sqlite3.Error):
            db.execute("BEGIN IMMEDIATE")
            try:
                for room_id in snapshots:
                    self._prune(db, room_id)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.executescript("PRAGMA incremental_vacuum;")

    @staticmethod
    def _conflict(db: sqlite3.Connection, writes: Sequence[RoomWrite]) -> StoreError:
        """The error of a commit the trigger refused: which room's versions do not follow."""
        for write in writes:
            row = db.execute("SELECT version FROM rooms WHERE room_id = ?", (write.room_id,)).fetchone()
            head = row[0] if row is not None else 0
            if write.records and write.records[0].version != head + 1:
                return StoreConflict(write.room_id, head + 1, write.records[0].version)
        return StoreError("a commit was refused as out of order, but no room's versions are")

    def _prune(self, db: sqlite3.Connection, room_id: str) -> None:
        """Forget history older than ``keep_versions`` (never what loading the room needs)."""
        if not self.keep_versions:
            return
        head = db.execute("SELECT version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()[0]
        latest = db.execute("SELECT max(version) FROM snapshots WHERE room_id = ?", (room_id,)).fetchone()[0]
        below = max(0, min(head - self.keep_versions, latest))
        anchor = db.execute(
            "SELECT max(version) FROM snapshots WHERE room_id = ? AND version <= ?", (room_id, below)
        ).fetchone()[0]
        if anchor is None:
            return  # the room's first snapshot is still ahead: version 0 is the empty text
        db.execute("DELETE FROM updates WHERE room_id = ? AND version <= ?", (room_id, anchor))
        db.execute("DELETE FROM snapshots WHERE room_id = ? AND version < ?", (room_id, anchor))
        db.execute("UPDATE rooms SET oldest = ? WHERE room_id = ?", (anchor, room_id))

    # Reading

    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        return await self._on(self._reader, lambda: self._load(room_id, history))

    def _load(self, room_id: str, history: int) -> StoredRoom | None:
        db = self._reader_connection()
        db.execute("BEGIN")  # one consistent view of the room across the queries
        try:
            info = self._info(db, room_id)
            if info is None:
                return None
            snapshot_version, snapshot_text = self._snapshot(db, room_id, info.version)
            start = min(snapshot_version, info.version - history)
            records = self._records(db, room_id, start, info.version)
            clients = {
                client: (seq, version)
                for client, seq, version in db.execute(
                    "SELECT client_id, seq, version FROM clients WHERE room_id = ?", (room_id,)
                )
            }
            return StoredRoom(info, snapshot_version, snapshot_text, records, clients)
        finally:
            db.execute("COMMIT")

    @staticmethod
    def _info(db: sqlite3.Connection, room_id: str) -> RoomInfo | None:
        row = db.execute("SELECT epoch, language, version, oldest FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
        return None if row is None else RoomInfo(room_id, row[0], row[1], row[2], row[3])

    @staticmethod
    def _snapshot(db: sqlite3.Connection, room_id: str, version: int) -> tuple[int, str]:
        row = db.execute(
            "SELECT version, text FROM snapshots WHERE room_id = ? AND version <= ? ORDER BY version DESC LIMIT 1",
            (room_id, version),
        ).fetchone()
        return (row[0], row[1]) if row is not None else (0, "")

    @staticmethod
    def _records(db: sqlite3.Connection, room_id: str, after: int, until: int, limit: int = -1) -> list[Record]:
        return [
            Record(*row)
            for row in db.execute(
                "SELECT version, client_id, seq, changes, user_id, author, color, time FROM updates "
                "WHERE room_id = ? AND version > ? AND version <= ? ORDER BY version LIMIT ?",
                (room_id, after, until, limit),
            )
        ]

    async def info(self, room_id: str) -> RoomInfo | None:
        return await self._on(self._reader, lambda: self._info(self._reader_connection(), room_id))

    async def text_at(self, room_id: str, version: int) -> str:
        return await self._on(self._reader, lambda: self._text_at(room_id, version))

    def _text_at(self, room_id: str, version: int) -> str:
        db = self._reader_connection()
        db.execute("BEGIN")
        try:
            info = self._info(db, room_id)
            if info is None:
                raise KeyError(room_id)
            if not info.oldest <= version <= info.version:
                raise HistoryUnavailable(version, info.oldest, info.version)
            base, text = self._snapshot(db, room_id, version)
            return replay(text, base, self._records(db, room_id, base, version))
        finally:
            db.execute("COMMIT")

    async def history(self, room_id: str, since: int, limit: int) -> list[Record]:
        def read() -> list[Record]:
            db = self._reader_connection()
            if self._info(db, room_id) is None:
                raise KeyError(room_id)
            return self._records(db, room_id, since, 2**62, limit)

        return await self._on(self._reader, read)

    async def check(self) -> None:
        def read() -> None:
            self._reader_connection().execute("SELECT 1 FROM rooms LIMIT 1").fetchall()

        await self._on(self._reader, read)

    def file_size(self) -> int:
        """Bytes on disk: the database and its write-ahead log."""
        return sum(path.stat().st_size for path in (self.path, Path(f"{self.path}-wal")) if path.exists())
