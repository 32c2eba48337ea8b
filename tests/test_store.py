"""The store contract, run against every backend, and what only the SQLite file must do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.changes import ChangeSet, index_to_utf16, utf16_len
from rooms.store import (
    HistoryUnavailable,
    Record,
    RoomInfo,
    RoomWrite,
    StaleWrite,
    Store,
    StoreConflict,
    StoreCorrupt,
    StoreError,
)
from rooms.store.memory import MemoryStore
from rooms.store.postgres import PostgresStore
from rooms.store.sqlite import SqliteStore
from tests.postgres_schemas import fresh_schema, require_postgres

BACKENDS = ["memory", "sqlite", "postgres"]

StoreFactory = Callable[..., Awaitable[Store]]


@dataclass
class Clock:
    """The time a store writes with, moved by the test."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def new_store(
    backend: str,
    directory: Path,
    keep_versions: int = 0,
    clock: Callable[[], float] = time.time,
    purge_batch: int = 500,
    keep_runs: int = 200,
    dsn: str = "",
) -> Store:
    """A store of ``backend``: in ``directory`` (SQLite), or for PostgreSQL at ``dsn`` (`place`)."""
    if backend == "memory":
        return MemoryStore(keep_versions=keep_versions, clock=clock, keep_runs=keep_runs)
    if backend == "postgres":
        return PostgresStore(
            dsn, keep_versions=keep_versions, clock=clock, purge_batch=purge_batch, keep_runs=keep_runs, pool_size=4
        )
    # Surviving a power cut is SQLite's business, not the contract's: NORMAL keeps these fast.
    return SqliteStore(
        directory / "rooms.sqlite3",
        keep_versions=keep_versions,
        synchronous="normal",
        clock=clock,
        purge_batch=purge_batch,
        keep_runs=keep_runs,
    )


def place(backend: str, places: contextlib.ExitStack) -> str:
    """Where a new store of ``backend`` keeps its rooms, for `new_store`'s ``dsn``: a fresh
    PostgreSQL schema (dropped when ``places`` closes), "" for the others."""
    return places.enter_context(fresh_schema()) if backend == "postgres" else ""


@pytest.fixture(params=BACKENDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opened stores of the parametrized backend, each in its own directory or schema, closed after."""
    opened: list[Store] = []
    with contextlib.ExitStack() as places:

        async def make(keep_versions: int = 0, clock: Callable[[], float] = time.time, purge_batch: int = 500) -> Store:
            directory = tmp_path / f"store-{len(opened)}"
            directory.mkdir()
            dsn = place(request.param, places)
            store = new_store(request.param, directory, keep_versions, clock, purge_batch, dsn=dsn)
            await store.open()
            opened.append(store)
            return store

        yield make
        for store in opened:
            await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


@dataclass
class Timeline:
    """Builds one room's records and remembers the text every version must have."""

    room_id: str = "r"
    texts: list[str] = field(default_factory=lambda: [""])

    @property
    def head(self) -> int:
        return len(self.texts) - 1

    @property
    def text(self) -> str:
        return self.texts[-1]

    def edit(self, start: int, end: int, insert: str, client_id: str = "c1", seq: int | None = None) -> Record:
        """Replace UTF-16 units ``start`` to ``end`` of the current text."""
        changes = ChangeSet.of_replace(utf16_len(self.text), start, end, insert)
        self.texts.append(changes.apply(self.text))
        return Record(
            version=self.head,
            client_id=client_id,
            seq=self.head if seq is None else seq,
            changes=json.dumps(changes.to_json(), ensure_ascii=False),
            user_id="u-" + client_id,
            author="Ann",
            color="#aa5500",
            time=1_700_000_000.0 + self.head,
        )

    def append(self, insert: str, client_id: str = "c1", seq: int | None = None) -> Record:
        end = utf16_len(self.text)
        return self.edit(end, end, insert, client_id, seq)

    def appends(self, count: int) -> list[Record]:
        return [self.append(f"{self.head + 1};") for _ in range(count)]

    def write(self, records: Sequence[Record], snapshot: bool = False, language: str = "python") -> RoomWrite:
        return RoomWrite(self.room_id, "epoch-1", language, records, self.text if snapshot else None, self.head)


async def info_of(store: Store, room_id: str = "r") -> RoomInfo:
    info = await store.info(room_id)
    assert info is not None, f"room {room_id!r} is not stored"
    return info


async def versions(store: Store, room_id: str = "r") -> list[int]:
    return [record.version for record in await store.history(room_id, since=0, limit=100_000)]


async def commit_in_steps(store: Store, timeline: Timeline, count: int, snapshot_every: int) -> list[int]:
    """``count`` commits of one record each, a snapshot each ``snapshot_every`` versions; the
    ``oldest`` the store reports after each."""
    oldest = []
    for _ in range(count):
        record = timeline.append(f"{timeline.head + 1};")
        await store.commit([timeline.write([record], snapshot=record.version % snapshot_every == 0)])
        oldest.append((await info_of(store, timeline.room_id)).oldest)
    return oldest


# Committing and loading


async def test_load_gives_the_head_text_language_epoch_and_records_after_the_snapshot(store: Store) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(3), snapshot=True)])
    await store.commit([timeline.write(timeline.appends(2), language="rust")])
    loaded = await store.load("r", history=0)
    assert loaded is not None
    assert (RoomInfo("r", "epoch-1", "rust", 5, 0), 3, timeline.texts[3], [4, 5], timeline.text) == (
        loaded.info,
        loaded.snapshot_version,
        loaded.snapshot_text,
        [record.version for record in loaded.records],
        loaded.text(),
    )


