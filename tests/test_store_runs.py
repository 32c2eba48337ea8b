"""Finished runs of code in every store: stored with the commit that carries them, all or nothing,
the newest ``keep_runs`` per room, a retried run skipped, deleted with the room; and the SQLite
file migrated to hold them."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from rooms.settings import Settings
from rooms.store import RoomWrite, RunRecord, Store, StoreConflict, StoreCorrupt, StoreError, make_store, sqlite_schema
from rooms.store.sqlite import NEWEST_RUNS, SqliteStore
from tests.postgres_schemas import TEST_DATABASE_URL
from tests.test_store import BACKENDS, Clock, Timeline, new_store, place
from tests.test_store_access import old_file
from tests.test_store_hardening import make_version_1

StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
async def make_runs_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opened stores of the parametrized backend keeping ``keep_runs`` runs per room, closed after."""
    opened: list[Store] = []
    with contextlib.ExitStack() as places:

        async def make(keep_runs: int = 200, clock: Callable[[], float] = time.time) -> Store:
            directory = tmp_path / f"store-{len(opened)}"
            directory.mkdir()
            dsn = place(request.param, places)
            store = new_store(request.param, directory, clock=clock, keep_runs=keep_runs, dsn=dsn)
            await store.open()
            opened.append(store)
            return store

        yield make
        for store in opened:
            await store.close()


def a_run(run_id: str = "run-1", **changes: object) -> RunRecord:
    run = RunRecord(
        run_id=run_id,
        version=3,
        user_id="u-c1",
        author="Ann",
        color="#aa5500",
        language="python",
        kind="code",
        started=1_700_000_000.25,
        duration_ms=42,
        status="ok",
        truncated=False,
        output=json.dumps([["stdout", "hello\n"]]),
    )
    return replace(run, **changes)


def runs_write(timeline: Timeline, *runs: RunRecord) -> RoomWrite:
    """A write of ``runs`` only: no records, the room's head as it is."""
    return replace(timeline.write(()), runs=runs)


async def run_ids(store: Store, room_id: str = "r", limit: int = 1000) -> list[str]:
    return [run.run_id for run in await store.runs(room_id, limit)]


# Storing and reading


TESTS = json.dumps(
    [{"name": "small", "passed": True, "error": None, "args": [[2, 7], 9], "expected": [0, 1], "actual": [0, 1]}]
)


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(a_run(), id="code"),
        pytest.param(
            a_run(kind="tests", status="error", truncated=True, tests=TESTS, duration_ms=2**63 - 1), id="tests"
        ),
        pytest.param(a_run(output=json.dumps([["stderr", "a\x00b \x01 😀 漢字"]], ensure_ascii=False)), id="control"),
        pytest.param(a_run("r\x00n", author="A\x01\x000", version=-(2**63)), id="nul_in_ids"),
        pytest.param(a_run(started=1_700_000_000), id="whole_second"),
    ],
)
async def test_a_run_comes_back_as_it_was_committed(make_runs_store: StoreFactory, run: RunRecord) -> None:
    store = await make_runs_store()
    timeline = Timeline()
    await store.commit([replace(timeline.write(timeline.appends(3)), runs=[run])])
    [stored] = await store.runs("r", 10)
    assert (run, bool, int, int) == (stored, type(stored.truncated), type(stored.version), type(stored.duration_ms))


async def test_runs_gives_the_newest_limit_oldest_first(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store()
    timeline = Timeline()
    await store.commit([replace(timeline.write(timeline.appends(1)), runs=[a_run("a"), a_run("b")])])
    await store.commit([runs_write(timeline, a_run("c"))])
    # Two writes of one room in one commit: stored in the order given.
    await store.commit([runs_write(timeline, a_run("d")), runs_write(timeline, a_run("e"), a_run("f"))])
    assert (["d", "e", "f"], ["a", "b", "c", "d", "e", "f"], [], []) == (
        await run_ids(store, limit=3),
        await run_ids(store),
        await run_ids(store, limit=0),
        await run_ids(store, "unknown"),
    )


async def test_the_order_is_the_order_stored_not_the_start_time(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store()
    timeline = Timeline()
    # A long run started first and ended (was stored) after a short one.
    await store.commit([runs_write(timeline, a_run("short", started=20.0)), runs_write(timeline)])
    await store.commit([runs_write(timeline, a_run("long", started=10.0))])
    assert ["short", "long"] == await run_ids(store)


async def test_a_write_of_runs_only_keeps_the_rooms_text_and_history(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store()
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(2), snapshot=True)])
    before = await store.load("r", history=10)
    await store.commit([runs_write(timeline, a_run())])
    after = await store.load("r", history=10)
    assert (before, ["run-1"]) == (after, await run_ids(store))


