"""A room's access state and interviewers' notes in both stores: kept from the write that carries
them, left alone by the others, deleted with the room; and the SQLite file migrated to hold them."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rooms.access import Access, Role
from rooms.store import RoomWrite, Store, sqlite_schema
from rooms.store.sqlite import SqliteStore
from tests.test_store import Clock, Timeline
from tests.test_store import make_store as make_store  # the fixture: each backend, closed after

StoreFactory = Callable[..., Awaitable[Store]]


def private_access(*, locked: bool = False, ended: bool = False) -> str:
    access = Access(private=True, locked=locked, ended=ended)
    for role in Role:
        access.add_link(role, 1_700_000_000.0)
    return access.to_json()


async def stored(store: Store, room_id: str = "r") -> tuple[str, str]:
    loaded = await store.load(room_id, history=10)
    assert loaded is not None, f"room {room_id!r} is not stored"
    return loaded.access, loaded.notes


async def test_a_write_with_access_stores_it_with_the_notes(make_store: StoreFactory) -> None:
    store = await make_store()
    timeline = Timeline()
    access = private_access(locked=True)
    await store.commit([replace(timeline.write(timeline.appends(1)), access=access, notes="good tests")])
    assert ((access, "good tests"), access) == (await stored(store), await store.access("r"))


async def test_writes_without_access_keep_the_stored_access_and_notes(make_store: StoreFactory) -> None:
    store = await make_store()
    timeline = Timeline()
    access = private_access()
    await store.commit([replace(timeline.write(()), access=access, notes="first impressions")])
    await store.commit([timeline.write(timeline.appends(2))])
    # `notes` is ignored without `access`: both are given together when either changed.
    await store.commit([replace(timeline.write(timeline.appends(1), language="go"), notes="not stored")])
    assert (access, "first impressions") == await stored(store)


async def test_a_later_write_with_access_replaces_both(make_store: StoreFactory) -> None:
    store = await make_store()
    timeline = Timeline()
    await store.commit([replace(timeline.write(()), access=private_access(), notes="a")])
    ended = private_access(locked=True, ended=True)
    await store.commit([replace(timeline.write(timeline.appends(1)), access=ended, notes="")])
    assert (ended, "") == await stored(store)


async def test_an_open_room_has_empty_access_and_an_unknown_one_none(make_store: StoreFactory) -> None:
    store = await make_store()
    timeline = Timeline("open")
    await store.commit([timeline.write(timeline.appends(1))])
    assert (("", ""), "", None) == (await stored(store, "open"), await store.access("open"), await store.access("x"))


async def test_one_commit_keeps_each_rooms_access_apart(make_store: StoreFactory) -> None:
    store = await make_store()
    first, second, third = Timeline("a"), Timeline("b"), Timeline("c")
    running, ended = private_access(), private_access(ended=True)
    await store.commit(
        [
            replace(first.write(first.appends(1)), access=running, notes="notes of a"),
            second.write(second.appends(1)),
            replace(third.write(()), access=ended, notes="notes of c"),
        ]
    )
    assert [(running, "notes of a"), ("", ""), (ended, "notes of c")] == [await stored(store, r) for r in "abc"]


@pytest.mark.parametrize(
    "notes",
    [
        pytest.param("before\x00after", id="nul"),
        pytest.param("\x01\x000\x011 and \x00", id="escape_characters"),
        pytest.param("ok 😀 漢字", id="astral_and_cjk"),
    ],
)
async def test_notes_with_any_character_survive(make_store: StoreFactory, notes: str) -> None:
    store = await make_store()
    timeline = Timeline()
    access = private_access()
    await store.commit([replace(timeline.write(timeline.appends(1)), access=access, notes=notes)])
    assert (access, notes) == await stored(store)


async def test_a_purged_room_loses_its_access_and_notes(make_store: StoreFactory) -> None:
    clock = Clock(1_000.0)
    store = await make_store(clock=clock)
    timeline = Timeline()
    await store.commit([replace(timeline.write(timeline.appends(1)), access=private_access(), notes="n")])
    assert ["r"] == await store.purge(1_500.0, keep=())
    assert None is await store.access("r")
    # Made again with the same id, it is an open room: nothing of the old access comes back.
    again = Timeline()
    await store.commit([again.write(again.appends(1))])
    assert (("", ""), "") == (await stored(store), await store.access("r"))


async def test_purge_deletes_the_access_row_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    store = SqliteStore(path, synchronous="normal", clock=Clock(1_000.0))
    await store.open()
    try:
        for room_id in ("gone", "kept"):
            timeline = Timeline(room_id)
            await store.commit([replace(timeline.write(()), access=private_access(), notes=room_id)])
        assert ["gone"] == await store.purge(1_500.0, keep={"kept"})
    finally:
        await store.close()
    assert [("kept", "kept")] == rows(path, "SELECT room_id, notes FROM access")


# Schema version 3: the access table, migrated in place from version 2


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.execute(query))


@contextlib.contextmanager
def old_file(path: Path, version: int, missing: tuple[str, ...]) -> Iterator[sqlite3.Connection]:
    """A file of schema ``version`` (today's schema without the ``missing`` tables) with one room
    at version 1, open for the caller to add rows of its own."""
    tables = "|".join(missing)
    schema = re.sub(rf"CREATE TABLE ({tables}) \(.*?\) WITHOUT ROWID;", "", sqlite_schema.SCHEMA, flags=re.DOTALL)
    assert all(f"CREATE TABLE {table} " not in schema for table in missing)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(f"BEGIN; {schema} PRAGMA user_version = {version}; COMMIT;")
        db.execute("INSERT INTO rooms VALUES ('r', 'e1', 'go', 1, 0, 1.0, 2.0)")
        db.execute("INSERT INTO updates VALUES ('r', 1, 'c1', 1, '[[0,\"ab\"]]', 'u1', 'Ann', '#aa5500', 1.5)")
        db.execute("INSERT INTO clients VALUES ('r', 'c1', 1, 1, 'aa11')")
        yield db


def make_version_2(path: Path) -> None:
    """A version-2 file (today's schema without the access and runs tables) with one open room at version 1."""
    with old_file(path, 2, ("access", "runs")):
        pass


async def test_a_version_2_file_is_migrated_and_then_stores_access(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    make_version_2(path)
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    try:
        loaded = await store.load("r", history=10)
        assert loaded is not None
        assert ("ab", "", "", {"c1": "aa11"}) == (loaded.text(), loaded.access, loaded.notes, loaded.tokens)
        assert "" == await store.access("r")  # a room from before private rooms is open
        record = replace(Timeline().append("ab"), version=2, changes='[2,[0,"c"]]', seq=2)
        access = private_access()
        await store.commit([RoomWrite("r", "e1", "go", [record], None, 2, access=access, notes="migrated")])
    finally:
        await store.close()
    again = SqliteStore(path, synchronous="normal")
    await again.open()  # the current version now: opened as it is
    try:
        reloaded = await again.load("r", history=10)
        assert reloaded is not None
        assert (sqlite_schema.SCHEMA_VERSION, "abc", access, "migrated") == (
            rows(path, "PRAGMA user_version")[0][0],
            reloaded.text(),
            reloaded.access,
            reloaded.notes,
        )
    finally:
        await again.close()