async def test_load_with_history_also_returns_records_before_a_newer_snapshot(store: Store) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(10), snapshot=True)])
    loaded = await store.load("r", history=4)
    assert loaded is not None
    assert (10, [7, 8, 9, 10], timeline.text) == (
        loaded.snapshot_version,
        [record.version for record in loaded.records],
        loaded.text(),
    )


async def test_load_with_more_history_than_stored_returns_every_record(store: Store) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(6), snapshot=True)])
    loaded = await store.load("r", history=100)
    assert loaded is not None
    assert [1, 2, 3, 4, 5, 6] == [record.version for record in loaded.records]


async def test_records_keep_their_author_colour_and_time(store: Store) -> None:
    timeline = Timeline()
    records = [timeline.append("a😀", client_id="c1"), timeline.append("b", client_id="c2", seq=7)]
    await store.commit([timeline.write(records)])
    assert records == await store.history("r", since=0, limit=10)


async def test_the_epoch_of_the_first_commit_is_kept(store: Store) -> None:
    """A store several processes write refuses a write in another epoch (another process made
    the room at the same time: the writer's room is not the stored one); the others take it."""
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(1))])
    later = RoomWrite("r", "epoch-2", "python", timeline.appends(1), None, timeline.head)
    if store.shared:
        with pytest.raises(StaleWrite):
            await store.commit([later])
        assert 1 == (await info_of(store)).version
    else:
        await store.commit([later])
    assert "epoch-1" == (await info_of(store)).epoch


async def test_a_language_change_alone_is_stored(store: Store) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(2))])
    await store.commit([timeline.write([], language="go")])
    assert RoomInfo("r", "epoch-1", "go", 2, 0) == await store.info("r")


async def test_clients_table_keeps_the_last_seq_and_version_of_each_client(store: Store) -> None:
    timeline = Timeline()
    first = [timeline.append("a", "c1", seq=1), timeline.append("b", "c2", seq=1), timeline.append("c", "c1", seq=2)]
    await store.commit([timeline.write(first)])
    await store.commit([timeline.write([timeline.append("d", "c1", seq=5)])])
    loaded = await store.load("r", history=0)
    assert loaded is not None
    assert {"c1": (5, 4), "c2": (1, 2)} == loaded.clients


async def test_one_commit_writes_several_rooms(store: Store) -> None:
    first, second = Timeline("a"), Timeline("b")
    await store.commit([first.write(first.appends(2)), second.write(second.appends(3))])
    assert ([1, 2], [1, 2, 3]) == (await versions(store, "a"), await versions(store, "b"))


