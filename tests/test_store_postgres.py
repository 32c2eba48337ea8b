"""What only the PostgreSQL store must do: the database decides the order between processes (two
stores on one schema), connection loss and timeouts become `StoreError` and the pool recovers,
no secret in any message, and the schema's version is recorded, checked and migrated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import ValidationError

from rooms.settings import Settings
from rooms.store import (
    Record,
    RoomWrite,
    StaleWrite,
    StoreConflict,
    StoreCorrupt,
    StoreError,
    make_store,
    postgres_schema,
)
from rooms.store.postgres import PostgresStore
from tests.postgres_schemas import TEST_DATABASE_URL, connect, require_postgres, schema_of
from tests.postgres_schemas import postgres_dsn as postgres_dsn  # the fixture
from tests.test_store import Timeline
from tests.test_store_runs import a_run

SECRET = "hunter2-not-for-logs"
Stores = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
def dsn(postgres_dsn: str) -> str:
    """A fresh schema's DSN with a password (trust authentication ignores it): it must never show."""
    return make_conninfo(postgres_dsn, password=SECRET)


@pytest.fixture
async def stores(dsn: str) -> AsyncIterator[Stores]:
    """Opened stores on the one fresh schema (several processes sharing it), closed after."""
    opened: list[PostgresStore] = []

    async def make(**options: Any) -> PostgresStore:
        store = PostgresStore(dsn, pool_size=4, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@contextlib.asynccontextmanager
async def direct(dsn: str) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
    """A connection of the test's own to the schema (not the store's: another application name)."""
    async with await AsyncConnection.connect(make_conninfo(dsn, application_name="test-observer")) as db:
        yield db


async def backends(dsn: str, waiting: bool = False) -> list[int]:
    """The process ids of the store connections of ``dsn``'s schema (those waiting for a lock)."""
    async with direct(dsn) as db:
        await db.set_autocommit(True)
        rows = await db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND (NOT %s OR wait_event_type = 'Lock')",
            (conninfo_to_dict(dsn)["application_name"], waiting),
        )
        return [row[0] for row in await rows.fetchall()]


async def until_waiting(dsn: str, count: int) -> None:
    """Until ``count`` store connections wait for a lock (polled: PostgreSQL sends no event)."""
    async with asyncio.timeout(10):
        # Polled: a condition in another server, which tells no one when it changes.
        while len(await backends(dsn, waiting=True)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def room_locked(dsn: str, room_id: str = "r") -> AsyncIterator[None]:
    """Another transaction holds the room's row: commits of it wait until the block ends."""
    async with direct(dsn) as db, db.transaction():
        await db.execute("SELECT 1 FROM rooms WHERE room_id = %s FOR UPDATE", (room_id,))
        yield


def no_secret(exc: BaseException) -> bool:
    """Whether the password is nowhere in ``exc``'s message, nor in those of its causes."""
    return SECRET not in "".join(traceback.format_exception(exc))


async def start(store: PostgresStore, count: int = 2) -> Timeline:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(count))])
    return timeline


def mine(timeline: Timeline, text: str) -> Record:
    """The next record of a copy of ``timeline``: two stores each make their own version N+1."""
    return replace(timeline, texts=list(timeline.texts)).append(text)


# The database decides the order


async def test_of_two_stores_committing_the_same_version_one_wins_and_the_other_writes_nothing(
    stores: Stores, dsn: str
) -> None:
    first, second = await stores(), await stores()
    timeline = await start(first)
    records = {name: mine(timeline, name) for name in ("first", "second")}
    # Each batch also makes a room of its own, with a run: all of it or nothing is kept.
    batches = [
        [timeline.write([records[name]]), replace(Timeline(f"side-{name}").write(()), runs=[a_run(name)])]
        for name in records
    ]
    async with room_locked(dsn):  # both commits are under way before either may go on
        commits = [
            asyncio.ensure_future(store.commit(batch)) for store, batch in zip((first, second), batches, strict=True)
        ]
        await until_waiting(dsn, 2)
    results = await asyncio.gather(*commits, return_exceptions=True)
    [won] = [name for name, result in zip(records, results, strict=True) if result is None]
    [lost] = [result for result in results if result is not None]
    loser = "second" if won == "first" else "first"
    assert isinstance(lost, StoreConflict), lost
    assert (("r", 4, 3), [records[won]], None, [], [won]) == (
        (lost.room_id, lost.expected, lost.got),
        await second.history("r", 2, 10),
        await second.info(f"side-{loser}"),
        await second.runs(f"side-{loser}", 10),
        [run.run_id for run in await first.runs(f"side-{won}", 10)],
    )


