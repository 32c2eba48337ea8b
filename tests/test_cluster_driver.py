"""The cluster driver (`rooms.cluster.Cluster`) around hand-driven rooms, with a store that
counts what it is asked: a client that was shown a newer version elsewhere, a refresh racing the
room's own writes, cursors told before their update arrived."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from rooms.access import Access, Role
from rooms.cluster import Cluster
from rooms.errors import Forbidden, StorageUnavailable
from rooms.room import Room, RoomId
from rooms.store import Record
from tests.test_room import commit, hello, push, sent
from tests.test_room_access import frame, interview, link_hello, settle
from tests.test_room_shared import lose, shared_pair


class CountingStore:
    """What a cluster asks of its store, answered from a fixed state and counted."""

    def __init__(self, head: int = 0, records: list[Record] | None = None) -> None:
        self.stored_head, self.records = head, records or []
        self.reads = 0
        self.access: tuple[str, str, str] | None = None

    async def head(self, room_ids: Collection[str]) -> dict[str, int]:
        return dict.fromkeys(room_ids, self.stored_head)

    async def history(self, room_id: str, since: int, limit: int) -> list[Record]:
        self.reads += 1
        await asyncio.sleep(0)
        return [record for record in self.records if record.version > since][:limit]

    async def accesses(self, room_ids: Collection[str]) -> dict[str, tuple[str, str, str]]:
        await asyncio.sleep(0)
        return dict.fromkeys(room_ids, self.access) if self.access is not None else {}


def cluster_of(store: CountingStore, room: Room, *, idle: bool = True) -> Cluster:
    rooms = {RoomId(room.room_id): room}
    return Cluster(
        store,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        rooms,
        carry_out=lambda room: None,
        reset=lambda room: None,
        is_idle=lambda room: idle,
        head_check_seconds=0.5,
        catch_up_limit=1000,
    )


async def test_a_client_shown_a_version_the_database_never_had_is_welcomed_at_once() -> None:
    room, _ = shared_pair()
    store = CountingStore(head=0)
    unused: list[Room] = []

    async def reopen() -> Room:
        return room

    hello_from_the_future = hello("x", version=10**9, epoch=room.document.epoch)
    assert room is await cluster_of(store, room).admitting(room, hello_from_the_future, None, reopen, unused.append)
    assert (0, []) == (store.reads, unused)


async def test_a_client_ahead_waits_for_the_catch_up_and_a_busy_room_is_not_polled_in_a_loop() -> None:
    room, there = shared_pair()
    bob = there.join_versioned(hello("bob"))
    there.receive(bob, push(0, 1, [[0, "B"]]))
    records = commit(there)
    store = CountingStore(head=1, records=records)

    async def reopen() -> Room:
        return room

    ahead = hello("x", version=1, epoch=room.document.epoch)
    assert room is await cluster_of(store, room).admitting(room, ahead, None, reopen, lambda room: None)
    ahead = hello("x", version=1, epoch=None)
    assert ("B", 1) == (room.document.text, room.document.version)
    # A room whose own commit never returns: it is refused in the end, after a bounded wait.
    busy, _ = shared_pair()
    unused: list[Room] = []
    store = CountingStore(head=1, records=records)

    async def reopen_busy() -> Room:
        return busy

    with pytest.raises(StorageUnavailable):
        await cluster_of(store, busy, idle=False).admitting(busy, ahead, None, reopen_busy, unused.append)
    assert (0, [busy]) == (store.reads, unused)  # never read while its commit is due; unloaded later


async def test_a_link_revoked_in_the_store_is_refused_before_anything_waits() -> None:
    room, _ = interview()
    room.share()
    token = room.secret_of(Role.CANDIDATE)
    revoked = Access.from_json(room.access_stored)
    revoked.revoke(Role.CANDIDATE, 1_700_000_001.0)
    elsewhere = revoked.to_json()  # another process revoked it; this one has not heard yet
    store = CountingStore()

    async def reopen() -> Room:
        return room

    with pytest.raises(Forbidden):
        stored = (elsewhere, "", "python")
        await cluster_of(store, room).admitting(room, link_hello("c2", token), stored, reopen, lambda room: None)


async def test_a_refresh_read_before_the_rooms_own_revocation_was_stored_does_not_undo_it() -> None:
    room, members = interview()
    room.share()
    room.share_presence()
    store = CountingStore()
    store.access = (room.access_stored, room.notes_stored, room.language)  # read before the revocation
    cluster = cluster_of(store, room)
    reading = asyncio.ensure_future(cluster.refresh_access([RoomId(room.room_id)]))
    await asyncio.sleep(0)  # the read is on its way
    room.receive(members[Role.INTERVIEWER], frame("remove", user_id=members[Role.CANDIDATE].user_id))
    settle(room)  # the revocation is committed while the read was on its way
    await reading
    assert room.access.current(Role.CANDIDATE) is None


def test_a_push_during_a_commit_then_a_lost_commit_is_still_made_again() -> None:
    here, there = shared_pair()
    ann, bob = here.join_versioned(hello("ann")), there.join_versioned(hello("bob"))
    commit(here), commit(there)
    here.take_actions(), there.take_actions()
    there.receive(bob, push(0, 1, [[0, "B"]]))
    write, count = there.take_write()  # version 1's commit is on its way
    there.receive(bob, push(1, 2, [1, [0, "b"]]))  # version 2, meanwhile
    there.settle(write.head)
    there.committed(count)
    here.receive_committed(list(write.records))
    here.receive(ann, push(1, 1, [1, [0, "A"]]))
    winner = commit(here)  # version 2 is Ann's
    lose(there)
    there.rebase_over(1, winner)
    assert ("BAb", 3) == (there.document.text, there.document.version)


def test_a_cursor_waiting_for_its_update_is_shown_once_a_rebase_brought_it() -> None:
    here, there = shared_pair()
    ann, bob = here.join_versioned(hello("ann")), there.join_versioned(hello("bob"))
    commit(here), commit(there)
    here.remote_joined({"user_id": bob.user_id, "username": "bob"})
    here.take_actions(), there.take_actions()
    there.receive(bob, push(0, 1, [[0, "B"]]))
    winner = commit(there)
    here.receive(ann, push(0, 1, [[0, "A"]]))
    here.remote_cursor(bob.user_id, 1, 1, 1)  # before version 1 reached this process
    lose(here)
    here.rebase_over(0, winner)
    commit(here)
    here.take_actions()
    here.cursors_due()  # what the cluster does after the commit that follows
    assert [(1, 2)] == [(m["anchor"], m["version"]) for m in sent(here.take_actions(), ann) if m["type"] == "cursor"]
