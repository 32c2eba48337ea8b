"""The registry with a store: nothing is shown before it is committed, commits are grouped,
rooms come back after a restart, and a failing store resets rooms instead of losing updates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rooms.committer import STORE_RETRY_SECONDS
from rooms.errors import StorageUnavailable
from rooms.lifecycle import EVICTION_RETRY_SECONDS
from rooms.protocol import Hello, Language
from rooms.registry import RoomRegistry
from rooms.room_messages import RESTORE_CLIENT
from rooms.session import CLOSE_TRY_AGAIN_LATER, Session
from rooms.settings import Settings
from rooms.store import RoomWrite, StoredRoom, StoreError
from rooms.store.memory import MemoryStore
from rooms.store.sqlite import SqliteStore
from tests.conftest import LoopTime, begun
from tests.test_registry import Clock, FakeTransport, append, hello, push, until


class GatedStore(MemoryStore):
    """A memory store whose commits wait for ``gate`` (open unless closed) and can be made to
    fail; it remembers every batch it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False
        self.batches: list[list[RoomWrite]] = []
        self.held = asyncio.Event()  # set once a commit waits at the closed gate

    async def commit(self, writes: Sequence[RoomWrite]) -> None:
        self.batches.append(list(writes))
        if not self.gate.is_set():
            self.held.set()
        await self.gate.wait()
        if self.failing:
            raise StoreError("disk full")
        await super().commit(writes)


class UnreadableStore(MemoryStore):
    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        raise StoreError("cannot read the room")


class SlowLoadingStore(MemoryStore):
    """A memory store whose loads wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.loaded = asyncio.Event()

    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        await self.gate.wait()
        self.loaded.set()  # whoever waits for this resumes right after the load returns
        return await super().load(room_id, history)


def make_registry(store: MemoryStore | SqliteStore, **overrides: Any) -> RoomRegistry:
    return RoomRegistry(Settings(**overrides), clock=Clock(), store=store)


class Witness(FakeTransport):
    """A connection that notes, with each frame it gets, how many commits the store had
    finished by then: what was shown before its commit returned shows up in ``commits``."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.commits: list[int] = []

    def receive(self, message: str) -> None:
        self.commits.append(self.store.commits)
        super().receive(message)

    def commits_at(self, kind: str) -> list[int]:
        """The store's finished commits when each frame of this type arrived."""
        return [count for count, message in zip(self.commits, self.sent, strict=True) if message["type"] == kind]


def versions(transport: FakeTransport) -> list[int]:
    return [update["version"] for update in transport.of_type("update")]


