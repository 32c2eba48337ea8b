"""The PostgreSQL store's database format: its tables, the check and migration of a schema before
it is used, how texts are kept exactly, its queries, and how a commit's writes become the
columns of a few set-based statements (each costs one round trip, whatever the commit's size).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from rooms.store import Record, RoomWrite, RunRecord, StoreConflict, StoreCorrupt, StoreError, check_run, int64

SCHEMA_VERSION = 1
# pg_advisory_xact_lock's key ("collab" in ASCII): processes starting at once against one
# database check, create or migrate the schema one after the other.
SCHEMA_LOCK = 0x636F6C6C6162

# The columns mirror the SQLite store's (`rooms.store.sqlite_schema`): a room's row holds its
# head version, which every commit of records moves by compare-and-set; the updates' primary key
# (room_id, version) refuses a version stored twice even if that check were bypassed.
SCHEMA = """
CREATE TABLE rooms (
    room_id text PRIMARY KEY,
    epoch text NOT NULL,
    language text NOT NULL,
    head bigint NOT NULL,
    oldest bigint NOT NULL DEFAULT 0,
    created double precision NOT NULL,
    updated double precision NOT NULL
);
CREATE INDEX rooms_updated ON rooms (updated);
CREATE TABLE updates (
    room_id text NOT NULL,
    version bigint NOT NULL,
    client_id text NOT NULL,
    seq bigint NOT NULL,
    changes text NOT NULL,
    user_id text NOT NULL,
    author text NOT NULL,
    color text NOT NULL,
    time double precision NOT NULL,
    PRIMARY KEY (room_id, version)
);
CREATE TABLE snapshots (
    room_id text NOT NULL,
    version bigint NOT NULL,
    text text NOT NULL,
    PRIMARY KEY (room_id, version)
);
CREATE TABLE clients (
    room_id text NOT NULL,
    client_id text NOT NULL,
    seq bigint NOT NULL,
    version bigint NOT NULL,
    token text NOT NULL DEFAULT '',
    PRIMARY KEY (room_id, client_id)
);
CREATE TABLE access (
    room_id text PRIMARY KEY,
    access text NOT NULL,
    notes text NOT NULL
);
CREATE TABLE runs (
    room_id text NOT NULL,
    serial bigint NOT NULL,
    run_id text NOT NULL,
    version bigint NOT NULL,
    user_id text NOT NULL,
    author text NOT NULL,
    color text NOT NULL,
    language text NOT NULL,
    kind text NOT NULL,
    started double precision NOT NULL,
    duration_ms bigint NOT NULL,
    status text NOT NULL,
    truncated boolean NOT NULL,
    output text NOT NULL,
    tests text NOT NULL,
    PRIMARY KEY (room_id, serial),
    UNIQUE (room_id, run_id)
);
CREATE TABLE schema_version (version integer NOT NULL);
"""
TABLES = frozenset({"rooms", "updates", "snapshots", "clients", "access", "runs"})
# The statements that bring a schema of version N to N + 1 (none yet: version 1 is the first).
MIGRATIONS: dict[int, str] = {}


async def prepare(db: AsyncConnection[Any]) -> None:
    """Create the tables in the connection's current schema, or check and migrate them, in one
    transaction. Raises `StoreCorrupt` for a schema this version cannot use (left as it is)."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        schema = await _one(db, "SELECT current_schema()")
        if schema is None:
            raise StoreError("no schema to create the tables in: the search_path names no schema that exists")
        found = {row[0] for row in await (await db.execute(_TABLES_QUERY)).fetchall()}
        if "schema_version" not in found:
            if found & TABLES:
                raise StoreCorrupt(
                    f"schema {schema!r} holds the tables {sorted(found & TABLES)} but no schema_version: "
                    "it was not made by collab pad, or was damaged; it was left as it is"
                )
            await db.execute(SCHEMA)
            await db.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
            return
        version = await _one(db, "SELECT max(version) FROM schema_version")
        if not (version == SCHEMA_VERSION or version in MIGRATIONS) or (
            version == SCHEMA_VERSION and not TABLES <= found
        ):
            raise StoreCorrupt(
                f"schema {schema!r} is at schema version {version} with tables {sorted(found)}, "
                f"expected {SCHEMA_VERSION}: it was left as it is (a newer server made it, or it was damaged)"
            )
        if version < SCHEMA_VERSION:
            # A migration may rewrite large tables: it takes what it takes, once.
            await db.execute("SET LOCAL statement_timeout = 0")
        while version < SCHEMA_VERSION:
            await db.execute(MIGRATIONS[version])
            version += 1
        await db.execute("UPDATE schema_version SET version = %s", (version,))