async def test_a_commit_larger_than_one_statement_writes_every_room_record_and_client(store: Store) -> None:
    # Over a hundred rooms, records and clients: the SQLite store writes them in several statements.
    timelines = [Timeline(f"room-{index}") for index in range(130)]
    await store.commit(
        [
            timeline.write([timeline.append(str(n), f"c{n}", seq=1) for n in range(index % 3 + 1)], snapshot=index == 7)
            for index, timeline in enumerate(timelines)
        ]
    )
    for index, timeline in enumerate(timelines):
        loaded = await store.load(timeline.room_id, history=10)
        assert loaded is not None
        assert (timeline.head, timeline.text) == (loaded.info.version, loaded.text())
        assert {f"c{n}": (1, n + 1) for n in range(index % 3 + 1)} == loaded.clients
    long = Timeline("long")
    await store.commit([long.write(long.appends(250))])
    assert list(range(1, 251)) == await versions(store, "long")


# Conflicts


async def test_a_commit_that_skips_versions_raises_conflict(store: Store) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(2))])
    timeline.appends(1)
    with pytest.raises(StoreConflict) as raised:
        await store.commit([timeline.write(timeline.appends(1))])
    assert ("r", 3, 4) == (raised.value.room_id, raised.value.expected, raised.value.got)


async def test_a_commit_that_repeats_stored_versions_raises_conflict_and_keeps_the_stored_records(
    store: Store,
) -> None:
    timeline = Timeline()
    records = timeline.appends(2)
    await store.commit([timeline.write(records)])
    other = Timeline()
    with pytest.raises(StoreConflict):
        await store.commit([other.write([other.append("other"), other.append("text")])])
    assert records == await store.history("r", since=0, limit=10)


async def test_a_new_rooms_first_record_must_be_version_one(store: Store) -> None:
    timeline = Timeline()
    timeline.appends(1)
    with pytest.raises(StoreConflict):
        await store.commit([timeline.write(timeline.appends(1))])
    assert None is await store.info("r")


async def test_a_conflict_in_one_room_keeps_nothing_of_the_commit(store: Store) -> None:
    good, bad = Timeline("good"), Timeline("bad")
    await store.commit([good.write(good.appends(2)), bad.write(bad.appends(2))])
    stored_bad = await store.load("bad", history=10)
    bad.appends(1)  # never committed: the commit below does not continue the stored head
    # The good room comes first, so a backend writing room by room has written it already.
    with pytest.raises(StoreConflict):
        await store.commit(
            [good.write(good.appends(3), snapshot=True, language="go"), bad.write(bad.appends(1), snapshot=True)]
        )
    assert (RoomInfo("good", "epoch-1", "python", 2, 0), [1, 2], good.texts[2], stored_bad) == (
        await store.info("good"),
        await versions(store, "good"),
        (await store.load("good", history=0) or pytest.fail()).text(),
        await store.load("bad", history=10),
    )


async def test_a_conflict_does_not_create_the_new_rooms_of_its_commit(store: Store) -> None:
    fresh, bad = Timeline("fresh"), Timeline("bad")
    bad.appends(1)
    with pytest.raises(StoreConflict):
        await store.commit([fresh.write(fresh.appends(1)), bad.write(bad.appends(1))])
    assert (None, None) == (await store.info("fresh"), await store.info("bad"))


# Text at a version, history


@pytest.mark.parametrize("snapshot_every", [1, 3, 7, 100])
async def test_text_at_every_version_equals_the_model(store: Store, snapshot_every: int) -> None:
    timeline = Timeline()
    for step in range(24):
        # Edits in the middle of the text, some with astral characters: positions are UTF-16
        # units, taken at character boundaries.
        text = timeline.text
        middle = len(text) // 2
        start, end = index_to_utf16(text, middle), index_to_utf16(text, min(len(text), middle + step % 3))
        record = timeline.edit(start, end, ["ab", "😀", "中文\n", "x"][step % 4])
        await store.commit([timeline.write([record], snapshot=record.version % snapshot_every == 0)])
    assert timeline.texts == [await store.text_at("r", version) for version in range(timeline.head + 1)]


async def test_history_pages_through_the_records_oldest_first(store: Store) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(10), snapshot=True)])
    pages = [await store.history("r", since, limit=4) for since in (0, 4, 8, 10)]
    assert [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10], []] == [[record.version for record in page] for page in pages]


async def test_an_unknown_room_loads_as_none(store: Store) -> None:
    assert (None, None) == (await store.load("nowhere", history=10), await store.info("nowhere"))


