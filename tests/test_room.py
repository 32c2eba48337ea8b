"""The sans-I/O `Room`, driven by hand: events in, actions out, no event loop, an injected clock."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from rooms.errors import ClientIdInUse, RateLimited, RoomFull
from rooms.lifecycle import new_room
from rooms.protocol import Hello, Push, WireProtocol
from rooms.room import Room, UncommittedUpdates, UpdatesMissing
from rooms.session import (
    CLOSE_NORMAL,
    CLOSE_REPLACED,
    CLOSE_TRY_AGAIN_LATER,
    Action,
    DropReason,
    Left,
    Refused,
    Reset,
    Send,
    Session,
    Store,
)
from rooms.settings import Settings
from rooms.store import Record

ROOT = Path(__file__).resolve().parent.parent
# The core: no event loop, no server or UI library, no metrics, no store implementation.
PURE_MODULES = [
    "rooms/changes.py",
    "rooms/document.py",
    "rooms/presence.py",
    "rooms/protocol.py",
    "rooms/limits.py",
    "rooms/errors.py",
    "rooms/room.py",
    "rooms/room_messages.py",
    "rooms/session.py",
    "rooms/access.py",
    "rooms/room_access.py",
    "rooms/room_runs.py",
    "rooms/room_rebase.py",
    "rooms/room_remote.py",
]
# `rooms.store` itself is the store's contract (plain records); its implementations are I/O.
IMPURE = ("asyncio", "fastapi", "nicegui", "starlette", "uvicorn", "prometheus_client", "observability", "rooms.store.")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_room(room_id: str = "r", **overrides: Any) -> tuple[Room, Clock]:
    clock = Clock()
    room = new_room(room_id, Settings(**overrides), clock)
    room.wall_clock = lambda: 1_700_000_000.0
    room.mark_changed()  # as the driver does on load: the room's row is stored first
    commit(room)
    return room, clock


def hello(client_id: str, version: int | None = None, token: str | None = None, epoch: str | None = None) -> Hello:
    return Hello(
        type="hello", client_id=client_id, username=client_id, version=version, resume_token=token, epoch=epoch
    )


def push(version: int, seq: int, changes: list[Any]) -> str:
    return json.dumps({"type": "push", "version": version, "seq": seq, "changes": changes})


def commit(room: Room) -> list[Record]:
    """What the committer does: take the room's write, store it (here: nowhere), confirm it."""
    write, count = room.take_write()
    room.committed(count)
    return list(write.records)


def sent(actions: list[Action], session: Session) -> list[dict[str, Any]]:
    """Every message the actions queue for one session, bursts unrolled."""
    messages: list[dict[str, Any]] = []
    for action in actions:
        if isinstance(action, Send) and action.session is session:
            frames = (action.message,) if isinstance(action.message, str) else action.message
            messages.extend(json.loads(frame) for frame in frames)
    return messages


def types(actions: list[Action], session: Session) -> list[str]:
    return [message["type"] for message in sent(actions, session)]