_TABLES_QUERY = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"


async def _one(db: AsyncConnection[Any], query: str) -> Any:
    row = await (await db.execute(query)).fetchone()
    return None if row is None else row[0]


# Texts: PostgreSQL's text cannot hold U+0000. A text holding U+0000 or U+0001 has each U+0001
# written as U+0001 "1" and each U+0000 as U+0001 "0" (the SQLite store's escape for its JSON
# batches); every other text, nearly all of them, is stored as it is.
def escape(text: str) -> str:
    if "\x00" in text or "\x01" in text:
        return text.replace("\x01", "\x011").replace("\x00", "\x010")
    return text


def unescape(text: str) -> str:
    if "\x01" in text:
        # "\x010" first: after it, every U+0001 left is followed by "1".
        return text.replace("\x010", "\x00").replace("\x011", "\x01")
    return text


def first_conflict(
    writes: Sequence[RoomWrite], heads: Mapping[str, int], every_room: bool = False
) -> StoreConflict | None:
    """The conflict of the first write whose records do not continue its room's stored head
    (``heads``: the heads before the commit; a room not in it is new). With ``every_room``,
    ``heads`` should hold every room of the commit, just inserted if new: a room missing was
    deleted (purged by another process) meanwhile, and is a conflict whatever the write."""
    for write in writes:
        if every_room and write.room_id not in heads:
            return StoreConflict(write.room_id, 1, write.records[0].version if write.records else write.head + 1)
        head = heads.get(write.room_id, 0)
        if write.records and write.records[0].version != head + 1:
            return StoreConflict(write.room_id, head + 1, write.records[0].version)
    return None


async def heads_of(db: AsyncConnection[Any], room_ids: Collection[str]) -> dict[str, int]:
    """The stored head of each of ``room_ids`` that is stored."""
    rows = await db.execute(
        "SELECT room_id, head FROM rooms WHERE room_id = ANY(%s::text[])", ([escape(i) for i in room_ids],)
    )
    return {unescape(room_id): head for room_id, head in await rows.fetchall()}


# The rooms of (room_id, version) pairs that have that version stored already.
_STORED_VERSIONS = """
SELECT DISTINCT room_id FROM updates JOIN unnest(%s::text[], %s::bigint[]) AS b(room_id, version)
    USING (room_id, version)
"""


async def stored_already(db: AsyncConnection[Any], writes: Sequence[RoomWrite]) -> StoreConflict | None:
    """The conflict of a commit refused for a version stored already that the heads did not show
    (a race lost all the same, or updates stored past the room's head); None if none is."""
    pairs = [(escape(write.room_id), r.version) for write in writes for r in write.records]
    rooms = await db.execute(_STORED_VERSIONS, columns(pairs, 2))
    stored = {unescape(room_id) for (room_id,) in await rooms.fetchall()}
    heads = await heads_of(db, {write.room_id for write in writes})
    for write in writes:
        if write.records and write.room_id in stored:
            head = heads.get(write.room_id, 0)
            return first_conflict(writes, heads) or StoreConflict(write.room_id, head + 1, write.records[0].version)
    return None