async def test_head_gives_the_stored_head_of_each_stored_room_asked_for(store: Store) -> None:
    first, second, opened = Timeline("a"), Timeline("b\x00c"), Timeline("opened")
    await store.commit([first.write(first.appends(3)), second.write(second.appends(1))])
    await store.commit([first.write(first.appends(2)), opened.write([])])
    assert ({"a": 5, "b\x00c": 1, "opened": 0}, {"a": 5}, {}) == (
        await store.head(["a", "b\x00c", "opened", "nowhere", "b"]),
        await store.head({"a"}),
        await store.head([]),
    )


async def test_head_reads_many_rooms_at_once(store: Store) -> None:
    timelines = [Timeline(f"room-{index}") for index in range(1_200)]
    await store.commit([timeline.write(timeline.appends(index % 3)) for index, timeline in enumerate(timelines)])
    assert {f"room-{index}": index % 3 for index in range(1_200)} == await store.head(
        [timeline.room_id for timeline in timelines]
    )


async def test_text_at_of_an_unknown_room_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.text_at("nowhere", 0)


async def test_history_of_an_unknown_room_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.history("nowhere", since=0, limit=10)


@pytest.mark.parametrize("version", [-1, 4, 100])
async def test_text_at_a_version_out_of_range_raises_history_unavailable(store: Store, version: int) -> None:
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(3))])
    with pytest.raises(HistoryUnavailable) as raised:
        await store.text_at("r", version)
    assert (version, 0, 3) == (raised.value.version, raised.value.oldest, raised.value.head)


# Pruning: 50 versions, a snapshot every 7, keep 10. Each snapshot commit moves `oldest` to the
# newest snapshot at least 10 versions behind the head: 7 at 21, ..., 35 at 49.
PRUNED_OLDEST = [0] * 20 + [7] * 7 + [14] * 7 + [21] * 7 + [28] * 7 + [35] * 2


async def test_pruning_moves_the_oldest_version_forward_only_to_snapshots(make_store: StoreFactory) -> None:
    store = await make_store(keep_versions=10)
    assert PRUNED_OLDEST == await commit_in_steps(store, Timeline(), 50, snapshot_every=7)


async def test_text_at_every_kept_version_after_pruning_equals_the_model(make_store: StoreFactory) -> None:
    store = await make_store(keep_versions=10)
    timeline = Timeline()
    await commit_in_steps(store, timeline, 50, snapshot_every=7)
    assert timeline.texts[35:] == [await store.text_at("r", version) for version in range(35, 51)]


@pytest.mark.parametrize("version", [0, 20, 34])
async def test_text_at_a_pruned_version_raises_history_unavailable(make_store: StoreFactory, version: int) -> None:
    store = await make_store(keep_versions=10)
    await commit_in_steps(store, Timeline(), 50, snapshot_every=7)
    with pytest.raises(HistoryUnavailable) as raised:
        await store.text_at("r", version)
    assert (version, 35, 50) == (raised.value.version, raised.value.oldest, raised.value.head)


async def test_a_pruned_room_still_loads_with_the_kept_history(make_store: StoreFactory) -> None:
    store = await make_store(keep_versions=10)
    timeline = Timeline()
    await commit_in_steps(store, timeline, 50, snapshot_every=7)
    loaded = await store.load("r", history=100)
    assert loaded is not None
    assert (list(range(36, 51)), timeline.text) == ([record.version for record in loaded.records], loaded.text())


async def test_pruning_keeps_more_than_keep_versions_back_to_the_nearest_snapshot(make_store: StoreFactory) -> None:
    store = await make_store(keep_versions=10)
    timeline = Timeline()
    await store.commit([timeline.write(timeline.appends(5), snapshot=True)])
    await store.commit([timeline.write(timeline.appends(30))])
    await store.commit([timeline.write(timeline.appends(1), snapshot=True)])
    assert (5, timeline.texts[5:]) == (
        (await info_of(store)).oldest,
        [await store.text_at("r", version) for version in range(5, timeline.head + 1)],
    )


# The property: whatever is committed, the store gives back the model's texts


@dataclass(frozen=True)
class Step:
    start: float  # where the change starts and ends, as fractions of the text's characters
    end: float
    insert: str
    snapshot: bool  # with a snapshot, if this step ends a commit
    commit: bool  # commit after this step (else it goes with the next ones)