@pytest.fixture
def store() -> GatedStore:
    return GatedStore()


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings for the `registry` fixture; a test changes them with ``parametrize``."""
    return {}


@pytest.fixture
async def registry(store: GatedStore, overrides: dict[str, Any]) -> AsyncIterator[RoomRegistry]:
    registry = make_registry(store, **overrides)
    yield registry
    store.gate.set()
    await registry.stop()


async def join(registry: RoomRegistry, client_id: str, username: str = "ann") -> tuple[Session, Witness]:
    assert isinstance(registry.store, MemoryStore)
    transport = Witness(registry.store)
    session = await registry.join_versioned("r", transport, hello(client_id, username))
    await transport.wait_until(lambda: transport.of_type("welcome"))
    return session, transport


# Durable before visible


async def test_an_update_reaches_no_one_before_it_is_committed(store: GatedStore, registry: RoomRegistry) -> None:
    author, author_transport = await join(registry, "c1")
    _, other_transport = await join(registry, "c2", "bob")
    store.gate.clear()
    registry.handle(author, push(0, 1, [[0, "hello"]]))
    await store.held.wait()
    held = store.commits
    assert ([], []) == (author_transport.of_type("update"), other_transport.of_type("update"))
    store.gate.set()
    await registry.settled()
    # Each saw it once, and only after the commit carrying it returned.
    assert ([held + 1], [held + 1]) == (author_transport.commits_at("update"), other_transport.commits_at("update"))


async def test_a_client_joining_during_a_commit_is_shown_nothing_uncommitted(
    store: GatedStore, registry: RoomRegistry
) -> None:
    author, _ = await join(registry, "c1")
    store.gate.clear()
    registry.handle(author, push(0, 1, [[0, "hello"]]))
    await store.held.wait()
    held = store.commits
    late = Witness(store)
    await registry.join_versioned("r", late, hello("c3", "cy"))
    # Its welcome is made from the room as it is in memory, so it waits for the commit too.
    assert [] == late.sent
    store.gate.set()
    await registry.settled()
    assert (True, []) == (bool(late.sent), [count for count in late.commits if count <= held])


async def test_a_client_joining_during_a_commit_is_welcomed_once_it_returns(
    store: GatedStore, registry: RoomRegistry
) -> None:
    author, _ = await join(registry, "c1")
    store.gate.clear()
    registry.handle(author, push(0, 1, [[0, "hello"]]))
    await until(lambda: store.batches)
    late = FakeTransport()
    await registry.join_versioned("r", late, hello("c3", "cy"))
    store.gate.set()
    await until(lambda: late.sent)
    welcome = late.sent[0]
    assert ("welcome", 1, "hello", []) == (welcome["type"], welcome["version"], welcome["doc"], versions(late))


async def test_held_updates_reach_everyone_in_order_once_committed(store: GatedStore, registry: RoomRegistry) -> None:
    sessions = [await join(registry, f"c{index}", f"user{index}") for index in range(3)]
    store.gate.clear()
    registry.handle(sessions[0][0], push(0, 1, [[0, "a"]]))
    await until(lambda: store.batches)
    registry.handle(sessions[1][0], push(0, 1, [[0, "b"]]))  # while the first commit is written
    registry.handle(sessions[2][0], push(0, 1, [[0, "c"]]))
    store.gate.set()
    await until(lambda: all(len(versions(transport)) == 3 for _, transport in sessions))
    assert [[1, 2, 3]] * 3 == [versions(transport) for _, transport in sessions]


async def test_a_language_change_reaches_no_one_before_it_is_committed(
    store: GatedStore, registry: RoomRegistry
) -> None:
    author, author_transport = await join(registry, "c1")
    _, other_transport = await join(registry, "c2", "bob")
    store.gate.clear()
    registry.handle(author, Language(type="language", language="rust"))
    await store.held.wait()
    held = store.commits
    assert ([], []) == (author_transport.of_type("language"), other_transport.of_type("language"))
    store.gate.set()
    await registry.settled()
    # Each saw it once, and only after the commit carrying it returned.
    assert ([held + 1], [held + 1]) == (
        author_transport.commits_at("language"),
        other_transport.commits_at("language"),
    )


# Group commit


async def test_pushes_of_one_event_loop_turn_go_into_one_commit(store: GatedStore, registry: RoomRegistry) -> None:
    sessions = [(await join(registry, f"c{index}", f"user{index}"))[0] for index in range(3)]
    store.batches.clear()  # the room's creation
    store.commits = 0
    for seq in range(1, 11):
        for session in sessions:
            registry.handle(session, push(0, seq, [[0, session.client_id]]))
    assert await registry.wait_committed(5.0)
    assert ([[30]], 1) == ([[len(write.records) for write in batch] for batch in store.batches], store.commits)


async def test_one_commit_carries_every_room_of_the_turn(store: GatedStore, registry: RoomRegistry) -> None:
    first = await registry.join_versioned("a", FakeTransport(), hello("c1"))
    second = await registry.join_versioned("b", FakeTransport(), hello("c2"))
    registry.handle(first, push(0, 1, [[0, "a"]]))
    registry.handle(second, push(0, 1, [[0, "b"]]))
    assert await registry.wait_committed(5.0)
    assert [["a", "b"]] == [sorted(write.room_id for write in batch) for batch in store.batches]


# Restart


RESUMED = "abc"


# A snapshot with every commit: a client resuming behind it is caught up from the history
# loaded with the room, not from the updates after the snapshot.
RESTART_SETTINGS = {"snapshot_every": 1}


async def run_until_restart(path: Path) -> dict[str, Any]:
    """A registry on the SQLite file: c1 joins, pushes "ab" then "c", sets the language, and the
    registry stops. Returns c1's welcome."""
    registry = make_registry(SqliteStore(path), **RESTART_SETTINGS)
    await registry.start()
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    await until(lambda: transport.of_type("welcome"))
    registry.handle(session, push(0, 1, [[0, "ab"]]))
    registry.handle(session, push(1, 2, append(2, "c")))
    registry.handle(session, Language(type="language", language="rust"))
    await until(lambda: len(versions(transport)) == 2)
    await registry.stop()
    return transport.of_type("welcome")[0]


