"""What only the SQLite store must do to stay safe: threads kept apart, the schema migrated in
place, private files, purges that let commits through, and the retention command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from rooms import retention
from rooms.settings import Settings
from rooms.store import Record, RoomWrite, StoreError, sqlite_schema
from rooms.store import replay as store_replay
from rooms.store.sqlite import SqliteStore
from tests.conftest import begun
from tests.test_store import Clock, Timeline, commit_room, pragma

WAIT = 10.0  # seconds a test waits for something that should take milliseconds, before failing
DAY = 86_400.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "rooms.sqlite3", synchronous="normal", api_read_threads=2)
    await store.open()
    yield store
    await store.close()


async def commit_text(store: SqliteStore, room_id: str = "r") -> Timeline:
    timeline = Timeline(room_id)
    await store.commit([timeline.write(timeline.appends(3), snapshot=True)])
    await store.commit([timeline.write(timeline.appends(3))])
    return timeline


async def wait_for_thread_event(event: threading.Event) -> None:
    if not await asyncio.to_thread(event.wait, WAIT):
        pytest.fail("the event was not set in time")


# Threads: API reads, loads and the readiness probe never wait for one another


async def test_a_load_and_a_check_complete_while_slow_api_reads_hold_every_api_thread(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeline = await commit_text(store)
    await commit_text(store, "other")
    release = threading.Event()
    started = threading.Barrier(2)  # passed once both API threads are inside a read
    both_started = threading.Event()

    def slow_replay(text: str, version: int, records: Sequence[Record], until: int | None = None) -> str:
        # Stands for the replay of a room with large updates: seconds of work on an API thread.
        if not release.is_set():
            started.wait(WAIT)
            both_started.set()
        release.wait(WAIT)
        return store_replay(text, version, records, until)

    monkeypatch.setattr("rooms.store.sqlite.replay", slow_replay)
    reads = [asyncio.create_task(store.text_at("r", version)) for version in (5, 6, 4)]
    try:
        await wait_for_thread_event(both_started)
        loaded = await asyncio.wait_for(store.load("other", history=0), WAIT)
        await asyncio.wait_for(store.check(), WAIT)
        assert (False, "other") == (any(read.done() for read in reads), (loaded or pytest.fail()).info.room_id)
    finally:
        release.set()
    assert [timeline.texts[5], timeline.texts[6], timeline.texts[4]] == await asyncio.gather(*reads)


async def test_api_reads_run_at_once_each_in_its_own_transaction(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeline = await commit_text(store)
    # Each read waits inside its transaction for the other: only two threads, each with its own
    # connection, get both through (one shared connection cannot begin a second transaction).
    together = threading.Barrier(2, timeout=WAIT)

    def meeting_replay(text: str, version: int, records: Sequence[Record], until: int | None = None) -> str:
        together.wait()
        return store_replay(text, version, records, until)

    monkeypatch.setattr("rooms.store.sqlite.replay", meeting_replay)
    texts = await asyncio.gather(store.text_at("r", 2), store.text_at("r", 5))
    assert [timeline.texts[2], timeline.texts[5]] == list(texts)


async def test_check_fails_when_the_probe_gets_no_answer_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "rooms.sqlite3", check_timeout=0.05)
    await store.open()
    release = threading.Event()
    opened = SqliteStore._opened

    def stuck(self: SqliteStore, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        release.wait(WAIT)  # a disk that does not answer
        return opened(self, connection)

    monkeypatch.setattr(SqliteStore, "_opened", stuck)
    try:
        with pytest.raises(StoreError, match=r"no answer within 0\.05 s"):
            await store.check()
    finally:
        release.set()
        monkeypatch.undo()
        await store.close()


async def test_close_closes_every_api_connection(store: SqliteStore) -> None:
    await commit_text(store)
    await asyncio.gather(*(store.text_at("r", version) for version in range(7)))
    connections = list(store._api_connections)
    await store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        connections[0].execute("SELECT 1")
    with pytest.raises(StoreError, match="is not open"):
        await store.info("r")


# Schema version 2: the client's token, migrated in place from version 1


# The schema of version 1, as its files were made.
SCHEMA_V1 = """
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, language TEXT NOT NULL, version INTEGER NOT NULL,
    oldest INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE updates (
    room_id TEXT NOT NULL, version INTEGER NOT NULL, client_id TEXT NOT NULL, seq INTEGER NOT NULL,
    changes TEXT NOT NULL, user_id TEXT NOT NULL, author TEXT NOT NULL, color TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (room_id, version)
) WITHOUT ROWID;
CREATE TABLE snapshots (
    room_id TEXT NOT NULL, version INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (room_id, version)
) WITHOUT ROWID;
CREATE TABLE clients (
    room_id TEXT NOT NULL, client_id TEXT NOT NULL, seq INTEGER NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (room_id, client_id)
) WITHOUT ROWID;
"""


def make_version_1(path: Path) -> None:
    """A version-1 file with one room: versions 1 and 2 by c1 (seq 7 and 8), a snapshot at 1."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(f"BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;")
        db.execute("INSERT INTO rooms VALUES ('r', 'e1', 'go', 2, 0, 1.0, 2.0)")
        for version, changes in ((1, '[[0,"ab"]]'), (2, '[2,[0,"c"]]')):
            db.execute(
                "INSERT INTO updates VALUES ('r', ?, 'c1', ?, ?, 'u1', 'Ann', '#aa5500', 1.5)",
                (version, version + 6, changes),
            )
        db.execute("INSERT INTO snapshots VALUES ('r', 1, 'ab')")
        db.execute("INSERT INTO clients VALUES ('r', 'c1', 8, 2)")


