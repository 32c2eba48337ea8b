"""Two registries (two processes) sharing one store, without Redis: the committer makes a lost
commit again over the winner's updates (`Committer`, `Room.rebase_over`), and a write whose
access state was changed meanwhile resets only its room."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from rooms.access import Access
from rooms.registry import RoomRegistry
from rooms.room import Room
from rooms.settings import Settings
from rooms.store import RoomWrite, StaleWrite, Store
from rooms.store.memory import MemoryStore
from tests.test_registry import FakeTransport, hello, push


def shared(store: Store) -> RoomRegistry:
    registry = RoomRegistry(Settings(), store=store)

    def share(room: Room) -> None:
        room.share()
        room.share_presence()

    registry.loaded.on_loaded = share
    return registry


def conflicts() -> float:
    return REGISTRY.get_sample_value("collab_commit_conflicts_total") or 0.0


def updates(transport: FakeTransport) -> list[tuple[int, Any, Any]]:
    return [(m["version"], m.get("client_id"), m["changes"]) for m in transport.sent if m["type"] == "update"]


async def test_the_loser_of_a_race_makes_its_update_again_after_the_winners_and_keeps_its_clients() -> None:
    store = MemoryStore()
    here, there = shared(store), shared(store)
    await here.start()
    await there.start()
    ann, bob = FakeTransport(), FakeTransport()
    ann_session = await here.join_versioned("r", ann, hello("ann"))
    await here.settled()
    bob_session = await there.join_versioned("r", bob, hello("bob", "bob"))
    await there.settled()
    before = conflicts()
    here.handle(ann_session, push(0, 1, [[0, "A"]]))
    await here.settled()
    there.handle(bob_session, push(0, 1, [[0, "B"]]))  # at version 1, taken: made again at 2
    await there.settled()
    assert 1 == conflicts() - before
    assert [(1, None, [[0, "A"]]), (2, "bob", [1, [0, "B"]])] == updates(bob)
    assert bob.closed is None
    stored = await store.load("r", 100)
    assert stored is not None and "AB" == stored.text()
    assert [1, 2] == [record.version for record in stored.records]
    await here.stop()
    await there.stop()


class AccessCheckingStore(MemoryStore):
    """A memory store that checks access bases as a store shared by processes does."""

    async def commit(self, writes: Any) -> None:
        for write in writes:
            assert isinstance(write, RoomWrite)
            checked = write.access is not None and write.access_base is not None
            stored = await self.load(write.room_id, 0)
            now = (stored.access, stored.notes) if stored is not None else ("", "")
            if checked and now != write.access_base:
                raise StaleWrite(write.room_id, "access")
        await super().commit(writes)


async def test_a_write_over_an_access_state_changed_elsewhere_keeps_both_changes() -> None:
    store = AccessCheckingStore()
    here = shared(store)
    await here.start()
    ann, cid = FakeTransport(), FakeTransport()
    ann_session = await here.join_versioned("r", ann, hello("ann"))
    cid_session = await here.join_versioned("s", cid, hello("cid"))
    await here.settled()
    # Another process stores a question for the room, and notes, meanwhile.
    elsewhere = Access(question="fizzbuzz")
    epoch = here.rooms["r"].document.epoch
    await store.commit([RoomWrite("r", epoch, "python", access=elsewhere.to_json(), notes="theirs")])
    before = conflicts()
    here.handle(ann_session, push(0, 1, [[0, "A"]]))
    room = here.rooms["r"]
    room.access.runs_allowed = False
    room._access_changed()
    here.handle(cid_session, push(0, 1, [[0, "C"]]))  # in the same commit
    await here.settled()
    assert 1 == conflicts() - before
    assert (None, None) == (ann.closed, cid.closed)
    stored = Access.from_json(await store.access("r") or "")
    assert ("fizzbuzz", False) == (stored.question, stored.runs_allowed)
    assert ("fizzbuzz", "theirs") == (room.access.question, room.notes)
    assert "question" in [message["type"] for message in ann.sent]  # what changed elsewhere is told
    for room_id, text in (("r", "A"), ("s", "C")):
        loaded = await store.load(room_id, 10)
        assert loaded is not None and text == loaded.text()
    await here.stop()