async def test_racing_stores_build_one_unbroken_history(stores: Stores) -> None:
    first, second = await stores(), await stores()
    timeline = Timeline()
    for round_ in range(20):
        records = {first: mine(timeline, f"a{round_};"), second: mine(timeline, f"b{round_};")}
        results = await asyncio.gather(
            *(s.commit([timeline.write([r])]) for s, r in records.items()), return_exceptions=True
        )
        assert 1 == results.count(None), results
        assert all(isinstance(result, StoreConflict | None) for result in results), results
        winner = records[first] if results[0] is None else records[second]
        timeline.texts.append(winner.change_set().apply(timeline.text))
    assert (list(range(1, 21)), timeline.text) == (
        [record.version for record in await second.history("r", 0, 100)],
        (await first.load("r", history=0) or pytest.fail()).text(),
    )


async def test_of_two_stores_creating_the_same_room_one_wins(stores: Stores) -> None:
    first, second = await stores(), await stores()
    for index in range(10):
        room = f"new-{index}"
        results = await asyncio.gather(
            *(
                store.commit([Timeline(room).write([Timeline(room).append(name)])])
                for store, name in ((first, "a"), (second, "b"))
            ),
            return_exceptions=True,
        )
        assert (1, 1) == (results.count(None), sum(isinstance(r, StoreConflict) for r in results)), results
        assert {room: 1} == await second.head([room])


async def test_of_two_stores_making_the_same_room_with_two_epochs_the_second_is_stale(stores: Stores) -> None:
    """Two processes open a new room at once, each with its epoch: the second's first write
    (no records, only the room) is refused, so it loads the room the first one made."""
    first, second = await stores(), await stores()
    await first.commit([RoomWrite("r", "epoch-a", "python")])
    with pytest.raises(StaleWrite) as refused:
        await second.commit([RoomWrite("r", "epoch-b", "python")])
    assert refused.value.epoch
    info = await second.info("r")
    assert info is not None and "epoch-a" == info.epoch


async def test_a_write_over_an_access_state_stored_meanwhile_is_stale_and_writes_nothing(stores: Stores) -> None:
    first, second = await stores(), await stores()
    timeline = Timeline()
    await first.commit([timeline.write(timeline.appends(1))])
    await first.commit([replace(timeline.write([]), access='{"a":1}', notes="n", access_base=("", ""))])
    stale = replace(timeline.write([timeline.append("x")]), access='{"b":2}', access_base=("", ""))
    with pytest.raises(StaleWrite) as refused:
        await second.commit([stale])
    assert not refused.value.epoch
    assert ('{"a":1}', 1) == (await second.access("r"), (await second.head(["r"]))["r"])
    assert {"r": ('{"a":1}', "n", "python")} == await second.accesses(["r", "unknown"])
    await second.commit([replace(stale, access_base=('{"a":1}', "n"))])  # read again: it takes
    assert '{"b":2}' == await second.access("r")


async def test_a_write_that_did_not_change_the_language_keeps_the_one_stored(stores: Stores) -> None:
    """Another process changed it meanwhile: a write with the language it had before must not
    undo that."""
    first, second = await stores(), await stores()
    timeline = Timeline()
    await first.commit([timeline.write(timeline.appends(1))])
    await first.commit([replace(timeline.write([]), language="rust")])
    await second.commit([replace(timeline.write([timeline.append("x")]), language="python", language_changed=False)])
    info = await second.info("r")
    assert info is not None and ("rust", 2) == (info.language, info.version)


