"""The client side of the versioned protocol: confirmations, rebases, resends and resets."""

from __future__ import annotations

import pytest

from rooms.access import Act, Role, allowed
from rooms.changes import ChangeSet
from rooms.errors import InvalidMessage
from rooms.replica import Replica, UnconfirmedWorkLost


def update(version: int, client_id: str, seq: int, changes: list[object]) -> dict[str, object]:
    return {"type": "update", "version": version, "client_id": client_id, "seq": seq, "changes": changes}


def test_first_edit_is_sent_and_later_ones_wait_for_confirmation() -> None:
    replica = Replica("me")
    first = replica.edit(ChangeSet.of_replace(0, 0, 0, "a"))
    assert {"type": "push", "version": 0, "seq": 1, "changes": [[0, "a"]]} == first
    assert replica.edit(ChangeSet.of_replace(1, 1, 1, "b")) is None
    assert replica.edit(ChangeSet.of_replace(2, 2, 2, "c")) is None
    # Confirmation of seq 1 sends the two pending edits as one batch.
    second = replica.update(update(1, "me", 1, [[0, "a"]]))
    assert {"type": "push", "version": 1, "seq": 2, "changes": [1, [0, "bc"]]} == second
    assert "abc" == replica.text


def test_remote_update_is_rebased_past_inflight_and_pending() -> None:
    replica = Replica("me", "xy", 0)
    replica.edit(ChangeSet.of_replace(2, 2, 2, "!"))  # in flight: "xy!"
    replica.edit(ChangeSet.of_replace(3, 0, 0, ">"))  # pending: ">xy!"
    replica.update(update(1, "other", 1, [1, [0, "-"], 1]))  # remote made on "xy": "x-y"
    assert ">x-y!" == replica.text
    assert replica.inflight is not None
    assert [3, [0, "!"]] == replica.inflight.changes.to_json()
    # The confirmation of the in-flight batch sends pending, rebased onto version 2.
    push = replica.update(update(2, "me", 1, [3, [0, "!"]]))
    assert push is not None
    assert (2, [[0, ">"], 4]) == (push["version"], push["changes"])


def test_concurrent_inserts_at_the_same_place_follow_commit_order() -> None:
    replica = Replica("me")
    replica.edit(ChangeSet.of_replace(0, 0, 0, "mine"))
    replica.update(update(1, "other", 1, [[0, "theirs"]]))
    assert "theirsmine" == replica.text


def test_resend_repeats_the_inflight_seq_at_the_current_version() -> None:
    replica = Replica("me")
    replica.edit(ChangeSet.of_replace(0, 0, 0, "a"))
    replica.update(update(1, "other", 1, [[0, "b"]]))
    assert {"type": "push", "version": 1, "seq": 1, "changes": [1, [0, "a"]]} == replica.resend()


def test_welcome_without_doc_resends_unconfirmed_work() -> None:
    replica = Replica("me", "", 3)
    replica.edit(ChangeSet.of_replace(0, 0, 0, "a"))
    resend = replica.welcome({"type": "welcome", "version": 3})
    assert resend is not None and 1 == resend["seq"]


def test_welcome_without_doc_sends_pending_when_nothing_is_in_flight() -> None:
    replica = Replica("me", "", 3)
    assert replica.welcome({"type": "welcome", "version": 3}) is None


def test_welcome_at_another_version_without_doc_is_a_protocol_error() -> None:
    replica = Replica("me", "", 3)
    with pytest.raises(InvalidMessage):
        replica.welcome({"type": "welcome", "version": 5})


def test_welcome_with_doc_resets_and_reports_lost_work() -> None:
    replica = Replica("me")
    replica.edit(ChangeSet.of_replace(0, 0, 0, "unsent"))
    with pytest.raises(UnconfirmedWorkLost):
        replica.welcome({"type": "welcome", "version": 9, "doc": "server text"})
    assert ("server text", 9, False) == (replica.text, replica.version, replica.has_unconfirmed)


def test_welcome_with_doc_and_no_local_work_just_resets() -> None:
    replica = Replica("me")
    assert replica.welcome({"type": "welcome", "version": 2, "doc": "hi"}) is None
    assert ("hi", 2) == (replica.text, replica.version)


def test_an_update_out_of_order_is_refused() -> None:
    replica = Replica("me")
    with pytest.raises(InvalidMessage):
        replica.update(update(2, "other", 1, [[0, "x"]]))


def test_hello_resumes_from_the_replica_version() -> None:
    replica = Replica("me", "abc", 7)
    hello = replica.hello("ann")
    assert ("me", "ann", 7) == (hello["client_id"], hello["username"], hello["version"])
    assert len(hello["resume_token"]) >= 16
    assert replica.hello("ann", resume=False)["version"] is None