TEXT = st.text(st.one_of(st.sampled_from("ab \n😀é中"), st.characters(codec="utf-8")), max_size=4)
STEPS = st.lists(
    st.builds(Step, st.floats(0, 1), st.floats(0, 1), TEXT, st.booleans(), st.booleans()), min_size=1, max_size=25
)


def edit_at(timeline: Timeline, step: Step) -> Record:
    text = timeline.text
    start, end = sorted((round(step.start * len(text)), round(step.end * len(text))))
    # Character indexes become UTF-16 units, so an astral character is never split.
    return timeline.edit(index_to_utf16(text, start), index_to_utf16(text, end), step.insert)


async def check_model(backend: str, steps: list[Step], keep_versions: int) -> None:
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as places:
        store = new_store(backend, Path(directory), keep_versions, dsn=place(backend, places))
        await store.open()
        try:
            timeline = Timeline()
            pending: list[Record] = []
            for index, step in enumerate(steps):
                pending.append(edit_at(timeline, step))
                if step.commit or index == len(steps) - 1:
                    await store.commit([timeline.write(pending, snapshot=step.snapshot)])
                    pending = []
            info = await info_of(store)
            loaded = await store.load("r", history=5)
            assert loaded is not None
            assert (timeline.texts[info.oldest :], timeline.text) == (
                [await store.text_at("r", version) for version in range(info.oldest, timeline.head + 1)],
                loaded.text(),
            )
        finally:
            await store.close()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(steps=STEPS, keep_versions=st.sampled_from([0, 2, 5]))
def test_every_kept_version_and_the_head_equal_the_model(backend: str, steps: list[Step], keep_versions: int) -> None:
    if backend == "postgres":
        require_postgres()
    asyncio.run(check_model(backend, steps, keep_versions))


async def test_check_passes_on_an_open_store(store: Store) -> None:
    await store.check()


# Client tokens


async def test_the_token_of_a_client_with_records_is_stored_and_loaded(store: Store) -> None:
    timeline = Timeline()
    records = [timeline.append("a", "c1", seq=1), timeline.append("b", "c2", seq=1)]
    # c2 is bound to no token; c3 has no record in this write, so nothing of it is written.
    tokens = {"c1": "aa11", "c2": "", "c3": "cc33"}
    await store.commit([replace(timeline.write(records), tokens=tokens)])
    loaded = await store.load("r", history=0)
    assert loaded is not None
    assert ({"c1": "aa11"}, {"c1": (1, 1), "c2": (1, 2)}) == (loaded.tokens, loaded.clients)


async def test_a_write_without_a_clients_token_keeps_the_stored_one_and_a_new_token_replaces_it(
    store: Store,
) -> None:
    timeline = Timeline()
    await store.commit([replace(timeline.write([timeline.append("a", "c1", seq=1)]), tokens={"c1": "aa"})])
    await store.commit([timeline.write([timeline.append("b", "c1", seq=2)])])
    kept = await store.load("r", history=0)
    await store.commit([replace(timeline.write([timeline.append("c", "c1", seq=3)]), tokens={"c1": "bb"})])
    replaced = await store.load("r", history=0)
    assert ({"c1": "aa"}, {"c1": "bb"}) == ((kept or pytest.fail()).tokens, (replaced or pytest.fail()).tokens)


# Texts are kept exactly


async def test_texts_with_nul_and_control_characters_are_kept_exactly(store: Store) -> None:
    # SQLite's JSON functions cut a string at a NUL: client ids differing after one would merge,
    # with their tokens, and a snapshot would lose its end.
    timeline = Timeline("r")
    texts = ["a\x00b", "\x01\x000\x011", "\x00", "c\x01"]
    records = [
        replace(timeline.append(text, client_id=f"c\x00{index}", seq=1), author=f"A\x00{text}")
        for index, text in enumerate(texts)
    ]
    tokens = {f"c\x00{index}": f"t\x00{index}" for index in range(len(texts))}
    await store.commit([replace(timeline.write(records, snapshot=True), tokens=tokens)])
    loaded = await store.load("r", history=10)
    assert loaded is not None
    assert (records, timeline.text, tokens, timeline.text) == (
        await store.history("r", 0, 10),
        loaded.snapshot_text,
        loaded.tokens,
        await store.text_at("r", 4),
    )


# Integers: never stored as anything else


