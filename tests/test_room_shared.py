"""A room shared by several processes, driven by hand: a lost commit made again over the
winner's updates (`Room.rebase_over`), and members of other processes (`rooms.room_remote`)."""

from __future__ import annotations

import json

import pytest

from rooms.access import Access, Role
from rooms.changes import ChangeSet
from rooms.document import ClientId, Document
from rooms.protocol import CodeChange
from rooms.room import Room
from rooms.session import CLOSE_REVOKED, CLOSE_TRY_AGAIN_LATER, Left, Shared
from rooms.store import Record
from tests.test_room import commit, hello, make_room, push, sent, types
from tests.test_room_access import interview


def shared_pair() -> tuple[Room, Room]:
    here, _ = make_room("shared")
    there, _ = make_room("shared")
    there.document = Document(epoch=here.document.epoch)  # one room, two processes
    for room in (here, there):
        room.share()
        room.share_presence()
        room.take_actions()
    return here, there


def lose(room: Room) -> list[Record]:
    """The room's commit loses to records already stored: what the committer does after the
    store said `StoreConflict`. The room's new records are returned (committed)."""
    write, _ = room.take_write()
    return list(write.records)


# Document.rollback


def test_a_rolled_back_document_is_as_it_was_text_history_and_seqs() -> None:
    document = Document()
    document.keep_undo()
    document.push(ClientId("a"), 1, 0, ChangeSet.from_json([[0, "one"]]))
    document.settle(1)
    before = (document.text, document.version, document.updates_since(0), document.last_seq(ClientId("b")))
    document.push(ClientId("b"), 1, 1, ChangeSet.from_json([3, [0, " two"]]))
    document.push(ClientId("a"), 2, 2, ChangeSet.from_json([7, [0, " three"]]))
    document.rollback(1)
    assert before == (document.text, document.version, document.updates_since(0), document.last_seq(ClientId("b")))
    assert 1 == document.last_seq(ClientId("a"))
    with pytest.raises(ValueError):
        document.rollback(0)  # settled: committed, never taken back


def test_a_document_without_undo_cannot_roll_back() -> None:
    document = Document()
    document.push(ClientId("a"), 1, 0, ChangeSet.from_json([[0, "x"]]))
    with pytest.raises(ValueError):
        document.rollback(0)


def test_a_rollback_past_what_the_history_keeps_still_restores_the_text() -> None:
    document = Document(history_limit=1)
    document.keep_undo()
    for seq in range(1, 4):
        document.push(ClientId("a"), seq, seq - 1, ChangeSet.from_json([seq - 1, [0, "x"]] if seq > 1 else [[0, "x"]]))
    document.rollback(0)
    assert ("", 0, 0) == (document.text, document.version, document.oldest_version)


# Room.rebase_over


def test_a_lost_commit_is_made_again_after_the_winners_update_and_nobody_is_disconnected() -> None:
    here, there = shared_pair()
    ann, bob = here.join_versioned(hello("ann")), there.join_versioned(hello("bob"))
    cid = there.join_versioned(hello("cid"))
    commit(here), commit(there)
    here.take_actions(), there.take_actions()
    here.receive(ann, push(0, 1, [[0, "A"]]))
    there.receive(bob, push(0, 1, [[0, "B"]]))
    winner = commit(here)
    lose(there)  # version 1 is taken: nothing of it is stored, nothing of it was shown
    assert [] == sent(there.take_actions(), bob)
    there.rebase_over(0, winner)
    assert ("AB", 2) == (there.document.text, there.document.version)
    again = commit(there)
    assert [(2, "bob", 1)] == [(r.version, r.client_id, r.seq) for r in again]
    actions = there.take_actions()
    # Bob hears Ann's update, then his own (with his client_id: his push landed); Cid both.
    assert [(1, None), (2, "bob")] == [(m["version"], m.get("client_id")) for m in sent(actions, bob)]
    assert [(1, None), (2, None)] == [(m["version"], m.get("client_id")) for m in sent(actions, cid)]
    assert not [a for a in actions if isinstance(a, Left)]
    here.receive_committed(again)
    assert "AB" == here.document.text


def test_a_resend_the_winner_committed_is_not_made_twice() -> None:
    """A client whose push reached both processes (it moved after a crash): made once."""
    here, there = shared_pair()
    ann = here.join_versioned(hello("ann"))
    here.receive(ann, push(0, 1, [[0, "A"]]))
    winner = commit(here)
    moved = there.join_versioned(hello("ann2"))
    there.receive(moved, push(0, 1, [[0, "A"]]))
    record = winner[0]
    twin = Record(1, "ann2", 1, record.changes)
    lose(there)
    assert 1 == there.rebase_over(0, [twin])  # the same (client_id, seq): nothing to make
    assert ("A", 1) == (there.document.text, there.document.version)
    assert [] == commit(there)