@pytest.fixture
async def restarted(tmp_path: Path) -> AsyncIterator[tuple[RoomRegistry, dict[str, Any]]]:
    """A new registry on a new store on the same file, and the welcome c1 had before."""
    welcome = await run_until_restart(tmp_path / "rooms.sqlite3")
    registry = make_registry(SqliteStore(tmp_path / "rooms.sqlite3"), **RESTART_SETTINGS)
    await registry.start()
    yield registry, welcome
    await registry.stop()


def resume(welcome: dict[str, Any]) -> Hello:
    return Hello(
        type="hello",
        client_id="c1",
        username="ann",
        version=welcome["version"],
        epoch=welcome["epoch"],
        resume_token=welcome["resume_token"],
    )


async def test_after_a_restart_a_resuming_client_gets_a_catch_up_not_a_snapshot(
    restarted: tuple[RoomRegistry, dict[str, Any]],
) -> None:
    registry, welcome = restarted
    transport = FakeTransport()
    await registry.join_versioned("r", transport, resume(welcome))
    await until(lambda: len(transport.sent) >= 3)
    again = transport.sent[0]
    assert ("welcome", 0, False, welcome["epoch"], 2, [1, 2]) == (
        again["type"],
        again["version"],
        "doc" in again,
        again["epoch"],
        again["last_seq"],
        versions(transport),
    )


async def test_after_a_restart_a_resent_push_is_not_applied_twice(
    restarted: tuple[RoomRegistry, dict[str, Any]],
) -> None:
    registry, welcome = restarted
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, resume(welcome))
    registry.handle(session, push(1, 2, append(2, "c")))  # the last push, as if unconfirmed
    assert await registry.wait_committed(5.0)
    await registry.settled()
    stored = await registry.store.info("r")
    assert (RESUMED, 2, 2, [1, 2], []) == (
        session.room.document.text,
        session.room.document.version,
        stored.version if stored is not None else None,
        versions(transport),
        transport.of_type("error"),
    )


async def test_after_a_restart_the_room_has_its_text_version_and_language(
    restarted: tuple[RoomRegistry, dict[str, Any]],
) -> None:
    registry, _ = restarted
    transport = FakeTransport()
    await registry.join_versioned("r", transport, hello("c9", "newcomer"))
    await until(lambda: transport.sent)
    welcome = transport.sent[0]
    assert (RESUMED, 2, "rust") == (welcome["doc"], welcome["version"], welcome["language"])


# A failing store


async def fail_a_commit(store: GatedStore, registry: RoomRegistry) -> tuple[FakeTransport, FakeTransport]:
    """c1 and c2 in a room; c1's "kept" is committed, then its "lost" fails to commit."""
    author, first = await join(registry, "c1")
    _, second = await join(registry, "c2", "bob")
    registry.handle(author, push(0, 1, [[0, "kept"]]))
    await until(lambda: versions(first) == [1] and versions(second) == [1])
    store.failing = True
    registry.handle(author, push(1, 2, append(4, " lost")))
    await until(lambda: first.closed is not None and second.closed is not None)
    store.failing = False
    return first, second


async def test_a_failed_commit_closes_the_rooms_clients_with_try_again_later(
    store: GatedStore, registry: RoomRegistry
) -> None:
    first, second = await fail_a_commit(store, registry)
    assert [CLOSE_TRY_AGAIN_LATER] * 2 == [(transport.closed or (None,))[0] for transport in (first, second)]


async def test_a_failed_commit_shows_its_update_to_no_one(store: GatedStore, registry: RoomRegistry) -> None:
    first, second = await fail_a_commit(store, registry)
    assert ([1], [1]) == (versions(first), versions(second))


async def test_a_failed_commit_drops_the_room_and_marks_the_store_unwell(
    store: GatedStore, registry: RoomRegistry
) -> None:
    await fail_a_commit(store, registry)
    assert ({}, False) == (registry.rooms, registry.committer.store_ok)


async def test_a_failed_commit_marks_the_store_unwell_for_a_while_only(
    store: GatedStore, registry: RoomRegistry
) -> None:
    """A process that a load balancer stopped sending clients to after a failed commit would
    never commit again: readiness lets clients in again to try after `STORE_RETRY_SECONDS`."""
    await fail_a_commit(store, registry)
    assert False is registry.committer.store_ok
    registry.committer.failed_at -= STORE_RETRY_SECONDS
    assert True is registry.committer.store_ok


