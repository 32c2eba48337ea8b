"""The SQLite store: one file under ``DATA_DIR``, WAL mode, the default.

Writes (commits, pruning, purges) go through one connection on one thread, so commits are
strictly ordered. Reads run beside them (WAL lets readers go on while a commit is written), each
kind on its own threads and read-only connections, so that none waits behind another: loading
rooms on one thread, the rooms API (`info`, `text_at`, `history`) on a pool of
``api_read_threads``, and `check` (``/readyz``) on one more. A slow API read (a large room's
text at a version) then delays other API reads at most, never a join or the readiness probe.
No call blocks the event loop.
``synchronous=FULL`` by default: a commit is on disk (fsync) before it returns, so an update
shown to anyone survives a crash of the process and of the machine; ``NORMAL`` survives a crash
of the process only, and costs less.

The file is checked when it is opened (its header, ``PRAGMA quick_check`` and the schema
version): a truncated or corrupt file stops the start with a message naming it. It is never
replaced or "repaired" behind anyone's back. A file of an older schema version is migrated in
place, in one transaction.

The directory is made private (0700) and the file, with the ``-wal`` and ``-shm`` files SQLite
creates with its mode, is created 0600: it holds every room's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from rooms.store import (
    HistoryUnavailable,
    Record,
    RoomInfo,
    RoomWrite,
    RunRecord,
    Store,
    StoreConflict,
    StoreCorrupt,
    StoredRoom,
    StoreError,
    check_run,
    replay,
)
from rooms.store.sqlite_schema import (
    COMMIT_TRIGGER,
    CONFLICT,
    HEADER,
    NOT_INTEGER,
    SCHEMA,
    SCHEMA_VERSION,
    check_file,
    encode,
    make_private,
    migrate,
)

T = TypeVar("T")
Synchronous = Literal["full", "normal"]
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Rooms a purge deletes in one transaction: a purge of many rooms lets commits in between.
PURGE_BATCH = 500
# Rooms last written before a time (?1), but for a JSON list of ids (?2).
_EXPIRED = "FROM rooms WHERE updated < ?1 AND room_id NOT IN (SELECT value FROM json_each(?2))"
CHECK_TIMEOUT_SECONDS = 5.0
# A room's (?1) newest runs (?2 of them), oldest first: the end of its range of the primary key.
NEWEST_RUNS = (
    "SELECT * FROM (SELECT serial, run_id, version, user_id, author, color, language, kind, started, duration_ms, "
    "status, truncated, output, tests FROM runs WHERE room_id = ?1 ORDER BY serial DESC LIMIT max(?2, 0)) "
    "ORDER BY serial"
)


class SqliteStore(Store):
    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        keep_versions: int = 0,
        keep_runs: int = 200,
        synchronous: Synchronous = "full",
        api_read_threads: int = 2,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
        purge_batch: int = PURGE_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.keep_versions = keep_versions  # 0: keep every version
        self.keep_runs = keep_runs  # the newest runs kept per room
        self.synchronous = synchronous
        self.api_read_threads = api_read_threads
        self.check_timeout = check_timeout  # `check` fails when the probe gets no answer in time
        self.purge_batch = purge_batch
        self.clock = clock  # the time a commit is stored at (`rooms.updated`)
        # Replaced by `open`.
        self._writer = self._loader = self._api = self._prober = ThreadPoolExecutor(1)
        self._write: sqlite3.Connection | None = None
        self._load_connection: sqlite3.Connection | None = None
        self._probe_connection: sqlite3.Connection | None = None
        # The API pool's connections: one per thread, made by the thread on its first read.
        self._api_local = threading.local()
        self._api_connections: list[sqlite3.Connection] = []
        self._api_lock = threading.Lock()

    # Lifecycle

    async def open(self) -> None:
        """Open (creating, checking or migrating the file); a second call while open does nothing."""
        if self._write is not None:
            return
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="collab-store-write")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="collab-store-load")
        self._api = ThreadPoolExecutor(self.api_read_threads, thread_name_prefix="collab-store-api")
        self._prober = ThreadPoolExecutor(1, thread_name_prefix="collab-store-check")
        self._api_local = threading.local()
        await self._on(self._writer, self._open_writer)
        self._load_connection = await self._on(self._loader, lambda: self._connect(readonly=True))
        self._probe_connection = await self._on(self._prober, lambda: self._connect(readonly=True))

    async def close(self) -> None:
        # API reads still running finish first; their connections are closed once no thread uses them.
        await asyncio.to_thread(self._api.shutdown, wait=True)
        with self._api_lock:
            connections, self._api_connections = self._api_connections, []
        for connection in connections:
            connection.close()
        for executor, attribute in (
            (self._prober, "_probe_connection"),
            (self._loader, "_load_connection"),
            (self._writer, "_write"),
        ):
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
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            with self.path.open("rb") as file:
                if file.read(len(HEADER)) != HEADER:
                    raise self._corrupt("the file does not start with an SQLite header")
        make_private(self.path)
        connection = self._connect()
        try:
            if existed:
                try:
                    problem = check_file(connection)
                except sqlite3.DatabaseError as exc:
                    raise self._corrupt(str(exc)) from exc
                if problem is not None:
                    raise self._corrupt(problem)
                migrate(connection)
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

    def _opened(self, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        if connection is None:
            raise StoreError(f"{self.path} is not open")
        return connection

    def _writer_connection(self) -> sqlite3.Connection:
        return self._opened(self._write)

    def _api_connection(self) -> sqlite3.Connection:
        """The calling API thread's own connection: its reads never share one with another's."""
        connection: sqlite3.Connection | None = getattr(self._api_local, "connection", None)
        if connection is None:
            self._opened(self._write)  # not after `close`
            connection = self._api_local.connection = self._connect(readonly=True)
            with self._api_lock:
                self._api_connections.append(connection)
        return connection

    # Writing

    async def commit(self, writes: Sequence[RoomWrite]) -> None:
        await self._on(self._writer, lambda: self._commit(writes))

    def _commit(self, writes: Sequence[RoomWrite]) -> None:
        # One statement per commit, whatever its size: sqlite3 lets go of the GIL around every
        # statement step, and under load each step back waits for the event loop's thread to let
        # go in turn (up to the interpreter's switch interval). The batch goes in as one JSON
        # text that the `incoming` trigger spreads over the tables, in one implicit transaction.
        db = self._writer_connection()
        for write in writes:
            for run in write.runs:
                check_run(write.room_id, run)
        encoded, with_control = encode(writes, self.clock(), self.keep_runs)
        try:
            db.execute("INSERT INTO incoming VALUES (?, ?)", (encoded, with_control))
        except sqlite3.IntegrityError as exc:
            if CONFLICT in str(exc):
                raise self._conflict(db, writes) from None
            if NOT_INTEGER in str(exc):
                raise self._not_integer(writes) from None
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

    @staticmethod
    def _not_integer(writes: Sequence[RoomWrite]) -> StoreError:
        for write in writes:
            for r in write.records:
                if not all(type(value) is int and -(2**63) <= value < 2**63 for value in (r.version, r.seq)):
                    return StoreError(
                        f"room {write.room_id!r}: version {r.version!r} and seq {r.seq!r} must be 64-bit integers"
                    )
        return StoreError("a commit was refused for a version or seq that is not an integer, but none is")

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
        return await self._on(self._loader, lambda: self._load(room_id, history))

    def _load(self, room_id: str, history: int) -> StoredRoom | None:
        db = self._opened(self._load_connection)
        db.execute("BEGIN")  # one consistent view of the room across the queries
        try:
            info = self._info(db, room_id)
            if info is None:
                return None
            snapshot_version, snapshot_text = self._snapshot(db, room_id, info.version)
            start = min(snapshot_version, info.version - history)
            records = self._records(db, room_id, start, info.version)
            clients, tokens = {}, {}
            for client, seq, version, token in db.execute(
                "SELECT client_id, seq, version, token FROM clients WHERE room_id = ?", (room_id,)
            ):
                clients[client] = (seq, version)
                if token:
                    tokens[client] = token
            row = db.execute("SELECT access, notes FROM access WHERE room_id = ?", (room_id,)).fetchone()
            access, notes = row if row is not None else ("", "")
            return StoredRoom(info, snapshot_version, snapshot_text, records, clients, tokens, access, notes)
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

    async def head(self, room_ids: Collection[str]) -> dict[str, int]:
        # A list of parameters, not a JSON text: json_each would cut an id at a NUL. In batches:
        # SQLite caps the parameters of a statement.
        ids, batch = sorted(set(room_ids)), 500

        def read() -> dict[str, int]:
            db = self._opened(self._load_connection)
            heads: dict[str, int] = {}
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                marks = ", ".join("?" * len(chunk))
                heads.update(db.execute(f"SELECT room_id, version FROM rooms WHERE room_id IN ({marks})", chunk))
            return heads

        return await self._on(self._loader, read)

    # The rooms API's reads, on its own pool.

    async def info(self, room_id: str) -> RoomInfo | None:
        return await self._on(self._api, lambda: self._info(self._api_connection(), room_id))

    async def access(self, room_id: str) -> str | None:
        def read() -> str | None:
            row = (
                self._api_connection()
                .execute(
                    "SELECT coalesce(access.access, '') FROM rooms LEFT JOIN access USING (room_id) "
                    "WHERE rooms.room_id = ?",
                    (room_id,),
                )
                .fetchone()
            )
            return None if row is None else str(row[0])

        return await self._on(self._api, read)

    async def text_at(self, room_id: str, version: int) -> str:
        return await self._on(self._api, lambda: self._text_at(room_id, version))

    def _text_at(self, room_id: str, version: int) -> str:
        # From the newest snapshot at or before `version`: the replay is bounded by the snapshot
        # interval, whatever the length of the history.
        db = self._api_connection()
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
            db = self._api_connection()
            if self._info(db, room_id) is None:
                raise KeyError(room_id)
            return self._records(db, room_id, since, 2**62, limit)

        return await self._on(self._api, read)

    async def runs(self, room_id: str, limit: int) -> list[RunRecord]:
        def read() -> list[RunRecord]:
            runs = []
            for _serial, *values in self._api_connection().execute(NEWEST_RUNS, (room_id, limit)):
                values[10] = bool(values[10])  # `truncated`: SQLite has no booleans
                runs.append(RunRecord(*values))
            return runs

        return await self._on(self._api, read)

    async def check(self) -> None:
        # On a thread and connection of its own, so that the probe never waits behind reads or
        # loads; a probe that gets no answer in time (a stuck disk) fails.
        def read() -> None:
            self._opened(self._probe_connection).execute("SELECT 1 FROM rooms LIMIT 1").fetchall()

        try:
            await asyncio.wait_for(self._on(self._prober, read), self.check_timeout)
        except TimeoutError:
            raise StoreError(f"{self.path}: no answer within {self.check_timeout:g} s") from None

    # Retention

    async def purge(self, before: float, keep: Collection[str], limit: int | None = None) -> list[str]:
        # In batches, each its own transaction on the writer's thread: commits queued meanwhile
        # wait for one batch at most. Rooms are taken in key order, each batch after the last.
        kept = _JSON.encode(sorted(keep))
        deleted: list[str] = []
        after = ""
        while limit is None or len(deleted) < limit:
            size = self.purge_batch if limit is None else min(self.purge_batch, limit - len(deleted))
            batch = await self._on(self._writer, functools.partial(self._purge_batch, before, kept, after, size))
            deleted += batch
            if len(batch) < size:
                break
            after = batch[-1]
        return deleted

    def _purge_batch(self, before: float, kept: str, after: str, size: int) -> list[str]:
        db = self._writer_connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            query = f"SELECT room_id {_EXPIRED} AND room_id > ?3 ORDER BY room_id LIMIT ?4"
            rooms = [row[0] for row in db.execute(query, (before, kept, after, size))]
            chosen = _JSON.encode(rooms)
            for table in ("updates", "snapshots", "clients", "access", "runs", "rooms"):
                db.execute(f"DELETE FROM {table} WHERE room_id IN (SELECT value FROM json_each(?))", (chosen,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        if rooms:
            with contextlib.suppress(sqlite3.Error):  # the pages are given back by the next purge or prune
                db.executescript("PRAGMA incremental_vacuum;")
        return rooms

    async def count_expired(self, before: float, keep: Collection[str]) -> int:
        kept = _JSON.encode(sorted(keep))

        def count() -> int:
            row = self._api_connection().execute(f"SELECT count(*) {_EXPIRED}", (before, kept))
            return int(row.fetchone()[0])

        return await self._on(self._api, count)

    def file_size(self) -> int:
        """Bytes on disk: the database and its write-ahead log."""
        return sum(path.stat().st_size for path in (self.path, Path(f"{self.path}-wal")) if path.exists())