def test_hello_carries_the_epoch_of_the_last_welcome_and_a_stable_token() -> None:
    replica = Replica("me")
    token = replica.hello("ann")["resume_token"]
    replica.welcome({"type": "welcome", "version": 0, "doc": "", "epoch": "e1"})
    assert ("e1", token) == (replica.hello("ann")["epoch"], replica.hello("ann")["resume_token"])
    assert "epoch" not in replica.hello("ann", resume=False)


def test_snapshot_holding_the_inflight_batch_loses_nothing() -> None:
    replica = Replica("me")
    replica.edit(ChangeSet.of_replace(0, 0, 0, "sent"))
    assert replica.welcome({"type": "welcome", "version": 4, "doc": "xsent", "last_seq": 1}) is None
    assert ("xsent", False, 2) == (replica.text, replica.has_unconfirmed, replica.next_seq)


def test_snapshot_without_the_inflight_batch_reports_it_lost() -> None:
    replica = Replica("me")
    replica.edit(ChangeSet.of_replace(0, 0, 0, "sent"))
    with pytest.raises(UnconfirmedWorkLost):
        replica.welcome({"type": "welcome", "version": 4, "doc": "x"})


def test_seq_continues_after_the_servers_last_applied_one() -> None:
    replica = Replica("me", "", 0)
    replica.welcome({"type": "welcome", "version": 0, "last_seq": 41})
    push = replica.edit(ChangeSet.of_replace(0, 0, 0, "a"))
    assert push is not None and 42 == push["seq"]


def test_an_ack_of_the_inflight_seq_confirms_it_and_sends_pending() -> None:
    replica = Replica("me", "ab", 4)
    replica.edit(ChangeSet.of_replace(2, 0, 1, ""))  # in flight: deletes "a"
    replica.edit(ChangeSet.of_replace(1, 1, 1, "!"))  # pending
    replica.update(update(5, "other", 1, [[1], 1]))  # someone deleted the same "a"
    assert replica.inflight is not None and replica.inflight.changes.is_empty
    push = replica.ack({"type": "ack", "seq": 1, "version": 5})
    assert push is not None and (5, 2, [1, [0, "!"]]) == (push["version"], push["seq"], push["changes"])
    assert replica.ack({"type": "ack", "seq": 1, "version": 5}) is None  # a repeated ack changes nothing


def test_an_ack_at_another_version_is_refused() -> None:
    replica = Replica("me", "a", 1)
    replica.edit(ChangeSet.from_json([1]))
    with pytest.raises(InvalidMessage):
        replica.ack({"type": "ack", "seq": 1, "version": 2})


def test_a_batch_of_more_parts_than_the_server_takes_is_sent_as_one_replacement() -> None:
    replica = Replica("me", "a😀cdefgh", 0)
    replica.welcome({"type": "welcome", "version": 0, "max_change_parts": 3})
    changes = ChangeSet.from_json([1, [0, "x"], 2, [0, "y"], 1, [1], 4])  # 7 parts
    push = replica.edit(changes)
    assert push is not None
    coarse = ChangeSet.from_json(push["changes"])
    assert coarse.part_count <= 3
    assert replica.text == coarse.apply("a😀cdefgh") == changes.apply("a😀cdefgh")


def test_resync_says_hello_at_the_current_version_and_keeps_the_batch() -> None:
    replica = Replica("me", "", 0)
    replica.edit(ChangeSet.of_replace(0, 0, 0, "a"))
    hello = replica.resync("ann")
    assert ("hello", 0) == (hello["type"], hello["version"])
    assert replica.inflight is not None and 1 == replica.inflight.seq


@pytest.mark.parametrize("role", [None, *Role])
@pytest.mark.parametrize(("locked", "ended"), [(False, False), (True, False), (True, True)])
def test_a_cursor_is_sent_exactly_when_the_permission_table_allows_it(
    role: Role | None, locked: bool, ended: bool
) -> None:
    replica = Replica("me")
    welcome = {"type": "welcome", "user_id": "u", "version": 0, "doc": "", "role": role, "locked": locked}
    replica.receive([{**welcome, "ended": ended}])
    expected = allowed(role, Act.CURSOR, locked=locked, ended=ended)
    assert expected == (replica.cursor(0, 0) is not None)


def test_link_changes_are_reported_newest_per_role_and_other_shapes_ignored() -> None:
    replica = Replica("me")
    replica.receive([{"type": "welcome", "user_id": "u", "version": 0, "doc": "", "role": "interviewer"}])
    out = replica.receive(
        [
            {"type": "link", "role": "candidate", "token": "old"},
            {"type": "link", "role": "candidate", "token": "new"},
            {"type": "link", "role": "observer"},  # revoked, none live now
            {"type": "link", "role": "observer", "token": 7},
            {"type": "link", "role": "interviewer", "token": "x"},
            {"type": "link", "role": ["candidate"], "token": "x"},
        ]
    )
    assert ({"candidate": "new", "observer": None}, False) == (out.links, out.hello)