# The statements of a commit. Rooms are inserted and then locked in room_id order, so that two
# commits sharing rooms wait for each other and never deadlock.
INSERT_ROOMS = """
INSERT INTO rooms (room_id, epoch, language, head, oldest, created, updated)
SELECT room_id, epoch, language, 0, 0, %(now)s, %(now)s
FROM unnest(%(rooms)s::text[], %(epochs)s::text[], %(languages)s::text[]) AS b(room_id, epoch, language)
ORDER BY room_id
ON CONFLICT (room_id) DO NOTHING
"""
LOCK_ROOMS = "SELECT room_id, head, epoch FROM rooms WHERE room_id = ANY(%s::text[]) ORDER BY room_id FOR UPDATE"
# The access state stored now of rooms whose writes replace one (read under the rooms' locks).
ACCESS_OF = "SELECT room_id, access, notes FROM access WHERE room_id = ANY(%s::text[])"
# `Store.digest_of` each stored room's access state, notes and language, computed where they are.
ACCESS_DIGESTS = (
    "SELECT room_id, md5(coalesce(access.access, '')) || md5(coalesce(access.notes, '')) || md5(language) "
    "FROM rooms LEFT JOIN access USING (room_id) WHERE room_id = ANY(%s::text[])"
)
# Every stored room's access state and notes ("" when it has none stored).
ACCESSES = (
    "SELECT room_id, coalesce(access.access, ''), coalesce(access.notes, ''), language FROM rooms "
    "LEFT JOIN access USING (room_id) WHERE room_id = ANY(%s::text[])"
)
# A room's language is written only by a write that changed it: another process's write with
# the language it had before must not undo a change it has not heard of yet.
_UPDATE_ROOMS = """
UPDATE rooms SET language = CASE WHEN b.changed THEN b.language ELSE rooms.language END, head = b.head, updated = %s
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::boolean[]) AS b(room_id, language, head, changed)
WHERE rooms.room_id = b.room_id
"""
_INSERT_UPDATES = """
INSERT INTO updates (room_id, version, client_id, seq, changes, user_id, author, color, time)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::float8[])
"""
_UPSERT_CLIENTS = """
INSERT INTO clients (room_id, client_id, seq, version, token)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[])
ON CONFLICT (room_id, client_id) DO UPDATE SET seq = excluded.seq, version = excluded.version,
    token = CASE excluded.token WHEN '' THEN clients.token ELSE excluded.token END
"""
_UPSERT_SNAPSHOTS = """
INSERT INTO snapshots (room_id, version, text) SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[])
ON CONFLICT (room_id, version) DO UPDATE SET text = excluded.text
"""
_UPSERT_ACCESS = """
INSERT INTO access (room_id, access, notes) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT (room_id) DO UPDATE SET access = excluded.access, notes = excluded.notes
"""
# A room's runs are numbered after its stored ones, in the order given; a run_id stored already
# (a retried commit) is skipped.
_INSERT_RUNS = """
INSERT INTO runs (room_id, serial, run_id, version, user_id, author, color, language, kind, started,
    duration_ms, status, truncated, output, tests)
SELECT b.room_id, coalesce((SELECT max(serial) FROM runs AS stored WHERE stored.room_id = b.room_id), 0) + b.n,
    b.run_id, b.version, b.user_id, b.author, b.color, b.language, b.kind, b.started, b.duration_ms, b.status,
    b.truncated, b.output, b.tests
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::float8[], %s::bigint[], %s::text[], %s::bool[], %s::text[], %s::text[])
    WITH ORDINALITY AS b(room_id, run_id, version, user_id, author, color, language, kind, started, duration_ms,
        status, truncated, output, tests, n)
ORDER BY b.n
ON CONFLICT (room_id, run_id) DO NOTHING
"""
_TRIM_RUNS = """
DELETE FROM runs USING (
    SELECT room_id, serial FROM (
        SELECT room_id, serial, row_number() OVER (PARTITION BY room_id ORDER BY serial DESC) AS newer
        FROM runs WHERE room_id = ANY(%s::text[])
    ) AS ranked WHERE newer > %s
) AS old
WHERE runs.room_id = old.room_id AND runs.serial = old.serial
"""