@pytest.mark.parametrize("seq", [2**63, 2**64 + 1, -(2**63) - 1])
async def test_a_seq_beyond_64_bits_is_refused_and_nothing_of_the_commit_is_kept(store: Store, seq: int) -> None:
    timeline = Timeline()
    await store.commit([timeline.write([timeline.append("a", seq=1)])])
    other = Timeline("other")
    with pytest.raises(StoreError, match="64-bit") as raised:
        await store.commit([other.write([other.append("x")]), timeline.write([timeline.append("b", seq=seq)])])
    assert not isinstance(raised.value, StoreConflict)
    # The room goes on from its stored head, and the largest seq is kept exactly, as an integer.
    timeline.texts.pop()
    await store.commit([timeline.write([timeline.append("b", seq=2**63 - 1)])])
    assert (None, [(1, 1), (2, 2**63 - 1)], [int, int]) == (
        await store.info("other"),
        [(record.version, record.seq) for record in await store.history("r", 0, 10)],
        [type(record.seq) for record in await store.history("r", 0, 10)],
    )


# Retention


async def commit_room(store: Store, room_id: str, updates: int = 2) -> None:
    timeline = Timeline(room_id)
    await store.commit([replace(timeline.write(timeline.appends(updates), snapshot=True), tokens={"c1": "aa"})])


async def test_purge_deletes_the_rooms_last_written_before_the_time_but_the_kept_ones(make_store: StoreFactory) -> None:
    clock = Clock(1_000.0)
    store = await make_store(clock=clock)
    for room_id in ("a", "b", "c"):
        await commit_room(store, room_id)
    clock.now = 2_000.0
    await commit_room(store, "d")
    deleted = await store.purge(1_500.0, keep={"b"})
    assert (["a", "c"], [None, "b", None, "d"]) == (
        sorted(deleted),
        [None if info is None else info.room_id for info in [await store.info(r) for r in "abcd"]],
    )


async def test_a_purged_room_is_gone_with_its_history_snapshots_and_clients(make_store: StoreFactory) -> None:
    clock = Clock(1_000.0)
    store = await make_store(clock=clock)
    await commit_room(store, "a", updates=5)
    assert ["a"] == await store.purge(1_500.0, keep=())
    with pytest.raises(KeyError):
        await store.history("a", since=0, limit=10)
    assert None is await store.load("a", history=10)
    # Written again, it starts from nothing: no old update, snapshot, seq or token comes back.
    fresh = Timeline("a")
    await store.commit([fresh.write(fresh.appends(1))])
    loaded = await store.load("a", history=10)
    assert loaded is not None
    assert ([1], "1;", {"c1": (1, 1)}, {}) == (
        [record.version for record in loaded.records],
        loaded.text(),
        loaded.clients,
        loaded.tokens,
    )


async def test_a_write_without_records_counts_as_a_use_of_the_room(make_store: StoreFactory) -> None:
    clock = Clock(1_000.0)
    store = await make_store(clock=clock)
    await commit_room(store, "opened")
    await commit_room(store, "untouched")
    clock.now = 2_000.0
    await store.commit([RoomWrite("opened", "epoch-1", "python", (), None, 2)])  # opened, not edited
    assert ["untouched"] == await store.purge(1_500.0, keep=())


async def test_purge_deletes_every_expired_room_however_many_batches_it_takes(make_store: StoreFactory) -> None:
    clock = Clock(1_000.0)
    store = await make_store(clock=clock, purge_batch=2)
    for index in range(9):
        await commit_room(store, f"old-{index}")
    clock.now = 2_000.0
    await commit_room(store, "new")
    deleted = await store.purge(1_500.0, keep={"old-0", "old-5"})
    assert ({f"old-{index}" for index in (1, 2, 3, 4, 6, 7, 8)}, 7) == (set(deleted), len(deleted))
    assert ["old-0", "old-5"] == sorted(await store.purge(1_500.0, keep=()))  # only the kept were left


async def test_count_expired_counts_what_purge_would_delete_and_deletes_nothing(make_store: StoreFactory) -> None:
    clock = Clock(1_000.0)
    store = await make_store(clock=clock)
    for room_id in ("a", "b", "c"):
        await commit_room(store, room_id)
    clock.now = 2_000.0
    await commit_room(store, "d")
    counted = await store.count_expired(1_500.0, keep={"a"})
    assert (2, ["b", "c"]) == (counted, sorted(await store.purge(1_500.0, keep={"a"})))