# Keeping the newest


async def test_a_room_keeps_its_newest_keep_runs_runs(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store(keep_runs=3)
    timeline, other = Timeline(), Timeline("other")
    await store.commit([runs_write(timeline, a_run("a"), a_run("b")), runs_write(other, a_run("x"))])
    await store.commit([runs_write(timeline, a_run("c"), a_run("d"))])
    await store.commit([runs_write(timeline, a_run("e"), a_run("f"), a_run("g"), a_run("h"))])
    # Each room is trimmed on its own: the other room's one run stays.
    assert (["f", "g", "h"], ["x"]) == (await run_ids(store), await run_ids(store, "other"))


async def test_a_write_without_runs_trims_nothing(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store(keep_runs=2)
    timeline = Timeline()
    await store.commit([runs_write(timeline, a_run("a"), a_run("b"))])
    await store.commit([timeline.write(timeline.appends(1))])
    assert ["a", "b"] == await run_ids(store)


# A retried commit


async def test_a_run_id_stored_already_is_skipped_without_an_error(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store()
    timeline, other = Timeline(), Timeline("other")
    first = a_run("same", status="ok")
    await store.commit([runs_write(timeline, first, a_run("next"))])
    record = timeline.append("x")
    # The same run again (a retried commit), with other values even: nothing of it replaces the stored one,
    # and the rest of the commit is stored; the same id in another room is another run.
    again = a_run("same", status="lost")
    await store.commit([replace(timeline.write([record]), runs=[again, again]), runs_write(other, again)])
    assert ([first, a_run("next")], [again], [1]) == (
        await store.runs("r", 10),
        await store.runs("other", 10),
        [stored.version for stored in await store.history("r", 0, 10)],
    )


# All or nothing


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2**63}, "64-bit"),
        ({"duration_ms": -(2**63) - 1}, "64-bit"),
        ({"duration_ms": 1.5}, "64-bit"),
        ({"version": True}, "64-bit"),
        ({"truncated": 1}, "bool"),
        ({"started": math.nan}, "finite"),
        ({"started": "1700000000"}, "finite"),
        ({"output": None}, "output None must be a str"),
        ({"tests": b"[]"}, "tests b'\\[\\]' must be a str"),
    ],
)
async def test_a_run_with_a_bad_value_fails_the_whole_commit(
    make_runs_store: StoreFactory, changes: dict[str, object], message: str
) -> None:
    store = await make_runs_store()
    timeline, other = Timeline(), Timeline("other")
    await store.commit([timeline.write(timeline.appends(1))])
    record = timeline.append("x")
    with pytest.raises(StoreError, match=message) as raised:
        await store.commit(
            [runs_write(other, a_run("fine")), replace(timeline.write([record]), runs=[a_run(**changes)])]
        )
    assert not isinstance(raised.value, StoreConflict)
    assert (None, [], [1]) == (
        await store.info("other"),
        await store.runs("r", 10),
        [stored.version for stored in await store.history("r", 0, 10)],
    )


async def test_runs_of_a_commit_refused_as_out_of_order_are_not_stored(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store()
    timeline, other = Timeline(), Timeline("other")
    await store.commit([timeline.write(timeline.appends(1))])
    # The other room's records do not follow its stored head (none): the whole commit is refused.
    out_of_order = replace(other.append("x"), version=5)
    with pytest.raises(StoreConflict):
        await store.commit([runs_write(timeline, a_run("a")), other.write([out_of_order])])
    # The room's own records do not follow its head: its runs are refused with them.
    with pytest.raises(StoreConflict):
        await store.commit([replace(timeline.write([replace(timeline.append("y"), version=9)]), runs=[a_run("b")])])
    assert ([], None) == (await store.runs("r", 10), await store.info("other"))


# Retention


async def test_purge_deletes_a_rooms_runs_with_it(make_runs_store: StoreFactory) -> None:
    store = await make_runs_store(clock=Clock(1_000.0))
    await store.commit([runs_write(Timeline("gone"), a_run("a")), runs_write(Timeline("kept"), a_run("b"))])
    assert ["gone"] == await store.purge(1_500.0, keep={"kept"})
    # Made again with the same id, the room has none of the old runs, and the old run_id is new again.
    await store.commit([runs_write(Timeline("gone"), a_run("c"), a_run("a"))])
    assert (["c", "a"], ["b"]) == (await run_ids(store, "gone"), await run_ids(store, "kept"))


async def test_purge_deletes_the_runs_rows_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    store = SqliteStore(path, synchronous="normal", clock=Clock(1_000.0))
    await store.open()
    try:
        await store.commit([runs_write(Timeline("gone"), a_run("a")), runs_write(Timeline("kept"), a_run("b"))])
        assert ["gone"] == await store.purge(1_500.0, keep={"kept"})
    finally:
        await store.close()
    assert [("kept", "b")] == rows(path, "SELECT room_id, run_id FROM runs")


# The SQLite file


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.execute(query))