async def test_a_stored_version_beyond_the_head_is_a_conflict(stores: Stores, dsn: str) -> None:
    # The primary key is the second guard: a version stored already is never stored twice.
    store = await stores()
    timeline = await start(store)
    copy = "INSERT INTO updates SELECT room_id, 3, client_id, seq, changes, user_id, author, color, time FROM updates"
    async with direct(dsn) as db:  # version 3 stored, the head left at 2
        await db.execute(f"{copy} WHERE room_id = 'r' AND version = 2")
        await db.commit()
    other = Timeline("other")
    with pytest.raises(StoreConflict) as raised:
        await store.commit([other.write(other.appends(1)), timeline.write(timeline.appends(1))])
    assert (("r", 3), None, {"r": 2}) == (
        (raised.value.room_id, raised.value.got),
        await store.info("other"),
        await store.head(["r"]),
    )


async def test_a_room_purged_by_another_store_is_a_conflict_for_the_one_still_writing_it(stores: Stores) -> None:
    writer, purger = await stores(), await stores()
    timeline = await start(writer)
    assert ["r"] == await purger.purge(time.time() + 3600, keep=())
    with pytest.raises(StoreConflict) as raised:
        await writer.commit([timeline.write(timeline.appends(1))])
    assert ((1, 3), None) == ((raised.value.expected, raised.value.got), await writer.info("r"))


# Failures: StoreError, with no secret, and the pool recovers


async def test_a_dropped_connection_fails_the_commit_in_progress_and_the_next_one_succeeds(
    stores: Stores, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="psycopg")
    store = await stores()
    timeline = await start(store)
    record = timeline.append("after")
    async with room_locked(dsn):
        commit = asyncio.ensure_future(store.commit([timeline.write([record])]))
        await until_waiting(dsn, 1)
        async with direct(dsn) as db:
            await db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (await backends(dsn),))
            await db.commit()
        with pytest.raises(StoreError) as raised:
            await commit
    await store.commit([timeline.write([record])])
    await store.check()
    assert ([1, 2, 3], True, True) == (
        [r.version for r in await store.history("r", 0, 10)],
        no_secret(raised.value),
        SECRET not in caplog.text,
    )
    assert f"PostgreSQL {store.where}: a commit failed" in str(raised.value)


async def test_connections_dropped_while_idle_are_replaced_unnoticed(stores: Stores, dsn: str) -> None:
    store = await stores()
    timeline = await start(store)
    await asyncio.gather(*(store.info("r") for _ in range(4)))  # several pooled connections
    async with direct(dsn) as db:
        await db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (await backends(dsn),))
        await db.commit()
    await store.commit([timeline.write(timeline.appends(1))])
    await store.check()
    assert [1, 2, 3] == [record.version for record in await store.history("r", 0, 10)]


async def test_a_statement_longer_than_the_timeout_fails_with_store_error(stores: Stores, dsn: str) -> None:
    store = await stores(timeout=0.3)
    timeline = await start(store)
    write = timeline.write(timeline.appends(1))
    async with room_locked(dsn):
        with pytest.raises(StoreError, match="statement timeout"):
            await asyncio.wait_for(store.commit([write]), 5)
    await store.commit([write])
    assert {"r": 3} == await store.head(["r"])


async def passes_again(store: PostgresStore, seconds: float = 10.0) -> None:
    """`check` passes within ``seconds``: a busy machine may not answer within a short
    ``check_timeout`` (perhaps over a new connection), so failed checks are retried until then.
    A probe still running is waited on again, not replaced."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await store.check()
            return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_check_fails_when_the_probe_gets_no_answer_in_time_then_passes_again(stores: Stores, dsn: str) -> None:
    store = await stores(check_timeout=0.2)
    async with direct(dsn) as db, db.transaction():
        await db.execute("LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreError, match=r"no answer within 0\.2 s"):
            await store.check()
    await passes_again(store)


@pytest.mark.parametrize("where", ["127.0.0.1:1/test", "127.0.0.1:5432/no_such_database"])
async def test_a_database_that_cannot_be_reached_fails_open_and_check_without_secrets(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="psycopg")
    store = PostgresStore(f"postgresql://postgres:{SECRET}@{where}", timeout=1)
    with pytest.raises(StoreError) as opening:
        await store.open()
    with pytest.raises(StoreError) as checking:
        await store.check()
    await store.close()
    assert (True, True, True) == (no_secret(opening.value), no_secret(checking.value), SECRET not in caplog.text)
    assert f"PostgreSQL {where}: opening the store failed" in str(opening.value)


def test_an_invalid_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(StoreError) as raised:
        PostgresStore(f"postgresql://postgres:{SECRET}@[bad")
    assert no_secret(raised.value)


# The schema: made, recorded, checked, migrated


def tables_and_version(dsn: str) -> tuple[list[str], list[object]]:
    """The schema's tables, and the rows of its schema_version table ([] without one)."""
    with connect() as db:
        schema = schema_of(dsn)
        tables = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))
        names = [str(row[0]) for row in tables.fetchall()]
        if "schema_version" not in names:
            return names, []
        rows = db.execute(sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(schema)))
        return names, [row[0] for row in rows.fetchall()]