# Reads cost what they return


async def test_text_at_and_load_replay_only_the_updates_since_the_nearest_snapshot(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeline = Timeline()
    for _ in range(6):
        await store.commit([timeline.write(timeline.appends(50), snapshot=True)])
    await store.commit([timeline.write(timeline.appends(30))])
    replayed = 0
    change_set = Record.change_set

    def counted(record: Record) -> ChangeSet:
        nonlocal replayed
        replayed += 1
        return change_set(record)

    monkeypatch.setattr(Record, "change_set", counted)
    text = await store.text_at("r", 275)
    at_version, replayed = replayed, 0
    loaded = await store.load("r", history=0)
    assert (timeline.texts[275], 25, timeline.text, 30) == (
        text,
        at_version,
        (loaded or pytest.fail()).text(),
        replayed,
    )


# SQLite: the file


async def test_the_sqlite_file_keeps_everything_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    first = SqliteStore(path)
    await first.open()
    timeline = Timeline()
    await first.commit([timeline.write(timeline.appends(4), snapshot=True, language="rust")])
    await first.commit([timeline.write([timeline.append("🙂", "c2", seq=9)])])
    before = (await first.load("r", history=10), await first.history("r", 0, 10))
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert (*before, timeline.texts) == (
            await second.load("r", history=10),
            await second.history("r", 0, 10),
            [await second.text_at("r", version) for version in range(timeline.head + 1)],
        )
    finally:
        await second.close()


@pytest.mark.parametrize("call", ["check", "commit", "load"])
async def test_a_closed_sqlite_store_raises_store_error(tmp_path: Path, call: str) -> None:
    store = SqliteStore(tmp_path / "rooms.sqlite3")
    await store.open()
    await store.close()
    timeline = Timeline()
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "check": store.check,
        "commit": lambda: store.commit([timeline.write(timeline.appends(1))]),
        "load": lambda: store.load("r", history=0),
    }
    with pytest.raises(StoreError, match="is not open"):
        await calls[call]()


def pragma(path: Path, name: str) -> object:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]


async def test_the_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "rooms.sqlite3")
    await store.open()
    await store.close()
    assert "wal" == pragma(tmp_path / "rooms.sqlite3", "journal_mode")


async def test_a_new_sqlite_file_can_give_freed_pages_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "rooms.sqlite3")
    await store.open()
    await store.close()
    assert 2 == pragma(tmp_path / "rooms.sqlite3", "auto_vacuum")  # 2: INCREMENTAL


async def test_pruned_history_is_given_back_to_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    store = SqliteStore(path, keep_versions=100, synchronous="normal")
    await store.open()
    timeline = Timeline()
    # Each record carries 300 to 400 characters; the text stays that short.
    for count, snapshot in ((1000, True), (999, False)):
        records = [timeline.edit(0, utf16_len(timeline.text), "x" * (300 + i % 100)) for i in range(count)]
        await store.commit([timeline.write(records, snapshot=snapshot)])
    await store.close()
    unpruned = store.file_size()  # closed: the write-ahead log is checkpointed into the file
    await store.open()
    # A snapshot at 2000 prunes everything up to the one at 1000: half the records.
    await store.commit([timeline.write([timeline.append("!")], snapshot=True)])
    await store.close()
    assert store.file_size() < unpruned * 0.7, (store.file_size(), unpruned)


async def commit_small_updates(path: Path, keep_versions: int) -> tuple[int, int]:
    """20,000 one-character appends in commits of 500, each with a snapshot. Returns the file's
    size once closed (the write-ahead log checkpointed into it) and the bytes the store keeps."""
    store = SqliteStore(path, keep_versions=keep_versions, synchronous="normal")
    await store.open()
    for start in range(0, 20_000, 500):
        records = [
            Record(version, "c1", version, json.dumps([version - 1, [0, "x"]] if version > 1 else [[0, "x"]]))
            for version in range(start + 1, start + 501)
        ]
        await store.commit([RoomWrite("r", "e", "python", records, "x" * (start + 500), start + 500)])
    info = await info_of(store)
    kept = await store.history("r", since=0, limit=100_000)
    # Each record: its JSON and ~40 bytes of key, client, seq, and empty author fields.
    kept_bytes = sum(len(record.changes) + 40 for record in kept) + info.oldest + 20_000
    await store.close()
    return store.file_size(), kept_bytes


