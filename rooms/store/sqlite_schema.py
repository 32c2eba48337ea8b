"""The SQLite store's file format: its schema, the checks of a file before it is used, the
migrations from older versions, the files' modes, and the temporary trigger through which every
commit is written (one statement per commit).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path

from rooms.store import RoomWrite

SCHEMA_VERSION = 4
HEADER = b"SQLite format 3\x00"
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# Runs of code that ended in a room, kept per room in the order they were stored (``serial``,
# counted per room): "the newest N of a room" reads the end of the room's primary key range.
# A run_id is stored once per room: a retried commit's runs are skipped, not stored twice.
RUNS_TABLE = """
CREATE TABLE runs (
    room_id TEXT NOT NULL,
    serial INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    author TEXT NOT NULL,
    color TEXT NOT NULL,
    language TEXT NOT NULL,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    duration_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    truncated INTEGER NOT NULL,
    output TEXT NOT NULL,
    tests TEXT NOT NULL,
    PRIMARY KEY (room_id, serial),
    UNIQUE (room_id, run_id)
) WITHOUT ROWID;
"""

SCHEMA = (
    """
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
    token TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (room_id, client_id)
) WITHOUT ROWID;
CREATE TABLE access (
    room_id TEXT PRIMARY KEY,
    access TEXT NOT NULL,
    notes TEXT NOT NULL
) WITHOUT ROWID;
"""
    + RUNS_TABLE
)
# The tables every schema version has (a migration adds the others).
TABLES = {"rooms", "updates", "snapshots", "clients"}
# The statements that bring a file of schema version N to N + 1.
MIGRATIONS = {
    1: "ALTER TABLE clients ADD COLUMN token TEXT NOT NULL DEFAULT '';",
    2: "CREATE TABLE access (room_id TEXT PRIMARY KEY, access TEXT NOT NULL, notes TEXT NOT NULL) WITHOUT ROWID;",
    3: RUNS_TABLE,
}

# Commits: one JSON batch, spread over the tables by a trigger of the writer's connection
# (temporary: nothing of it is in the file). The batch is [rooms, updates, clients, snapshots,
# time, access, runs, keep_runs] (`encode`): rooms as [room_id, epoch, language, head or null,
# first version or null], updates and clients as their tables' columns, snapshots as [room_id,
# text] (at the room's new head), access as [room_id, access, notes] for the rooms whose access
# or notes changed, runs as [room_id, run_id, version, ..., tests] (`RunRecord`'s fields in
# order), and keep_runs the number of runs kept per room: a room's older runs are deleted in the
# same transaction as its new ones are stored.
# Every room of the batch gets `updated`, with records or without (a room opened, a language
# changed), so that retention counts from the last use.
CONFLICT = "collab: the first version of a commit does not follow the head of its room"
# A JSON number beyond 64 bits reads as REAL, which the INTEGER columns would keep as REAL and
# every later comparison of versions would go wrong: such a commit is refused as a whole. The
# rooms' and clients' versions and seqs are those of the records, so checking these suffices.
NOT_INTEGER = "collab: a version or seq of a commit is not a 64-bit integer"


# Texts: SQLite's JSON functions cut a string at its first NUL (U+0000), which would store a
# shorter text, or merge the client ids "a\0b" and "a\0c" (and their tokens) into "a". A batch
# with a NUL or U+0001 anywhere has every text escaped (`escaped`) and goes to a second trigger,
# the same but for unescaping each text (`_unescaped`); the first, for every other batch, pays
# nothing for it.
def _plain(row: str, index: int) -> str:
    return f"{row} ->> {index}"


def _unescaped(row: str, index: int) -> str:
    """SQL for the text at ``index`` of a batch row, unescaped (see `escaped`)."""
    return f"replace(replace({row} ->> {index}, char(1, 48), char(0)), char(1, 49), char(1))"


def _commit_trigger(name: str, when: str, t: Callable[[str, int], str]) -> str:
    """The trigger that spreads a batch over the tables, taking its texts with ``t``."""
    return f"""