def test_a_member_welcomed_against_updates_taken_back_is_asked_to_reconnect() -> None:
    here, there = shared_pair()
    ann, bob = here.join_versioned(hello("ann")), there.join_versioned(hello("bob"))
    commit(here), commit(there)
    here.take_actions(), there.take_actions()
    here.receive(ann, push(0, 1, [[0, "A"]]))
    there.receive(bob, push(0, 1, [[0, "B"]]))
    late = there.join_versioned(hello("late"))  # welcomed with "B" at version 1: held
    winner = commit(here)
    lose(there)
    there.rebase_over(0, winner)
    actions = there.take_actions()
    assert [Left(late, None)] == [a for a in actions if isinstance(a, Left) and a.session is late]
    assert CLOSE_TRY_AGAIN_LATER == late.close_code
    assert "welcome" not in types(actions, late)
    assert bob in there.sessions.values()


def test_whole_texts_are_set_again_a_full_text_client_and_a_restore() -> None:
    here, there = shared_pair()
    ann, sam = here.join_versioned(hello("ann")), there.join_full_text("sam")
    carl = there.join_versioned(hello("carl"))
    commit(here), commit(there)
    here.take_actions(), there.take_actions()
    here.receive(ann, push(0, 1, [[0, "A"]]))
    there.handle(sam, CodeChange(type="code_change", code="full", cursor_position=4))
    there.revert(carl, 0, "")  # nothing to restore on top of "full"? it empties the text
    winner = commit(here)
    lose(there)
    there.rebase_over(0, winner)
    # As if Ann's update had come first: Sam's text replaces it, then the restore empties it.
    assert ("", 3) == (there.document.text, there.document.version)
    again = commit(there)
    assert [("seed-" + sam.user_id, 1), ("restore", 3)] == [(r.client_id, r.seq) for r in again]


def test_records_that_do_not_follow_the_committed_version_are_refused() -> None:
    here, there = shared_pair()
    ann = here.join_versioned(hello("ann"))
    here.receive(ann, push(0, 1, [[0, "A"]]))
    winner = commit(here)
    with pytest.raises(ValueError):
        there.rebase_over(1, winner)
    unshared, _ = make_room()
    with pytest.raises(ValueError):
        unshared.rebase_over(0, winner)


# Members of other processes


def test_local_members_are_told_to_the_other_processes_only_when_shared() -> None:
    here, _ = shared_pair()
    ann = here.join_versioned(hello("ann"))
    here.receive(ann, json.dumps({"type": "cursor", "anchor": 0, "head": 0, "version": 0}))
    here.receive(ann, json.dumps({"type": "language", "language": "rust"}))
    here.leave(ann)
    told = [(a.kind, sorted(a.payload)) for a in here.take_actions() if isinstance(a, Shared)]
    assert [
        ("joined", ["color", "user_id", "username"]),
        ("cursor", ["anchor", "head", "user_id", "version"]),
        ("language", ["language", "user_id"]),
        ("left", ["user_id"]),
    ] == told
    alone, _ = make_room()
    alone.join_versioned(hello("bob"))
    assert not [a for a in alone.take_actions() if isinstance(a, Shared)]


def test_a_member_of_another_process_is_shown_like_a_local_one_and_leaves_with_its_process() -> None:
    here, _ = shared_pair()
    ann = here.join_versioned(hello("ann"))
    commit(here)
    here.take_actions()
    here.remote_joined({"user_id": "far", "username": "Far", "color": "#112233", "role": "candidate"})
    here.remote_joined({"user_id": "far", "username": "Again", "color": "#112233"})  # known: ignored
    joined = sent(here.take_actions(), ann)
    assert [("member_joined", "far", "Far", "#112233")] == [
        (m["type"], m["user_id"], m["username"], m["color"]) for m in joined
    ]
    late = here.join_versioned(hello("late"))
    welcome = sent(here.take_actions(), late)[0]
    assert {"ann", "far"} <= {m["username"].lower() for m in welcome["members"]}
    here.sync_remote({})  # its process is gone
    assert [("member_left", "far")] == [(m["type"], m["user_id"]) for m in sent(here.take_actions(), ann)]
    here.remote_left(ann.user_id)  # a local member is never removed from elsewhere
    assert ann.user_id in here.presence