# Reading
RECORD = "version, client_id, seq, changes, user_id, author, color, time"
RUN = "run_id, version, user_id, author, color, language, kind, started, duration_ms, status, truncated, output, tests"
# A room's records after its newest snapshot, and after `h` versions before its head if that is earlier.
LOAD_RECORDS = f"""
SELECT {RECORD} FROM updates WHERE room_id = %(r)s AND version > least(
    coalesce((SELECT max(version) FROM snapshots WHERE room_id = %(r)s), 0),
    (SELECT head FROM rooms WHERE room_id = %(r)s) - %(h)s
) ORDER BY version
"""
# The newest snapshot at or before `v`, and the records after it up to `v`.
_BASE = "(SELECT max(version) FROM snapshots WHERE room_id = %(r)s AND version <= %(v)s)"
SNAPSHOT_AT = f"SELECT version, text FROM snapshots WHERE room_id = %(r)s AND version = {_BASE}"
RECORDS_TO = f"""
SELECT {RECORD} FROM updates WHERE room_id = %(r)s AND version > coalesce({_BASE}, 0) AND version <= %(v)s
ORDER BY version
"""
# One query: the room's row (none: an unknown room) and its records after `since`, if any.
HISTORY = f"""
SELECT u.* FROM rooms LEFT JOIN LATERAL (
    SELECT {RECORD} FROM updates WHERE updates.room_id = rooms.room_id AND version > %s
    ORDER BY version LIMIT greatest(%s, 0)
) AS u ON true WHERE rooms.room_id = %s
"""
EXPIRED = "FROM rooms WHERE updated < %s AND room_id <> ALL(%s::text[])"
# A batch of expired rooms, deleted with everything of theirs. They are taken in code point
# order (collation "C", as Python sorts), each batch after the last; a room written meanwhile
# (`updated` moved while the lock was awaited) is not taken.
PURGE = f"""
WITH chosen AS (
    SELECT room_id {EXPIRED} AND room_id COLLATE "C" > %s ORDER BY room_id COLLATE "C" LIMIT %s FOR UPDATE
), updates_gone AS (DELETE FROM updates WHERE room_id IN (SELECT room_id FROM chosen)
), snapshots_gone AS (DELETE FROM snapshots WHERE room_id IN (SELECT room_id FROM chosen)
), clients_gone AS (DELETE FROM clients WHERE room_id IN (SELECT room_id FROM chosen)
), access_gone AS (DELETE FROM access WHERE room_id IN (SELECT room_id FROM chosen)
), runs_gone AS (DELETE FROM runs WHERE room_id IN (SELECT room_id FROM chosen))
DELETE FROM rooms WHERE room_id IN (SELECT room_id FROM chosen) RETURNING room_id
"""


def record_of(row: Sequence[Any]) -> Record:
    """A row of `RECORD`'s columns as a `Record`."""
    version, client_id, seq, changes, user_id, author, color, when = row
    u = unescape
    return Record(version, u(client_id), seq, u(changes), u(user_id), u(author), u(color), when)


def run_of(row: Sequence[Any]) -> RunRecord:
    """A row of `RUN`'s columns as a `RunRecord`."""
    run_id, version, user_id, author, color, language, kind, started, duration_ms, status, truncated, output, tests = (
        row
    )
    u = unescape
    return RunRecord(
        u(run_id), version, u(user_id), u(author), u(color), u(language), u(kind), started, duration_ms, u(status),
        truncated, u(output), u(tests),
    )  # fmt: skip


# Writing
Statement = tuple[str, Sequence[object]]


def check_values(writes: Sequence[RoomWrite]) -> None:
    """Raise `StoreError` unless every version, seq and run of ``writes`` can be stored as it is."""
    for write in writes:
        for record in write.records:
            if not (int64(record.version) and int64(record.seq)):
                raise StoreError(
                    f"room {write.room_id!r}: version {record.version!r} and seq {record.seq!r} must be 64-bit integers"
                )
        for run in write.runs:
            check_run(write.room_id, run)