async def test_a_new_schema_gets_every_table_and_its_version_once(stores: Stores, dsn: str) -> None:
    await asyncio.gather(stores(), stores(), stores())  # processes starting at once
    expected = sorted([*postgres_schema.TABLES, "schema_version"])
    assert (expected, [postgres_schema.SCHEMA_VERSION]) == tables_and_version(dsn)


@pytest.mark.parametrize("damage", ["newer", "no_version", "missing_table"])
async def test_a_schema_this_version_cannot_use_is_refused_and_left_as_it_is(
    stores: Stores, dsn: str, damage: str
) -> None:
    await (await stores()).close()
    statement = {
        "newer": "UPDATE schema_version SET version = version + 1",
        "no_version": "DROP TABLE schema_version",
        "missing_table": "DROP TABLE runs",
    }[damage]
    async with direct(dsn) as db:
        await db.execute(statement)
        await db.commit()
    before = tables_and_version(dsn)
    with pytest.raises(StoreCorrupt, match="left as it is") as raised:
        await stores()
    assert (True, True, before) == (
        schema_of(dsn) in str(raised.value),
        no_secret(raised.value),
        tables_and_version(dsn),
    )


async def test_an_older_schema_is_migrated_in_one_transaction(
    stores: Stores, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores()
    timeline = await start(store)
    await store.close()
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", {1: "ALTER TABLE rooms ADD COLUMN a text", 2: "SELECT 1/0"})
    with pytest.raises(StoreError, match="division by zero"):
        await stores()  # the second step fails: nothing of the first is kept
    query = "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
    async with direct(dsn) as db:
        columns = await db.execute(f"{query} AND table_name = 'rooms'")
        assert ([1], False) == (tables_and_version(dsn)[1], ("a",) in await columns.fetchall())
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", {1: "ALTER TABLE rooms ADD COLUMN a text", 2: "SELECT 1"})
    again = await stores()
    assert ([3], timeline.text) == (tables_and_version(dsn)[1], (await again.load("r", 0) or pytest.fail()).text())


async def test_a_search_path_naming_no_schema_is_refused_clearly() -> None:
    require_postgres()
    store = PostgresStore(make_conninfo(TEST_DATABASE_URL, options="-csearch_path=s_nowhere_at_all"), timeout=2)
    with pytest.raises(StoreError, match="search_path names no schema that exists"):
        await store.open()
    await store.close()


# Settings of this store


def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STORE", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"STORE": "postgres"}, "DATABASE_URL must be set when STORE=postgres"),
        ({"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379/0"}, "REDIS_URL is set but STORE=sqlite"),
        (
            {"STORE": "memory", "REDIS_URL": f"redis://:{SECRET}@h", "DATABASE_URL": f"postgresql://u:{SECRET}@h/db"},
            "STORE=postgres",
        ),
    ],
)
def test_settings_refuse_what_postgres_and_redis_need_without_repeating_urls(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    no_environment(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message) as raised:
        Settings()
    assert SECRET not in str(raised.value)


def test_make_store_builds_the_postgres_store_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    no_environment(monkeypatch)
    url = f"postgresql://u:{SECRET}@db.example:6543/rooms"
    settings = Settings(store="postgres", database_url=url, database_pool_size=3, database_timeout_seconds=4)
    store = make_store(settings)
    assert isinstance(store, PostgresStore)
    assert ("db.example:6543/rooms", 3, 4, 200, False) == (
        store.where,
        store.pool_size,
        store.timeout,
        store.keep_runs,
        SECRET in repr(settings),
    )