def columns(path: Path, table: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


async def test_a_version_1_file_is_migrated_in_place_and_keeps_its_rooms(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    make_version_1(path)
    store = SqliteStore(path)
    await store.open()
    try:
        loaded = await store.load("r", history=10)
        assert loaded is not None
        assert ("abc", {"c1": (8, 2)}, {}, 2) == (loaded.text(), loaded.clients, loaded.tokens, loaded.info.version)
        record = Record(3, "c1", 9, '[3,[0,"d"]]')
        await store.commit([RoomWrite("r", "e1", "go", [record], None, 3, tokens={"c1": "aa11"})])
    finally:
        await store.close()
    again = SqliteStore(path)
    await again.open()  # the current version now: opened as it is
    try:
        reloaded = await again.load("r", history=10)
        assert (sqlite_schema.SCHEMA_VERSION, "token", "abcd", {"c1": "aa11"}) == (
            pragma(path, "user_version"),
            columns(path, "clients")[-1],
            (reloaded or pytest.fail()).text(),
            (reloaded or pytest.fail()).tokens,
        )
    finally:
        await again.close()


async def test_a_migration_that_fails_leaves_the_file_at_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rooms.sqlite3"
    make_version_1(path)
    # A version 5 whose step fails after the steps to versions 2, 3 and 4 went through: none is kept.
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 5)
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", {**sqlite_schema.MIGRATIONS, 4: "ALTER TABLE nowhere ADD x"})
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="nowhere"):
        await store.open()
    await store.close()
    assert (1, ["room_id", "client_id", "seq", "version"]) == (pragma(path, "user_version"), columns(path, "clients"))


# Private files


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems start with: files 0644 and directories 0755 unless asked otherwise."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("usual_umask")
async def test_a_new_data_directory_and_database_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "rooms.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        await commit_text(store)  # the -wal and -shm files exist while the store is open
        assert [0o700, 0o600, 0o600, 0o600] == [
            mode(path.parent),
            mode(path),
            mode(Path(f"{path}-wal")),
            mode(Path(f"{path}-shm")),
        ]
    finally:
        await store.close()


@pytest.mark.usefixtures("usual_umask")
async def test_an_existing_database_and_directory_more_open_are_made_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "rooms.sqlite3"
    store = SqliteStore(path)
    await store.open()
    timeline = await commit_text(store)
    await store.close()
    path.parent.chmod(0o755)
    path.chmod(0o644)
    await store.open()
    try:
        assert (0o700, 0o600, timeline.text) == (mode(path.parent), mode(path), await store.text_at("r", 6))
    finally:
        await store.close()


# Purging