def test_remote_cursors_are_mapped_and_kept_inside_the_text_and_bad_entries_are_skipped() -> None:
    here, _ = shared_pair()
    ann = here.join_versioned(hello("ann"))
    here.receive(ann, push(0, 1, [[0, "hello"]]))
    commit(here)
    here.settle(1)  # as the committer does: version 1 is committed
    here.take_actions()
    here.sync_remote(
        {"far": {"user_id": "far", "username": "Far"}, "bad": {"user_id": 7, "username": "x"}, "x": {"username": 1}}
    )
    here.take_actions()
    here.remote_cursor("far", 0, 0, 0)  # at version 0: mapped over "hello" (sticks before it)
    here.remote_cursor("far", 10**6, 10**6, 1)  # outside the text: kept inside
    here.remote_cursor("nobody", 1, 1, 1)  # not a remote member: ignored
    cursors = [(m["anchor"], m["head"]) for m in sent(here.take_actions(), ann) if m["type"] == "cursor"]
    assert [(0, 0), (5, 5)] == cursors
    here.remote_language("go", "far")
    assert "go" == here.language
    assert [("language", "go")] == [(m["type"], m["language"]) for m in sent(here.take_actions(), ann)]


# Access state stored by another process


def test_access_stored_elsewhere_ends_revoked_members_and_is_told_to_everyone() -> None:
    room, members = interview()
    other = Access.from_json(room.access.to_json())  # what the other process read, then changed
    other.locked = True
    other.question = "fizzbuzz"
    other.runs_allowed = False
    other.revoke(Role.CANDIDATE, 1_700_000_100.0)
    other.add_link(Role.CANDIDATE, 1_700_000_100.0)  # its secret stays with that process
    room.refresh_access(other.to_json(), "notes from elsewhere")
    actions = room.take_actions()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    assert candidate.closed and CLOSE_REVOKED == candidate.close_code
    told = types(actions, interviewer)
    assert {"locked", "question", "runs_allowed", "link", "notes"} <= set(told)
    assert "notes" not in types(actions, members[Role.CANDIDATE])
    assert [None] == [m.get("token") for m in sent(actions, interviewer) if m["type"] == "link"]
    assert "link" not in types(actions, members[Role.OBSERVER])
    assert room.access.locked and room.access_stored == other.to_json()
    room.refresh_access(other.to_json(), "notes from elsewhere")  # the same again: nothing
    assert [] == room.take_actions()


def test_access_stored_elsewhere_waits_while_the_room_has_an_access_change_of_its_own() -> None:
    room, members = interview()
    room.access.locked = True
    room._access_changed()
    elsewhere = Access.from_json(room.access_stored)
    elsewhere.ended = True
    room.refresh_access(elsewhere.to_json(), "")
    assert not room.access.ended  # its own write is checked against what is stored instead
    write, count = room.take_write()
    assert write.access is not None and write.access_base is not None
    assert '"locked":false' in write.access_base[0]
    room.refresh_access(elsewhere.to_json(), "")  # its write is being committed: still ignored
    assert room.access.locked and not room.access.ended
    # The store refused it: both changes are kept, and the other's is told here.
    written = room.merge_access(write.access_base, (elsewhere.to_json(), "their notes"))
    merged = Access.from_json(written[0])
    assert (True, True, "their notes") == (merged.locked, merged.ended, written[1])
    room.committed(count)  # the merged write is stored: what it shows goes out
    assert "ended" in types(room.take_actions(), members[Role.OBSERVER])


def test_an_interviewer_removes_a_member_connected_to_another_process_by_its_link() -> None:
    room, members = interview()
    room.share()
    room.share_presence()
    room.remote_joined({"user_id": "far", "username": "Far", "role": "observer"})
    room.take_actions()
    room.receive(members[Role.INTERVIEWER], json.dumps({"type": "remove", "user_id": "far"}))
    assert room.access.current(Role.OBSERVER) is None  # its process closes it when it reads this
    assert members[Role.OBSERVER].revoked  # and the local observer came through the same link
    room.remote_joined({"user_id": "boss2", "username": "Boss", "role": "interviewer"})
    commit(room)
    room.take_actions()
    room.receive(members[Role.INTERVIEWER], json.dumps({"type": "remove", "user_id": "boss2"}))
    assert "forbidden" in [m.get("code") for m in sent(room.take_actions(), members[Role.INTERVIEWER])]


def test_a_remote_cursor_told_before_its_update_arrived_is_shown_once_it_has() -> None:
    here, there = shared_pair()
    ann, bea = here.join_versioned(hello("ann")), there.join_versioned(hello("bea"))
    commit(here), commit(there)
    here.take_actions()
    here.sync_remote({"far": {"user_id": "far", "username": "Bea"}})
    there.receive(bea, push(0, 1, [[0, "hello"]]))
    records = commit(there)
    here.remote_cursor("far", 5, 5, 1)  # at version 1, which this process has not yet
    assert [] == [m for m in sent(here.take_actions(), ann) if m["type"] == "cursor"]
    here.receive_committed(records)
    here.cursors_due()
    cursors = [(m["anchor"], m["version"]) for m in sent(here.take_actions(), ann) if m["type"] == "cursor"]
    assert [(5, 1)] == cursors