async def test_file_size_stays_bounded_with_keep_versions(tmp_path: Path) -> None:
    pruned_size, kept_bytes = await commit_small_updates(tmp_path / "pruned.sqlite3", keep_versions=1000)
    unpruned_size, _ = await commit_small_updates(tmp_path / "unpruned.sqlite3", keep_versions=0)
    # Kept: the 1,000 to 1,500 newest records and the two newest snapshots (the one pruning
    # stopped at and the head's). B-tree pages are seldom full and freed pages wait for the next
    # snapshot to be given back, so allow 4x that, plus 64 KiB for the schema's own pages. The
    # unpruned file keeps all 20,000 records and 40 snapshots.
    assert (True, True) == (pruned_size < 4 * kept_bytes + 65_536, pruned_size < unpruned_size / 4), (
        pruned_size,
        kept_bytes,
        unpruned_size,
    )


# SQLite: a damaged file is refused, never replaced


async def make_database(path: Path) -> None:
    """A real collab pad database of several hundred KB."""
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    timeline = Timeline()
    for _ in range(20):
        records = [timeline.edit(0, utf16_len(timeline.text), f"{timeline.head}:" + "y" * 300) for _ in range(100)]
        await store.commit([timeline.write(records, snapshot=True)])
    await store.close()


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def truncate_to_half(path: Path) -> None:
    size = path.stat().st_size
    assert size > 300_000, size
    with path.open("r+b") as file:
        file.truncate(size // 2)


def foreign(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        connection.execute("INSERT INTO notes (body) VALUES ('not a room')")


DAMAGES = ["garbage", "truncated", "foreign"]


async def damage(path: Path, how: str) -> None:
    if how == "truncated":
        await make_database(path)
        truncate_to_half(path)
    else:
        {"garbage": garbage, "foreign": foreign}[how](path)


@pytest.mark.parametrize("how", DAMAGES)
async def test_a_damaged_file_is_refused_naming_it(tmp_path: Path, how: str) -> None:
    path = tmp_path / "rooms.sqlite3"
    await damage(path, how)
    store = SqliteStore(path)
    with pytest.raises(StoreCorrupt) as raised:
        await store.open()
    await store.close()
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("how", DAMAGES)
async def test_a_damaged_file_is_left_as_it_is(tmp_path: Path, how: str) -> None:
    path = tmp_path / "rooms.sqlite3"
    await damage(path, how)
    before = path.read_bytes()
    store = SqliteStore(path)
    with contextlib.suppress(StoreCorrupt):
        await store.open()
    await store.close()
    assert before == path.read_bytes()


async def test_a_zero_length_file_is_taken_as_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    path.touch()
    store = SqliteStore(path)
    await store.open()
    timeline = Timeline()
    try:
        await store.commit([timeline.write(timeline.appends(2))])
        assert timeline.text == await store.text_at("r", 2)
    finally:
        await store.close()


async def test_a_directory_name_with_uri_characters_holds_the_database(tmp_path: Path) -> None:
    path = tmp_path / "data #1?x=%41" / "rooms.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.commit([RoomWrite("r", "e", "python", [Record(1, "c", 1, '[[0,"hi"]]')], None, 1)])
    await store.close()
    again = SqliteStore(path)
    await again.open()  # the same file: checked, not made anew
    try:
        assert ("hi", [path.name]) == (await again.text_at("r", 1), [p.name for p in path.parent.glob("*.sqlite3")])
    finally:
        await again.close()


async def test_access_digests_are_the_digests_of_what_is_stored(store: Store) -> None:
    """Processes compare digests every few seconds; a digest computed from what `accesses`
    reads must be the one the store gives, whatever the text holds."""
    timeline = Timeline()
    write = replace(timeline.write(timeline.appends(1)), access='{"q":"\\u00e9\\u0000"}', notes="n\x00\x01é")
    await store.commit([write])
    state = (await store.accesses(["r", "missing"]))["r"]
    assert (write.access, write.notes) == state[:2]
    assert {"r": store.digest_of(*state)} == await store.access_digests(["r", "missing"])
    assert store.digest_of(*state) != store.digest_of(state[0], "other notes", state[2])