async def test_after_a_failed_commit_a_join_loads_what_the_store_holds(
    store: GatedStore, registry: RoomRegistry
) -> None:
    await fail_a_commit(store, registry)
    _, transport = await join(registry, "c3", "cy")
    welcome = transport.sent[0]
    assert ("kept", 1) == (welcome["doc"], welcome["version"])


async def test_a_successful_commit_marks_the_store_well_again(store: GatedStore, registry: RoomRegistry) -> None:
    await fail_a_commit(store, registry)
    session, _ = await join(registry, "c3", "cy")
    registry.handle(session, push(1, 1, append(4, "!")))
    assert await registry.wait_committed(5.0)
    assert True is registry.committer.store_ok


async def test_a_store_that_cannot_load_makes_join_raise_storage_unavailable() -> None:
    registry = make_registry(UnreadableStore())
    with pytest.raises(StorageUnavailable):
        await registry.join_versioned("r", FakeTransport(), hello("c1"))


# Eviction


@pytest.mark.parametrize("overrides", [{"room_grace_seconds": 0}])
async def test_an_empty_room_is_not_evicted_before_its_updates_are_committed(
    store: GatedStore, registry: RoomRegistry, loop_time: LoopTime
) -> None:
    session, _ = await join(registry, "c1")
    store.gate.clear()
    registry.handle(session, push(0, 1, [[0, "unsaved"]]))
    await store.held.wait()
    registry.leave(session)
    # A zero grace evicts as soon as the step ends; an uncommitted room tries again and again.
    await loop_time.advance(0)
    await loop_time.advance(EVICTION_RETRY_SECONDS * 3)
    assert "unsaved" == registry.rooms["r"].document.text


@pytest.mark.parametrize("overrides", [{"room_grace_seconds": 0}])
async def test_an_empty_room_is_evicted_once_its_updates_are_committed(
    store: GatedStore, registry: RoomRegistry, loop_time: LoopTime
) -> None:
    session, _ = await join(registry, "c1")
    store.gate.clear()
    registry.handle(session, push(0, 1, [[0, "saved"]]))
    await store.held.wait()
    registry.leave(session)
    await loop_time.advance(0)  # the zero-grace eviction is put off: nothing is committed yet
    assert "r" in registry.rooms
    store.gate.set()
    await registry.settled()
    await loop_time.advance(EVICTION_RETRY_SECONDS)
    assert "r" not in registry.rooms
    assert "saved" == await store.text_at("r", 1)


# Restoring a version


async def edit_twice_and_restore(registry: RoomRegistry) -> tuple[list[FakeTransport], Session]:
    """Ann writes "one" then "two"; Bob restores version 1."""
    ann, ann_transport = await join(registry, "c1", "ann")
    bob, bob_transport = await join(registry, "c2", "bob")
    registry.handle(ann, push(0, 1, [[0, "one"]]))
    registry.handle(ann, push(1, 2, [[3, "two"]]))
    registry.revert(bob, 1, "one")
    return [ann_transport, bob_transport], bob


async def test_restore_appends_an_update_that_everyone_receives(registry: RoomRegistry) -> None:
    transports, bob = await edit_twice_and_restore(registry)
    await until(lambda: all(len(versions(transport)) == 3 for transport in transports))
    assert ([[1, 2, 3]] * 2, "one", 3) == (
        [versions(transport) for transport in transports],
        bob.room.document.text,
        bob.room.document.version,
    )


async def test_restore_keeps_the_history_and_stores_the_restorers_name(
    store: GatedStore, registry: RoomRegistry
) -> None:
    await edit_twice_and_restore(registry)
    assert await registry.wait_committed(5.0)
    records = await store.history("r", since=0, limit=10)
    assert (["c1", "c1", RESTORE_CLIENT], ["ann", "ann", "bob"], ["one", "two", "one"]) == (
        [record.client_id for record in records],
        [record.author for record in records],
        [await store.text_at("r", version) for version in (1, 2, 3)],
    )