CREATE TEMP TRIGGER {name} INSTEAD OF INSERT ON incoming WHEN {when} BEGIN
    SELECT RAISE(ABORT, '{NOT_INTEGER}') FROM json_each(NEW.batch, '$[1]')
        WHERE typeof(value ->> 1) != 'integer' OR typeof(value ->> 3) != 'integer';
    SELECT RAISE(ABORT, '{CONFLICT}') FROM json_each(NEW.batch, '$[0]') AS r
        WHERE r.value ->> 4 IS NOT NULL
        AND r.value ->> 4 != coalesce((SELECT version FROM rooms WHERE room_id = {t("r.value", 0)}), 0) + 1;
    INSERT INTO rooms (room_id, epoch, language, version, created, updated)
        SELECT {t("value", 0)}, {t("value", 1)}, {t("value", 2)},
            coalesce(value ->> 3, (SELECT version FROM rooms AS stored WHERE stored.room_id = {t("value", 0)}), 0),
            NEW.batch ->> 4, NEW.batch ->> 4
        FROM json_each(NEW.batch, '$[0]') WHERE true
        ON CONFLICT (room_id) DO UPDATE
            SET language = excluded.language, version = excluded.version, updated = excluded.updated;
    INSERT INTO updates
        SELECT {t("value", 0)}, value ->> 1, {t("value", 2)}, value ->> 3, {t("value", 4)},
            {t("value", 5)}, {t("value", 6)}, {t("value", 7)}, value ->> 8
        FROM json_each(NEW.batch, '$[1]');
    INSERT INTO clients (room_id, client_id, seq, version, token)
        SELECT {t("value", 0)}, {t("value", 1)}, value ->> 2, value ->> 3, {t("value", 4)}
        FROM json_each(NEW.batch, '$[2]') WHERE true
        ON CONFLICT (room_id, client_id) DO UPDATE SET seq = excluded.seq, version = excluded.version,
            token = CASE excluded.token WHEN '' THEN clients.token ELSE excluded.token END;
    INSERT OR REPLACE INTO snapshots
        SELECT {t("value", 0)}, (SELECT version FROM rooms WHERE room_id = {t("value", 0)}), {t("value", 1)}
        FROM json_each(NEW.batch, '$[3]');
    INSERT OR REPLACE INTO access
        SELECT {t("value", 0)}, {t("value", 1)}, {t("value", 2)} FROM json_each(NEW.batch, '$[5]');
    INSERT INTO runs
        SELECT {t("value", 0)},
            coalesce((SELECT max(serial) FROM runs AS stored WHERE stored.room_id = {t("value", 0)}), 0) + key + 1,
            {t("value", 1)}, value ->> 2, {t("value", 3)}, {t("value", 4)}, {t("value", 5)}, {t("value", 6)},
            {t("value", 7)}, value ->> 8, value ->> 9, {t("value", 10)}, value ->> 11, {t("value", 12)},
            {t("value", 13)}
        FROM json_each(NEW.batch, '$[6]') WHERE true
        ON CONFLICT (room_id, run_id) DO NOTHING;
    DELETE FROM runs WHERE (room_id, serial) IN (
        SELECT room_id, serial FROM (
            SELECT room_id, serial, row_number() OVER (PARTITION BY room_id ORDER BY serial DESC) AS newer
            FROM runs WHERE room_id IN (SELECT {t("value", 0)} FROM json_each(NEW.batch, '$[6]'))
        ) WHERE newer > NEW.batch ->> 7
    );
END;
"""


COMMIT_TRIGGER = (
    "CREATE TEMP VIEW incoming (batch, escaped) AS SELECT NULL, NULL;"
    + _commit_trigger("incoming_commit", "NOT NEW.escaped", _plain)
    + _commit_trigger("incoming_commit_escaped", "NEW.escaped", _unescaped)
)


def escaped(value: object) -> object:
    """``value`` with every text's U+0001 written as U+0001 "1" and U+0000 as U+0001 "0"."""
    if isinstance(value, str):
        return value.replace("\x01", "\x011").replace("\x00", "\x010")
    if isinstance(value, list):
        return [escaped(item) for item in value]
    return value


def encode(writes: Sequence[RoomWrite], now: float, keep_runs: int) -> tuple[str, bool]:
    """A commit as the `incoming` view takes it: the batch's JSON, and whether its texts are
    escaped (see `escaped`)."""
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
            [write.room_id, client, seq, version, write.tokens.get(client, "")]
            for write in writes
            for client, (seq, version) in {r.client_id: (r.seq, r.version) for r in write.records}.items()
        ],
        [[write.room_id, write.snapshot] for write in writes if write.snapshot is not None],
        now,
        [[write.room_id, write.access, write.notes] for write in writes if write.access is not None],
        [[write.room_id, *astuple(run)] for write in writes for run in write.runs],
        keep_runs,
    ]
    encoded = _JSON.encode(batch)
    # How the encoder writes U+0000 and U+0001 (or a text holding such an escape: rare, and
    # escaping it too does no harm).
    with_control = "\\u0000" in encoded or "\\u0001" in encoded
    if with_control:
        encoded = _JSON.encode(escaped(batch))
    return encoded, with_control


def check_file(connection: sqlite3.Connection) -> str | None:
    """What makes an existing file unusable (damage, another schema), or None when it is fine.
    Raises `sqlite3.DatabaseError` when it cannot even be read."""
    problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if problems != ["ok"]:
        return "integrity check: " + "; ".join(problems[:3])
    # The tables a migration adds are checked once the file is at the version that has them.
    required = TABLES | ({"access", "runs"} if version == SCHEMA_VERSION else set())
    if not (version == SCHEMA_VERSION or version in MIGRATIONS) or not required <= tables:
        return f"schema version {version} with tables {sorted(tables)}, expected {SCHEMA_VERSION}"
    return None


def migrate(connection: sqlite3.Connection) -> None:
    """Bring a file of an older schema version to `SCHEMA_VERSION`, in one transaction."""
    if connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")  # read the version under the write lock: migrate once
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        while version < SCHEMA_VERSION:
            connection.execute(MIGRATIONS[version])
            version += 1
        connection.execute(f"PRAGMA user_version = {version}")
        connection.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise


def _narrow(path: Path, mode: int) -> None:
    """Take away every permission of ``path`` beyond ``mode``."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(current & mode)


def make_private(path: Path) -> None:
    """The database's directory 0700 and its files 0600, created so or narrowed if more open:
    they hold every room's text."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours to change (a shared parent): the files still are
        _narrow(directory, 0o700)
    # Created before SQLite opens it, so that it never exists with a wider mode; SQLite gives
    # the -wal and -shm files it creates the database file's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            _narrow(file, 0o600)
