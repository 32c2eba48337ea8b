"""The PostgreSQL store: several processes keep their rooms in one database, which decides the
order of each room's updates.

A commit is one transaction. It inserts the rooms it writes that are new, then locks every one
of them (``FOR UPDATE``, in room_id order) and reads their heads: a write whose first record
does not follow its room's head lost the race to another process (or its room is gone), and the
whole commit is rolled back with `StoreConflict` for the first such write. A concurrent commit
of the same room waits on the lock, then reads the head the winner left: of two processes
committing the same base version, exactly one succeeds. The updates' primary key
(room_id, version) is the second guard: a version stored twice is a `StoreConflict` too. The
``(client_id, seq)`` dedup rows, snapshots, access and runs are written in the same transaction.
Round trips are few whatever a commit holds: its statements are sent in a pipeline, each
writing one table from arrays.

Connections come from a pool of ``pool_size`` (each checked before use, so that connections the
server dropped are replaced, not handed out); `check` (``/readyz``) has a connection of its
own, so it never waits behind other work. Connecting, waiting for a pooled connection and each
statement are bounded by ``timeout``. Every failure of the database is a `StoreError` whose
message names the host and database, never the password or the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from rooms.store import (
    HistoryUnavailable,
    Record,
    RoomInfo,
    RoomWrite,
    RunRecord,
    StaleWrite,
    Store,
    StoreCorrupt,
    StoredRoom,
    StoreError,
    replay,
)
from rooms.store.postgres_schema import (
    ACCESS_DIGESTS,
    ACCESS_OF,
    ACCESSES,
    EXPIRED,
    HISTORY,
    INSERT_ROOMS,
    LOAD_RECORDS,
    LOCK_ROOMS,
    PRUNE,
    PURGE,
    RECORDS_TO,
    RUN,
    SNAPSHOT_AT,
    check_values,
    escape,
    first_conflict,
    heads_of,
    prepare,
    record_of,
    run_of,
    stored_already,
    unescape,
    write_statements,
)

Connection = AsyncConnection[tuple[Any, ...]]
# psycopg_pool logs three INFO lines for every connection it lends: quieter unless set otherwise
# (its warnings, of connections failing or discarded, still show).
_POOL_LOG = logging.getLogger("psycopg.pool")
PURGE_BATCH = 500
CHECK_TIMEOUT_SECONDS = 5.0


class PostgresStore(Store):
    name = "postgres"
    bound_to_loop = True
    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        keep_versions: int = 0,
        keep_runs: int = 200,
        timeout: float = 10.0,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
        purge_batch: int = PURGE_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dsn = dsn  # never logged nor put in a message: it may hold a password
        self.pool_size = pool_size
        self.keep_versions = keep_versions  # 0: keep every version
        self.keep_runs = keep_runs  # the newest runs kept per room
        self.timeout = timeout
        self.check_timeout = check_timeout
        self.purge_batch = purge_batch
        self.clock = clock  # the time a commit is stored at (`rooms.updated`)
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise StoreError("DATABASE_URL is not a valid PostgreSQL URL or connection string") from None
        self._secrets = [secret for secret in (dsn, str(params.get("password") or "")) if secret]
        host, port = params.get("host") or params.get("hostaddr") or "localhost", params.get("port") or 5432
        self.where = f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"  # for logs and messages
        # libpq's own bounds, unless the URL sets them: a dead server or network fails a
        # connection instead of hanging it (`tcp_user_timeout`: sent data unacknowledged).
        defaults: dict[str, object] = {
            "connect_timeout": max(2, math.ceil(timeout)),
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(timeout)),
            "keepalives_interval": max(1, math.ceil(timeout / 3)),
            "keepalives_count": 3,
            "tcp_user_timeout": math.ceil(timeout * 1000),
            "application_name": "collab-pad",
        }
        self._kwargs: dict[str, Any] = {k: v for k, v in defaults.items() if k not in params}
        self._kwargs["autocommit"] = True  # transactions are explicit (`Connection.transaction`)
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._probe_connection: Connection | None = None
        self._probe: asyncio.Future[None] | None = None

    # Lifecycle

    async def open(self) -> None:
        """Connect, and create, check or migrate the schema; a second call while open does nothing."""
        if self._pool is not None:
            return
        if _POOL_LOG.level == logging.NOTSET:
            _POOL_LOG.setLevel(logging.WARNING)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._dsn,
            kwargs=self._kwargs,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            timeout=self.timeout,
            name="collab-store",
        )
        db: Connection | None = None
        try:
            # One connection first: it fails with libpq's reason (the pool's would only time
            # out), prepares the schema, and is kept for `check`.
            db = await AsyncConnection.connect(self._dsn, **self._kwargs)
            await self._configure(db)
            await prepare(db)
            await pool.open(wait=True, timeout=self.timeout)
        except (psycopg.Error, StoreError) as exc:
            await pool.close()
            if db is not None:
                await db.close()
            if isinstance(exc, StoreCorrupt):
                raise StoreCorrupt(f"PostgreSQL {self.where}: {exc}") from None
            raise self._error("opening the store", exc) from None
        self._pool, self._probe_connection = pool, db

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if self._probe is not None:
            self._probe.cancel()
        probe, self._probe_connection = self._probe_connection, None
        if probe is not None:
            await probe.close()
        if pool is not None:
            await pool.close(timeout=self.timeout)

    async def _configure(self, db: Connection) -> None:
        # A statement, or a transaction left idle (a stalled process holding rooms' locks),
        # ends after `timeout`.
        milliseconds = str(math.ceil(self.timeout * 1000))
        await db.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            (milliseconds, milliseconds),
        )

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        """``exc`` as a `StoreError` naming the host and database, with no secret in it."""
        # Without libpq's DETAIL (it quotes the row: a room id) and anything after it.
        detail = " ".join(str(exc).split("DETAIL:")[0].split()) or type(exc).__name__
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StoreError(f"PostgreSQL {self.where}: {doing} failed: {detail}")

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[Connection]:
        """A pooled connection; the database's errors raised meanwhile become `StoreError`."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL {self.where} is not open")
        try:
            async with pool.connection() as db:
                yield db
        except psycopg.Error as exc:
            raise self._error(doing, exc) from None

    # Writing

    async def commit(self, writes: Sequence[RoomWrite]) -> None:
        check_values(writes)  # before anything is sent: a bad value fails the commit as a whole
        if not writes:
            return
        first: dict[str, RoomWrite] = {}
        for write in writes:
            first.setdefault(write.room_id, write)
        ids = sorted(first)
        now = self.clock()
        async with self._connection("a commit") as db:
            try:
                await self._commit(db, writes, ids, [first[i] for i in ids], now)
            except psycopg.errors.UniqueViolation as exc:
                raise await stored_already(db, writes) or self._error("a commit", exc) from None
            if self.keep_versions and any(write.snapshot is not None for write in writes):
                # Not part of the commit: a failure here must not report the commit as failed
                # (its rooms would be reset while their updates are stored); the next snapshot
                # tries again. What goes is older than a stored snapshot.
                snapshots = sorted({escape(write.room_id) for write in writes if write.snapshot is not None})
                with contextlib.suppress(psycopg.Error):
                    await db.execute(PRUNE, {"keep": self.keep_versions, "rooms": snapshots})

    async def _commit(
        self, db: Connection, writes: Sequence[RoomWrite], ids: list[str], firsts: list[RoomWrite], now: float
    ) -> None:
        e = escape
        rooms = {"now": now, "rooms": [e(i) for i in ids], "epochs": [e(w.epoch) for w in firsts]}
        rooms["languages"] = [e(w.language) for w in firsts]
        async with db.pipeline(), db.transaction():
            await db.execute(INSERT_ROOMS, rooms)
            locked = await db.execute(LOCK_ROOMS, (rooms["rooms"],))
            rows = await locked.fetchall()
            heads = {unescape(room_id): head for room_id, head, _ in rows}
            conflict = first_conflict(writes, heads, every_room=True)
            if conflict is not None:
                raise conflict
            epochs = {unescape(room_id): unescape(epoch) for room_id, _, epoch in rows}
            for write in writes:  # made at once by two processes: the first one's is the room
                if epochs.get(write.room_id, write.epoch) != write.epoch:
                    raise StaleWrite(write.room_id, "another process made it with another epoch", epoch=True)
            checked = {w.room_id: w.access_base for w in writes if w.access is not None and w.access_base is not None}
            if checked:
                stored = await db.execute(ACCESS_OF, ([e(room_id) for room_id in checked],))
                now_stored = {
                    unescape(i): (unescape(text), unescape(notes)) for i, text, notes in await stored.fetchall()
                }
                for room_id, base in checked.items():
                    if now_stored.get(room_id, ("", "")) != base:
                        raise StaleWrite(room_id, "its access state or notes changed since the writer read them")
            for query, params in write_statements(writes, heads, now, self.keep_runs):
                await db.execute(query, params)

    # Reading

    async def head(self, room_ids: Collection[str]) -> dict[str, int]:
        if not room_ids:
            return {}
        async with self._connection("reading heads") as db:
            return await heads_of(db, room_ids)

    async def accesses(self, room_ids: Collection[str]) -> dict[str, tuple[str, str, str]]:
        if not room_ids:
            return {}
        async with self._connection("reading access states") as db:
            cursor = await db.execute(ACCESSES, ([escape(room_id) for room_id in room_ids],))
            rows = await cursor.fetchall()
            return {unescape(i): (unescape(access), unescape(notes), unescape(lang)) for i, access, notes, lang in rows}

    async def access_digests(self, room_ids: Collection[str]) -> dict[str, str]:
        if not room_ids:
            return {}
        async with self._connection("reading access digests") as db:
            cursor = await db.execute(ACCESS_DIGESTS, ([escape(room_id) for room_id in room_ids],))
            return {unescape(room_id): digest for room_id, digest in await cursor.fetchall()}

    def digest_of(self, access: str, notes: str, language: str) -> str:
        return super().digest_of(escape(access), escape(notes), escape(language))  # as stored

    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        room = escape(room_id)
        async with self._connection("loading a room") as db, db.pipeline(), db.transaction():
            # One consistent view of the room across the queries, sent together.
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            info = await db.execute("SELECT epoch, language, head, oldest FROM rooms WHERE room_id = %s", (room,))
            snapshot = await db.execute(
                "SELECT version, text FROM snapshots WHERE room_id = %s ORDER BY version DESC LIMIT 1", (room,)
            )
            records = await db.execute(LOAD_RECORDS, {"r": room, "h": history})
            clients = await db.execute("SELECT client_id, seq, version, token FROM clients WHERE room_id = %s", (room,))
            access = await db.execute("SELECT access, notes FROM access WHERE room_id = %s", (room,))
            row = await info.fetchone()
            if row is None:
                return None
            base = await snapshot.fetchone() or (0, "")
            stored = StoredRoom(
                RoomInfo(room_id, unescape(row[0]), unescape(row[1]), row[2], row[3]),
                base[0],
                unescape(base[1]),
                [record_of(record) for record in await records.fetchall()],
            )
            for text, notes in await access.fetchall():
                stored.access, stored.notes = unescape(text), unescape(notes)
            for client, seq, version, token in await clients.fetchall():
                stored.clients[unescape(client)] = (seq, version)
                if token:
                    stored.tokens[unescape(client)] = unescape(token)
            return stored

    async def info(self, room_id: str) -> RoomInfo | None:
        async with self._connection("reading a room") as db:
            rows = await db.execute(
                "SELECT epoch, language, head, oldest FROM rooms WHERE room_id = %s", (escape(room_id),)
            )
            row = await rows.fetchone()
        return None if row is None else RoomInfo(room_id, unescape(row[0]), unescape(row[1]), row[2], row[3])

    async def access(self, room_id: str) -> str | None:
        async with self._connection("reading a room's access") as db:
            rows = await db.execute(
                "SELECT coalesce(access.access, '') FROM rooms LEFT JOIN access USING (room_id) "
                "WHERE rooms.room_id = %s",
                (escape(room_id),),
            )
            row = await rows.fetchone()
        return None if row is None else unescape(row[0])

    async def text_at(self, room_id: str, version: int) -> str:
        # From the newest snapshot at or before `version`: the replay is bounded by the snapshot
        # interval, whatever the length of the history.
        room = escape(room_id)
        async with self._connection("reading a room's text") as db, db.pipeline(), db.transaction():
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            info = await db.execute("SELECT head, oldest FROM rooms WHERE room_id = %s", (room,))
            snapshot = await db.execute(SNAPSHOT_AT, {"r": room, "v": version})
            records = await db.execute(RECORDS_TO, {"r": room, "v": version})
            row = await info.fetchone()
            if row is None:
                raise KeyError(room_id)
            head, oldest = row
            if not oldest <= version <= head:
                raise HistoryUnavailable(version, oldest, head)
            start, text = await snapshot.fetchone() or (0, "")
            return replay(unescape(text), start, [record_of(record) for record in await records.fetchall()])

    async def history(self, room_id: str, since: int, limit: int) -> list[Record]:
        async with self._connection("reading a room's history") as db:
            rows = await db.execute(HISTORY, (since, limit, escape(room_id)))
            found = await rows.fetchall()
        if not found:
            raise KeyError(room_id)
        return [record_of(row) for row in found if row[0] is not None]

    async def runs(self, room_id: str, limit: int) -> list[RunRecord]:
        async with self._connection("reading a room's runs") as db:
            rows = await db.execute(
                f"SELECT {RUN} FROM runs WHERE room_id = %s ORDER BY serial DESC LIMIT greatest(%s, 0)",
                (escape(room_id), limit),
            )
            found = await rows.fetchall()
        return [run_of(row) for row in reversed(found)]

    async def check(self) -> None:
        # One probe at a time: a check that finds one running waits for it rather than piling
        # more connections onto a database that does not answer.
        if self._pool is None:
            raise StoreError(f"PostgreSQL {self.where} is not open")
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run_probe())
            # Its outcome is read by the check that waits for it; one that outlives every
            # waiter is read here, so that it is never reported as lost.
            self._probe.add_done_callback(lambda probe: probe.cancelled() or probe.exception())
        done, _ = await asyncio.wait({self._probe}, timeout=self.check_timeout)
        if not done:
            raise StoreError(f"PostgreSQL {self.where}: no answer within {self.check_timeout:g} s")
        self._probe.result()

    async def _run_probe(self) -> None:
        while True:
            db, fresh = self._probe_connection, False
            try:
                if db is None or db.closed:
                    db = self._probe_connection = await AsyncConnection.connect(self._dsn, **self._kwargs)
                    fresh = True
                    await self._configure(db)
                await db.execute("SELECT 1 FROM rooms LIMIT 1")
                return
            except BaseException as exc:
                # The connection's state is unknown: it is replaced.
                self._probe_connection = None
                if db is not None:
                    await db.close()
                if not isinstance(exc, psycopg.Error):
                    raise
                if fresh:
                    raise self._error("checking the store", exc) from None
                # A connection kept from before may have been dropped while idle: a new one decides.

    # Retention

    async def purge(self, before: float, keep: Collection[str], limit: int | None = None) -> list[str]:
        # In batches, each its own transaction: a commit of a room being purged waits for one
        # batch at most.
        kept = [escape(room_id) for room_id in keep]
        deleted: list[str] = []
        after = ""
        while limit is None or len(deleted) < limit:
            size = self.purge_batch if limit is None else min(self.purge_batch, limit - len(deleted))
            async with self._connection("deleting expired rooms") as db:
                rows = await db.execute(PURGE, (before, kept, after, size))
                batch = sorted(room_id for (room_id,) in await rows.fetchall())
            deleted += [unescape(room_id) for room_id in batch]
            if len(batch) < size:
                break
            after = batch[-1]
        return deleted

    async def count_expired(self, before: float, keep: Collection[str]) -> int:
        async with self._connection("counting expired rooms") as db:
            rows = await db.execute(f"SELECT count(*) {EXPIRED}", (before, [escape(room_id) for room_id in keep]))
            row = await rows.fetchone()
        return 0 if row is None else int(row[0])