def columns(rows: Iterable[Sequence[object]], width: int) -> list[list[object]]:
    """Rows as ``width`` column lists (what `unnest` takes back apart)."""
    result: list[list[object]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(result, row, strict=True):
            column.append(value)
    return result


def write_statements(
    writes: Sequence[RoomWrite], heads: Mapping[str, int], now: float, keep_runs: int
) -> list[Statement]:
    """The statements that store ``writes`` over rooms at ``heads`` (checked to follow them),
    each left out when it has nothing to write. Texts and room ids are escaped here."""
    e = escape
    rooms: dict[str, tuple[str, str, int, bool]] = {}
    updates: list[tuple[object, ...]] = []
    clients: dict[tuple[str, str], tuple[object, ...]] = {}
    snapshots: dict[tuple[str, int], tuple[object, ...]] = {}
    access: dict[str, tuple[object, ...]] = {}
    runs: list[tuple[object, ...]] = []
    for write in writes:
        room = e(write.room_id)
        head = write.records[-1].version if write.records else rooms.get(room, ("", "", heads[write.room_id], False))[2]
        changed = write.language_changed or rooms.get(room, ("", "", 0, False))[3]
        rooms[room] = (room, e(write.language), head, changed)
        for r in write.records:
            updates.append((room, r.version, e(r.client_id), r.seq, e(r.changes), e(r.user_id), e(r.author),
                            e(r.color), float(r.time)))  # fmt: skip
            clients[room, r.client_id] = (room, e(r.client_id), r.seq, r.version, e(write.tokens.get(r.client_id, "")))
        if write.snapshot is not None:
            snapshots[room, head] = (room, head, e(write.snapshot))
        if write.access is not None:
            access[room] = (room, e(write.access), e(write.notes))
        for run in write.runs:
            runs.append((room, e(run.run_id), run.version, e(run.user_id), e(run.author), e(run.color),
                         e(run.language), e(run.kind), float(run.started), run.duration_ms, e(run.status),
                         run.truncated, e(run.output), e(run.tests)))  # fmt: skip
    statements: list[Statement] = [(_UPDATE_ROOMS, [now, *columns(rooms.values(), 4)])]
    for query, rows, width in (
        (_INSERT_UPDATES, updates, 9),
        (_UPSERT_CLIENTS, list(clients.values()), 5),
        (_UPSERT_SNAPSHOTS, list(snapshots.values()), 3),
        (_UPSERT_ACCESS, list(access.values()), 3),
        (_INSERT_RUNS, runs, 14),
    ):
        if rows:
            statements.append((query, columns(rows, width)))
    if runs:
        statements.append((_TRIM_RUNS, [sorted({str(run[0]) for run in runs}), keep_runs]))
    return statements


# Pruning (`keep`: keep_versions): for each room, the newest snapshot at least `keep` versions
# behind the head (never past the newest snapshot) becomes the oldest kept version; the updates
# up to it and the snapshots before it go. A room whose first snapshot is still ahead keeps all.
PRUNE = """
WITH target AS (
    SELECT r.room_id, (
        SELECT max(s.version) FROM snapshots AS s WHERE s.room_id = r.room_id AND s.version <= greatest(0, least(
            r.head - %(keep)s, (SELECT max(l.version) FROM snapshots AS l WHERE l.room_id = r.room_id)))
    ) AS anchor
    FROM rooms AS r WHERE r.room_id = ANY(%(rooms)s::text[])
), updates_gone AS (
    DELETE FROM updates AS u USING target AS t WHERE u.room_id = t.room_id AND u.version <= t.anchor
), snapshots_gone AS (
    DELETE FROM snapshots AS s USING target AS t WHERE s.room_id = t.room_id AND s.version < t.anchor
)
UPDATE rooms SET oldest = t.anchor FROM target AS t
WHERE rooms.room_id = t.room_id AND t.anchor IS NOT NULL AND rooms.oldest <> t.anchor
"""