async def test_runs_survive_closing_and_opening_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    runs = [a_run("a"), a_run("b", kind="tests", tests=TESTS, truncated=True)]
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    try:
        await store.commit([runs_write(Timeline(), *runs)])
    finally:
        await store.close()
    again = SqliteStore(path, synchronous="normal", keep_runs=2)
    await again.open()
    try:
        assert runs == await again.runs("r", 10)
        # Stored after the reopening, numbered after the runs stored before it.
        await again.commit([runs_write(Timeline(), a_run("c"))])
        assert ["b", "c"] == await run_ids(again)
    finally:
        await again.close()


async def test_a_rooms_newest_runs_are_read_from_its_primary_key_range(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        plan = [str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {NEWEST_RUNS}", ("r", 3))]
    # The outer sort orders the few rows read, never the room's or the table's runs.
    assert any("SEARCH runs USING PRIMARY KEY (room_id=?)" in step for step in plan), plan
    assert not any(step.startswith("SCAN runs") for step in plan), plan


def make_version_3(path: Path) -> None:
    """A version-3 file (today's schema without the runs table) with one private room at version 1."""
    with old_file(path, 3, ("runs",)) as db:
        db.execute("INSERT INTO access VALUES ('r', '{\"private\":true}', 'notes')")


async def test_a_version_3_file_is_migrated_and_then_stores_runs(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    make_version_3(path)
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    try:
        loaded = await store.load("r", history=10)
        assert loaded is not None
        assert ("ab", '{"private":true}', "notes", {"c1": "aa11"}, []) == (
            loaded.text(),
            loaded.access,
            loaded.notes,
            loaded.tokens,
            await store.runs("r", 10),
        )
        await store.commit([RoomWrite("r", "e1", "go", (), None, 1, runs=[a_run()])])
    finally:
        await store.close()
    again = SqliteStore(path, synchronous="normal")
    await again.open()  # the current version now: opened as it is
    try:
        assert (4, [a_run()], "ab") == (
            rows(path, "PRAGMA user_version")[0][0],
            await again.runs("r", 10),
            (await again.load("r", history=10) or pytest.fail()).text(),
        )
    finally:
        await again.close()


async def test_a_version_1_file_is_migrated_through_every_version_and_stores_runs(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    make_version_1(path)
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    try:
        await store.commit([RoomWrite("r", "e1", "go", (), None, 2, runs=[a_run()])])
        assert ([a_run()], "abc") == (await store.runs("r", 10), (await store.load("r", 10) or pytest.fail()).text())
    finally:
        await store.close()
    assert sqlite_schema.SCHEMA_VERSION == rows(path, "PRAGMA user_version")[0][0]


async def test_a_current_version_file_without_the_runs_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    make_version_3(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {sqlite_schema.SCHEMA_VERSION}")
    store = SqliteStore(path, synchronous="normal")
    with pytest.raises(StoreCorrupt, match="schema version 4"):
        await store.open()
    await store.close()


# Settings


@pytest.mark.parametrize("backend", BACKENDS)
def test_make_store_keeps_the_configured_number_of_runs(backend: str, tmp_path: Path) -> None:
    # Made, not opened: no database is needed.
    url = TEST_DATABASE_URL if backend == "postgres" else ""
    settings = Settings(store=backend, data_dir=tmp_path, max_stored_runs_per_room=7, database_url=url)
    assert 7 == make_store(settings).keep_runs