async def test_a_commit_waits_for_one_purge_batch_not_for_the_whole_purge(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    store = SqliteStore(tmp_path / "rooms.sqlite3", synchronous="normal", purge_batch=1, clock=clock)
    await store.open()
    try:
        for index in range(40):
            await commit_room(store, f"old-{index:02}")
        clock.now = 2_000.0
        purge = await begun(store.purge(1_500.0, keep=()))  # it hands its first batch to the writer
        await commit_room(store, "new")
        assert (False, 40) == (purge.done(), len(await purge))
    finally:
        await store.close()


async def test_purged_rooms_are_given_back_to_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    clock = Clock(1_000.0)
    store = SqliteStore(path, synchronous="normal", clock=clock)
    await store.open()
    for index in range(30):
        timeline = Timeline(f"room-{index}")
        await store.commit([timeline.write([timeline.append("x" * 2_000) for _ in range(20)], snapshot=True)])
    await store.close()
    full = store.file_size()  # closed: the write-ahead log is checkpointed into the file
    await store.open()
    assert 30 == len(await store.purge(2_000.0, keep=()))
    await store.close()
    assert store.file_size() < full * 0.2, (store.file_size(), full)


# The retention command


def settings_for(tmp_path: Path, days: float = 30) -> Settings:
    return Settings(data_dir=tmp_path / "data", room_retention_days=days)


async def make_rooms(path: Path, ages: dict[str, float]) -> None:
    """Rooms last written ``ages[room_id]`` days ago."""
    for room_id, age in ages.items():
        store = SqliteStore(path, synchronous="normal", clock=Clock(time.time() - age * DAY))
        await store.open()
        await commit_room(store, room_id)
        await store.close()


async def stored_rooms(path: Path) -> list[str]:
    store = SqliteStore(path)
    await store.open()
    try:
        return [room_id for room_id in ("secret-old", "secret-older", "recent") if await store.info(room_id)]
    finally:
        await store.close()


AGES = {"secret-old": 40.0, "secret-older": 400.0, "recent": 1.0}


def test_the_command_deletes_rooms_older_than_the_retention_and_prints_only_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path)
    asyncio.run(make_rooms(settings.database_path, AGES))
    status = retention.main([], settings)
    out = capsys.readouterr().out
    assert (0, "deleted 2 rooms unused for 30 days\n", ["recent"]) == (
        status,
        out,
        asyncio.run(stored_rooms(settings.database_path)),
    )


@pytest.mark.parametrize(("argv", "expected"), [(["--days", "100"], ["secret-old", "recent"]), (["--days", "0.5"], [])])
def test_the_command_takes_days_from_its_option(tmp_path: Path, argv: list[str], expected: list[str]) -> None:
    settings = settings_for(tmp_path)
    asyncio.run(make_rooms(settings.database_path, AGES))
    assert (0, expected) == (retention.main(argv, settings), asyncio.run(stored_rooms(settings.database_path)))


def test_the_command_with_dry_run_counts_and_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path)
    asyncio.run(make_rooms(settings.database_path, AGES))
    status = retention.main(["--dry-run"], settings)
    assert (0, "2 rooms unused for 30 days would be deleted\n", list(AGES)) == (
        status,
        capsys.readouterr().out,
        asyncio.run(stored_rooms(settings.database_path)),
    )


def test_the_command_refuses_when_rooms_are_kept_forever(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(tmp_path, days=0)
    asyncio.run(make_rooms(settings.database_path, AGES))
    status = retention.main([], settings)
    assert (2, list(AGES)) == (status, asyncio.run(stored_rooms(settings.database_path)))
    assert "ROOM_RETENTION_DAYS is 0" in capsys.readouterr().err


def test_the_command_runs_beside_a_server_that_keeps_committing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    async def scenario() -> tuple[int, list[str], str]:
        await make_rooms(settings.database_path, AGES)
        server = SqliteStore(settings.database_path)
        await server.open()
        try:
            timeline = Timeline("live")
            await server.commit([timeline.write(timeline.appends(1))])
            status = await asyncio.to_thread(retention.main, [], settings)
            await server.commit([timeline.write(timeline.appends(1))])
            return status, await stored_rooms(settings.database_path), await server.text_at("live", 2)
        finally:
            await server.close()

    assert (0, ["recent"], "1;2;") == asyncio.run(scenario())


def test_python_m_rooms_retention_reads_its_settings_from_the_environment(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    asyncio.run(make_rooms(settings.database_path, AGES))
    env = {**os.environ, "DATA_DIR": str(settings.data_dir), "ROOM_RETENTION_DAYS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "rooms.retention"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert (0, "deleted 1 rooms unused for 100 days\n") == (done.returncode, done.stdout), done.stderr