def test_the_room_and_its_core_import_no_event_loop_server_or_metrics() -> None:
    for module in PURE_MODULES:
        tree = ast.parse((ROOT / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert [] == [name for name in imported if name.split(".")[0] in IMPURE or name.startswith(IMPURE)], module


def test_a_joiner_is_welcomed_and_the_others_are_told() -> None:
    room, _ = make_room()
    ann = room.join_versioned(hello("ann"))
    room.take_actions()
    bob = room.join_versioned(hello("bob"))
    actions = room.take_actions()
    assert ["member_joined"] == types(actions, ann)
    welcome = sent(actions, bob)[0]
    assert ("welcome", 0, "", ["ann", "bob"]) == (
        welcome["type"],
        welcome["version"],
        welcome["doc"],
        [m["username"] for m in welcome["members"]],
    )


def test_an_update_is_shown_to_no_one_before_its_commit_then_to_everyone_in_order() -> None:
    room, _ = make_room()
    ann, bob = room.join_versioned(hello("ann")), room.join_versioned(hello("bob"))
    room.take_actions()
    room.receive(ann, push(0, 1, [[0, "a"]]))
    room.receive(bob, push(1, 1, [1, [0, "b"]]))
    before = room.take_actions()
    assert [] == [a for a in before if isinstance(a, Send)]
    assert [Store(), Store()] == [a for a in before if isinstance(a, Store)]
    assert "ab" == room.document.text  # applied at once: the next push rebases on it
    records = commit(room)
    after = room.take_actions()
    assert [1, 2] == [r.version for r in records]
    assert [(1, "ann"), (2, None)] == [(m["version"], m.get("client_id")) for m in sent(after, ann)]
    assert [(1, None), (2, "bob")] == [(m["version"], m.get("client_id")) for m in sent(after, bob)]


def test_a_commit_releases_only_what_was_made_before_it() -> None:
    room, _ = make_room()
    ann = room.join_versioned(hello("ann"))
    room.take_actions()
    room.receive(ann, push(0, 1, [[0, "a"]]))
    write, count = room.take_write()
    room.receive(ann, push(1, 2, [1, [0, "b"]]))  # after the write was taken
    room.committed(count)
    assert [1] == [m["version"] for m in sent(room.take_actions(), ann)]
    commit(room)
    assert [2] == [m["version"] for m in sent(room.take_actions(), ann)]
    assert [1] == [r.version for r in write.records]


def test_a_full_text_client_gets_the_whole_text_after_a_versioned_push() -> None:
    room, _ = make_room()
    ann = room.join_versioned(hello("ann"))
    sam = room.join_full_text("sam")
    room.take_actions()
    room.receive(ann, push(0, 1, [[0, "hi"]]))
    commit(room)
    assert [{"type": "code_change", "code": "hi", "cursor_position": 2, "user_id": ann.user_id}] == sent(
        room.take_actions(), sam
    )


def test_updates_committed_elsewhere_reach_every_client_and_later_pushes_rebase_over_them() -> None:
    here, _ = make_room("shared")
    there, _ = make_room("shared")
    ann = here.join_versioned(hello("ann"))
    bob = there.join_versioned(hello("bob"))
    here.take_actions()
    there.take_actions()
    here.receive(ann, push(0, 1, [[0, "hello"]]))
    records = commit(here)
    here.take_actions()
    there.receive_committed(records)
    shown = sent(there.take_actions(), bob)
    assert [(1, None, [[0, "hello"]])] == [(m["version"], m.get("client_id"), m["changes"]) for m in shown]
    # Bob typed at version 0, before he saw it: his push is rebased over it (of two inserts at
    # one place, the one committed first comes first, in every process).
    there.receive(bob, push(0, 1, [[0, "> "]]))
    assert "hello> " == there.document.text
    here.receive_committed(commit(there))
    assert "hello> " == here.document.text
    assert [2] == [m["version"] for m in sent(here.take_actions(), ann)]


def test_updates_committed_elsewhere_are_applied_once_and_a_gap_asks_for_the_missing_ones() -> None:
    here, _ = make_room()
    there, _ = make_room()
    writer = here.join_versioned(hello("w"))
    for seq in range(1, 4):
        here.receive(writer, push(seq - 1, seq, [seq - 1, [0, "x"]] if seq > 1 else [[0, "x"]]))
    records = commit(here)
    there.receive_committed(records[:1])
    there.receive_committed(records[:2])  # the first again: skipped
    with pytest.raises(UpdatesMissing) as missing:
        there.receive_committed([_renumbered(records[2], 4)])
    assert (2, 4) == (missing.value.after, missing.value.first)
    there.receive_committed(records)
    assert ("xxx", 3) == (there.document.text, there.document.version)
    assert 3 == there.document.last_seq(writer.client_id)  # a resend to this room is a duplicate


def _renumbered(record: Record, version: int) -> Record:
    return Record(version, record.client_id, record.seq, record.changes, record.user_id)


def test_updates_from_elsewhere_wait_while_the_room_has_uncommitted_updates_of_its_own() -> None:
    here, _ = make_room()
    there, _ = make_room()
    ann, bob = here.join_versioned(hello("ann")), there.join_versioned(hello("bob"))
    here.receive(ann, push(0, 1, [[0, "a"]]))
    there.receive(bob, push(0, 1, [[0, "b"]]))  # not committed: version 1 is taken here too
    with pytest.raises(UncommittedUpdates):
        there.receive_committed(commit(here))
    assert "b" == there.document.text


def test_the_heartbeat_pings_everyone_and_drops_a_silent_versioned_client() -> None:
    room, clock = make_room(heartbeat_timeout_seconds=90)
    talking, silent, sam = room.join_versioned(hello("t")), room.join_versioned(hello("s")), room.join_full_text("sam")
    room.take_actions()
    clock.now += 60
    room.receive(talking, '{"type":"pong"}')
    clock.now += 40
    room.tick()
    actions = room.take_actions()
    assert [Left(silent, DropReason.HEARTBEAT_TIMEOUT)] == [a for a in actions if isinstance(a, Left)]
    assert (CLOSE_TRY_AGAIN_LATER, "dropped: heartbeat_timeout") == (silent.close_code, silent.close_reason)
    assert ["ping", "member_left"] == types(actions, talking)
    assert ["user_left", "ping"] == types(actions, sam)  # full-text clients need not answer


def test_a_flood_is_refused_with_one_reply_a_second() -> None:
    room, clock = make_room(rate_limit_per_second=10, rate_limit_burst=5)
    ann = room.join_versioned(hello("ann"))
    room.take_actions()
    for _ in range(20):
        room.receive(ann, '{"type":"ping"}')
    actions = room.take_actions()
    assert 15 == len([a for a in actions if isinstance(a, Refused) and isinstance(a.error, RateLimited)])
    assert ["pong"] * 5 + ["error"] == types(actions, ann)
    clock.now += 0.5  # five tokens back
    for _ in range(6):
        room.receive(ann, '{"type":"ping"}')
    assert ["pong"] * 5 == types(room.take_actions(), ann)  # refused again, but told once a second
    clock.now += 1.0  # a second after the last reply, the bucket full again
    for _ in range(6):
        room.receive(ann, '{"type":"ping"}')
    assert ["pong"] * 5 + ["error"] == types(room.take_actions(), ann)


def test_a_second_connection_with_the_token_takes_over_and_without_it_is_refused() -> None:
    room, _ = make_room()
    first = room.join_versioned(hello("tab", token="t" * 16))
    with pytest.raises(ClientIdInUse):
        room.join_versioned(hello("tab"))
    second = room.join_versioned(hello("tab", token="t" * 16))
    actions = room.take_actions()
    assert Left(first) in actions
    assert (CLOSE_REPLACED, second) == (first.close_code, room.clients[second.client_id])


def test_leave_tells_the_others_and_closes_normally() -> None:
    room, _ = make_room()
    ann, bob = room.join_versioned(hello("ann")), room.join_versioned(hello("bob"))
    room.take_actions()
    room.receive(ann, '{"type":"leave"}')
    actions = room.take_actions()
    assert [Left(ann)] == [a for a in actions if isinstance(a, Left)]
    assert ((CLOSE_NORMAL, "left"), ["member_left"]) == ((ann.close_code, ann.close_reason), types(actions, bob))
    room.leave(ann)  # again: nothing more
    assert [] == room.take_actions()


def test_a_full_room_refuses_the_next_client() -> None:
    room, _ = make_room(max_members_per_room=1)
    room.join_full_text("sam")
    with pytest.raises(RoomFull):
        room.join_versioned(hello("ann"))


def test_a_failed_commit_ends_every_session_and_shows_nothing_held() -> None:
    room, _ = make_room()
    ann, sam = room.join_versioned(hello("ann")), room.join_full_text("sam")
    room.take_actions()
    room.receive(ann, push(0, 1, [[0, "a"]]))
    room.take_write()
    room.fail()
    actions = room.take_actions()
    assert [] == [a for a in actions if isinstance(a, Send)]
    assert {ann, sam} == {a.session for a in actions if isinstance(a, Left)}
    assert {CLOSE_TRY_AGAIN_LATER} == {ann.close_code, sam.close_code}
    assert [] == room.take_actions()


def test_a_store_far_behind_resets_the_room_once() -> None:
    room, _ = make_room(outbound_queue_size=5)
    ann = room.join_versioned(hello("ann"))
    room.take_actions()
    for seq in range(1, 20):
        room.receive(ann, push(seq - 1, seq, [seq - 1, [0, "x"]] if seq > 1 else [[0, "x"]]))
    assert [Reset("store too slow")] == [a for a in room.take_actions() if isinstance(a, Reset)]


def test_a_resume_within_the_history_gets_the_updates_it_missed() -> None:
    room, _ = make_room()
    ann = room.join_versioned(hello("ann", token="a" * 16))
    for seq in range(1, 4):
        room.receive(ann, push(seq - 1, seq, [seq - 1, [0, str(seq)]] if seq > 1 else [[0, "1"]]))
    commit(room)
    room.leave(ann)
    room.take_actions()
    back = room.join_versioned(hello("ann", version=1, token="a" * 16, epoch=room.document.epoch))
    welcome, *updates = sent(room.take_actions(), back)
    assert (1, None, 3) == (welcome["version"], welcome.get("doc"), welcome["last_seq"])
    assert [(2, "ann"), (3, "ann")] == [(u["version"], u["client_id"]) for u in updates]


def test_versioned_only_messages_are_refused_to_a_full_text_client_and_the_room_goes_on() -> None:
    room, _ = make_room()
    sam = room.join_full_text("sam")
    room.take_actions()
    room.receive(sam, Push(type="push", version=0, seq=1, changes=[[0, "x"]]))
    [error] = sent(room.take_actions(), sam)
    assert "full-text protocol" in error["message"]
    assert WireProtocol.FULL_TEXT is sam.protocol and not sam.closed