async def test_clients_join_a_room_being_loaded_in_the_order_their_joins_came() -> None:
    store = SlowLoadingStore()
    registry = make_registry(store)
    transports = {name: FakeTransport() for name in ("ann", "bob", "cid")}
    ann = await begun(registry.join_full_text("r", transports["ann"], "ann"))  # waits for the load
    bob = await begun(registry.join_full_text("r", transports["bob"], "bob"))  # waits for ann's load
    store.gate.set()
    await store.loaded.wait()  # the moment the load is done, before the waiting joins resume
    cid = await registry.join_full_text("r", transports["cid"], "cid")  # comes after them all the same
    sessions = [await ann, await bob, cid]
    await registry.settled()
    assert [session.user_id for session in sessions] == list(registry.rooms["r"].sessions)
    assert ["bob", "cid"] == [m["username"] for m in transports["ann"].of_type("user_joined")]
    assert ["cid"] == [m["username"] for m in transports["bob"].of_type("user_joined")]


@pytest.mark.parametrize("overrides", [{"outbound_queue_size": 5}])
async def test_a_store_that_stalls_resets_the_room_instead_of_holding_without_end(
    store: GatedStore, registry: RoomRegistry
) -> None:
    first, first_transport = await join(registry, "c1", "ann")
    _, second_transport = await join(registry, "c2", "bob")
    await registry.settled()
    store.gate.clear()  # the disk stops answering
    for seq in range(1, 12):  # two held messages an update; the bound is 5 per member
        registry.handle(first, push(seq - 1, seq, append(seq - 1, "x")))
    await until(lambda: "r" not in registry.rooms)
    await until(lambda: first_transport.closed and second_transport.closed)
    assert [CLOSE_TRY_AGAIN_LATER] * 2 == [(t.closed or (None,))[0] for t in (first_transport, second_transport)]
    assert [] == versions(first_transport) + versions(second_transport)


@pytest.mark.parametrize("overrides", [{"outbound_queue_size": 2}])
async def test_a_join_that_tips_a_stalled_room_over_is_reset_with_the_room(
    store: GatedStore, registry: RoomRegistry
) -> None:
    first, _ = await join(registry, "c1", "ann")
    store.gate.clear()  # the disk stops answering
    registry.handle(first, push(0, 1, append(0, "x")))
    registry.handle(first, push(0, 2, append(0, "y")))
    late = FakeTransport()
    session = await registry.join_versioned("r", late, hello("c2", "bob"))  # its member_joined tips it over
    await until(lambda: late.closed)
    assert (CLOSE_TRY_AGAIN_LATER, True) == (late.closed[0] if late.closed else None, session.closed)
    store.gate.set()
    again, transport = await join(registry, "c3", "cy")  # the room comes back from the store
    assert [] == [s for s in registry.rooms["r"].sessions.values() if s is not again]
    assert "welcome" == transport.sent[0]["type"]


async def test_a_room_reset_before_anything_was_stored_comes_back_under_its_epoch(
    store: GatedStore, registry: RoomRegistry
) -> None:
    author, transport = await join(registry, "c1")
    epoch = transport.sent[0]["epoch"]
    store.failing = True
    registry.handle(author, push(0, 1, [[0, "lost"]]))
    await until(lambda: transport.closed is not None)
    store.failing = False
    _, again = await join(registry, "c1")  # so the client resends instead of resetting
    assert (epoch, 0, "") == (again.sent[0]["epoch"], again.sent[0]["version"], again.sent[0]["doc"])


# A new room is stored before anyone is shown it


async def test_a_new_rooms_welcome_waits_for_the_commit_that_stores_the_room(
    store: GatedStore, registry: RoomRegistry
) -> None:
    store.gate.clear()
    transport = Witness(store)
    session = await registry.join_versioned("r", transport, hello("c1"))
    await store.held.wait()
    assert [] == transport.sent
    write = store.batches[0][0]
    assert ("r", session.room.document.epoch, [], 0) == (write.room_id, write.epoch, list(write.records), write.head)
    store.gate.set()
    await transport.wait_until(lambda: transport.sent)
    stored = await store.info("r")
    assert stored is not None and transport.sent[0]["epoch"] == stored.epoch
    assert [1] == transport.commits_at("welcome")  # shown once the room's first commit returned


async def test_a_new_room_whose_first_commit_fails_was_shown_to_no_one(
    store: GatedStore, registry: RoomRegistry
) -> None:
    store.failing = True
    seed, versioned = FakeTransport(), FakeTransport()
    await registry.join_full_text("r", seed, "ann")
    await registry.join_versioned("r", versioned, hello("c1"))
    await until(lambda: versioned.closed is not None and seed.closed is not None)
    assert ([], [], CLOSE_TRY_AGAIN_LATER) == (seed.sent, versioned.sent, versioned.closed[0])
    assert None is await store.info("r")
