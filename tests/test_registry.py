"""The room registry with in-memory transports: joins, fan-out, drops, heartbeats, eviction."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from rooms import room_messages
from rooms.changes import ChangeSet
from rooms.errors import (
    ClientIdInUse,
    DocumentTooLarge,
    InvalidChanges,
    InvalidMessage,
    RateLimited,
    RoomFull,
    SeqReused,
    ServerBusy,
    ServerStopping,
    TooManyConnections,
    TooManyNewRooms,
    VersionTooOld,
)
from rooms.presence import Selection
from rooms.protocol import CodeChange, Cursor, Hello, Language, Ping, Push, SyncRequest
from rooms.registry import RoomRegistry
from rooms.retention import PURGE_BATCH
from rooms.room import Room
from rooms.session import CLOSE_REPLACED, DropReason, Session, token_hash
from rooms.settings import Settings
from rooms.store import StoredRoom
from rooms.store.memory import MemoryStore
from tests.conftest import LoopTime, begun


class FakeTransport:
    name = "fake"

    def __init__(self, *, stuck: bool = False, failing: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.stuck = stuck
        self.failing = failing
        self.changed = asyncio.Event()  # set by every frame written and by the close

    async def send(self, message: str) -> None:
        if self.failing:
            raise ConnectionError("peer went away")
        if self.stuck:
            await asyncio.Event().wait()
        self.receive(message)

    def direct_writer(self) -> Callable[[str], None] | None:
        """`Transport.writer`: a stuck connection's buffer is full, so it cannot take a frame now."""
        if self.stuck:
            return None
        return self.write

    def write(self, message: str) -> None:
        if self.failing:
            raise ConnectionError("peer went away")
        self.receive(message)

    def receive(self, message: str) -> None:
        """A frame reaches the client."""
        self.sent.append(json.loads(message))
        self.changed.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.changed.set()

    async def wait_until(self, condition: Callable[[], object], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds, looking again each time a frame arrives or the
        connection closes."""
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]


@pytest.fixture(autouse=True, params=["send", "writer"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: through the sender task's `send`, and through `Transport.writer`."""
    if request.param == "writer":
        monkeypatch.setattr(FakeTransport, "writer", FakeTransport.direct_writer, raising=False)
    return str(request.param)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_registry(**overrides: Any) -> tuple[RoomRegistry, Clock]:
    clock = Clock()
    return RoomRegistry(Settings(**overrides), clock=clock), clock


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, letting the event loop run meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        await asyncio.sleep(0.001)


def hello(client_id: str, username: str = "ann", version: int | None = None) -> Hello:
    return Hello(type="hello", client_id=client_id, username=username, version=version)


def hello_with_token(client_id: str, token: str, version: int | None = None) -> Hello:
    return Hello(type="hello", client_id=client_id, username="ann", version=version, resume_token=token)


def push(version: int, seq: int, changes: list[Any]) -> Push:
    return Push(type="push", version=version, seq=seq, changes=changes)


def append(length: int, text: str) -> list[Any]:
    """CodeMirror's JSON for inserting ``text`` at the end of a document of ``length`` units."""
    return [length, [0, text]] if length else [[0, text]]


def type_chars(registry: RoomRegistry, writer: Session, count: int, char: str = "x") -> None:
    """``count`` pushes of one character each at the end, each at the version before it."""
    writer.limit.own.burst = writer.limit.own.tokens = max(writer.limit.own.tokens, count + 10)
    for seq in range(1, count + 1):
        registry.handle(writer, push(seq - 1, seq, append(seq - 1, char)))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_versioned_join_gets_welcome_with_members_and_document() -> None:
    registry, _ = make_registry()
    first, second = FakeTransport(), FakeTransport()
    await registry.join_versioned("r", first, hello("c1", "ann"))
    await registry.join_versioned("r", second, hello("c2", "bob"))
    await registry.settled()
    welcome = second.sent[0]
    assert ("welcome", 0, "", "python") == (welcome["type"], welcome["version"], welcome["doc"], welcome["language"])
    assert ["ann", "bob"] == [m["username"] for m in welcome["members"]]
    assert "bob" == first.of_type("member_joined")[0]["username"]


async def test_full_text_joiner_gets_nothing_and_others_get_user_joined() -> None:
    registry, _ = make_registry()
    first, second = FakeTransport(), FakeTransport()
    await registry.join_full_text("r", first, "ann")
    await registry.join_full_text("r", second, "bob")
    await registry.settled()
    assert [] == second.sent
    assert [{"type": "user_joined", "user_id": first.sent[0]["user_id"], "username": "bob"}] == first.sent


async def test_update_reaches_everyone_including_author_in_version_order() -> None:
    registry, _ = make_registry()
    transports = [FakeTransport() for _ in range(3)]
    sessions = [await registry.join_versioned("r", t, hello(f"c{i}")) for i, t in enumerate(transports)]
    registry.handle(sessions[0], push(0, 1, [[0, "a"]]))
    registry.handle(sessions[1], push(0, 1, [[0, "b"]]))
    await registry.settled()
    for index, transport in enumerate(transports):
        # Only its author gets an update's client_id.
        mine = {0: "c0", 1: "c1"}.get(index)
        expected = [(1, "c0" if mine == "c0" else None), (2, "c1" if mine == "c1" else None)]
        assert expected == [(u["version"], u.get("client_id")) for u in transport.of_type("update")]


async def test_full_text_code_change_reaches_versioned_clients_as_minimal_update() -> None:
    registry, _ = make_registry()
    versioned, seed = FakeTransport(), FakeTransport()
    await registry.join_versioned("r", versioned, hello("c1"))
    seed_session = await registry.join_full_text("r", seed, "sam")
    registry.handle(seed_session, CodeChange(type="code_change", code="print(1)", cursor_position=8))
    registry.handle(seed_session, CodeChange(type="code_change", code="print(12)", cursor_position=8))
    await registry.settled()
    assert [[[0, "print(1)"]], [7, [0, "2"], 1]] == [u["changes"] for u in versioned.of_type("update")]
    assert [] == seed.of_type("code_change")


async def test_versioned_push_reaches_full_text_clients_as_full_text() -> None:
    registry, _ = make_registry()
    versioned, seed = FakeTransport(), FakeTransport()
    session = await registry.join_versioned("r", versioned, hello("c1"))
    await registry.join_full_text("r", seed, "sam")
    registry.handle(session, push(0, 1, [[0, "abc"]]))
    await registry.settled()
    assert [{"type": "code_change", "code": "abc", "cursor_position": 3, "user_id": session.user_id}] == (
        seed.of_type("code_change")
    )


async def test_hello_with_known_version_gets_missing_updates_without_doc() -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    registry.handle(writer, push(0, 1, [[0, "ab"]]))
    registry.handle(writer, push(1, 2, [2, [0, "c"]]))
    late = FakeTransport()
    await registry.join_versioned("r", late, hello("c2", version=1))
    await registry.settled()
    assert "doc" not in late.sent[0]
    assert 1 == late.sent[0]["version"]
    assert [2] == [u["version"] for u in late.of_type("update")]


async def test_hello_with_version_beyond_history_gets_snapshot() -> None:
    registry, _ = make_registry(history_limit=1)
    writer = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    type_chars(registry, writer, 3)
    late = FakeTransport()
    await registry.join_versioned("r", late, hello("c2", version=0))
    await registry.settled()
    assert ("xxx", 3) == (late.sent[0]["doc"], late.sent[0]["version"])
    assert [] == late.of_type("update")


async def test_push_too_old_raises_version_too_old() -> None:
    registry, _ = make_registry(history_limit=1)
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    registry.handle(session, push(0, 1, [[0, "a"]]))
    registry.handle(session, push(1, 2, [1, [0, "b"]]))
    with pytest.raises(VersionTooOld):
        registry.handle(session, push(0, 3, [[0, "c"]]))


async def test_bad_changes_raise_and_leave_document_intact() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    with pytest.raises(InvalidChanges):
        registry.handle(session, push(0, 1, append(5, "x")))
    assert ("", 0) == (session.room.document.text, session.room.document.version)


async def test_report_uses_the_sessions_protocol() -> None:
    registry, _ = make_registry()
    versioned, seed = FakeTransport(), FakeTransport()
    versioned_session = await registry.join_versioned("r", versioned, hello("c1"))
    seed_session = await registry.join_full_text("r", seed, "sam")
    registry.report(versioned_session, InvalidMessage("nope"))
    registry.report(seed_session, InvalidMessage("nope"))
    await registry.settled()
    assert {"type": "error", "code": "invalid_message", "message": "nope"} == versioned.of_type("error")[0]
    assert {"type": "error", "message": "nope"} == seed.of_type("error")[0]


async def test_rate_limit_refuses_a_flood_and_answers_once_a_second() -> None:
    registry, clock = make_registry(rate_limit_per_second=10, rate_limit_burst=5)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    refused = 0
    for seq in range(1, 51):
        try:
            registry.handle(session, push(seq - 1 - refused, seq, append(seq - 1 - refused, "x")))
        except RateLimited as error:
            refused += 1
            registry.report(session, error)
    await registry.settled()
    assert (45, 5) == (refused, session.room.document.version)
    assert 1 == len(transport.of_type("error"))
    clock.now += 1.0  # the bucket refills at 10 a second
    registry.handle(session, push(5, 100, append(5, "y")))
    assert "xxxxxy" == session.room.document.text


async def test_cursor_is_mapped_to_current_version_and_sent_to_others() -> None:
    registry, _ = make_registry()
    mover, watcher = FakeTransport(), FakeTransport()
    author = await registry.join_versioned("r", mover, hello("c1"))
    await registry.join_versioned("r", watcher, hello("c2"))
    registry.handle(author, push(0, 1, [[0, "world"]]))
    registry.handle(author, push(1, 2, [[0, "hello "], 5]))
    registry.handle(author, Cursor(type="cursor", version=1, anchor=5, head=5))
    await registry.settled()
    assert [{"type": "cursor", "user_id": author.user_id, "anchor": 11, "head": 11, "version": 2}] == (
        watcher.of_type("cursor")
    )
    assert [] == mover.of_type("cursor")


async def test_cursor_outside_document_is_refused() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    with pytest.raises(InvalidMessage):
        registry.handle(session, Cursor(type="cursor", version=0, anchor=1, head=0))


async def test_late_joiner_sees_existing_cursors() -> None:
    registry, _ = make_registry()
    author = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    registry.handle(author, push(0, 1, [[0, "abc"]]))
    registry.handle(author, Cursor(type="cursor", version=1, anchor=1, head=2))
    late = FakeTransport()
    await registry.join_versioned("r", late, hello("c2"))
    await registry.settled()
    assert [(1, 2)] == [(c["anchor"], c["head"]) for c in late.of_type("cursor")]


async def test_language_change_is_broadcast_to_everyone() -> None:
    registry, _ = make_registry()
    first, second = FakeTransport(), FakeTransport()
    session = await registry.join_versioned("r", first, hello("c1"))
    await registry.join_versioned("r", second, hello("c2"))
    registry.handle(session, Language(type="language", language="javascript"))
    await registry.settled()
    assert ["javascript"] == [m["language"] for m in first.of_type("language")]
    assert ["javascript"] == [m["language"] for m in second.of_type("language")]
    assert "javascript" == session.room.language


async def test_language_with_markup_is_refused() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    with pytest.raises(InvalidMessage):
        registry.handle(session, Language(type="language", language="<script>"))
    assert "python" == session.room.language


async def test_sync_request_answers_sender_with_current_text() -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_full_text("r", transport, "sam")
    registry.handle(session, CodeChange(type="code_change", code="x = 1", cursor_position=None))
    registry.handle(session, SyncRequest(type="sync_request"))
    await registry.settled()
    assert ["x = 1"] == [m["code"] for m in transport.of_type("code_change")]


async def test_leave_announces_member_left_once() -> None:
    registry, _ = make_registry()
    staying, seed = FakeTransport(), FakeTransport()
    leaving = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    await registry.join_versioned("r", staying, hello("c2"))
    await registry.join_full_text("r", seed, "sam")
    registry.leave(leaving)
    registry.leave(leaving)
    await registry.settled()
    assert [leaving.user_id] == [m["user_id"] for m in staying.of_type("member_left")]
    assert [leaving.user_id] == [m["user_id"] for m in seed.of_type("user_left")]


async def test_a_session_that_left_is_freed_without_the_cycle_collector() -> None:
    """Its cancelled sender keeps no exception: one would hold the sender's frame, which holds
    the session, which holds the sender, and only a full collection would free the three."""
    registry, _ = make_registry()
    await registry.join_versioned("r", FakeTransport(), hello("c2"))
    gc.collect()
    gc.disable()
    try:
        leaving = await registry.join_versioned("r", FakeTransport(), hello("c1"))
        registry.receive(leaving, push(0, 1, append(0, "x")))
        await registry.settled()
        gone = weakref.ref(leaving)
        registry.leave(leaving)
        del leaving
        await registry.settled()
        assert gone() is None
    finally:
        gc.enable()


async def test_queue_overflow_drops_only_the_slow_client() -> None:
    registry, _ = make_registry(outbound_queue_size=5)
    fast, slow = FakeTransport(), FakeTransport(stuck=True)
    writer = await registry.join_versioned("r", fast, hello("c1"))
    slow_session = await registry.join_versioned("r", slow, hello("c2"))
    before = metric("collab_dropped_sockets_total", reason="queue_overflow")
    for seq in range(1, 11):
        registry.handle(writer, push(seq - 1, seq, append(seq - 1, "x")))
        await registry.settled()
    assert slow_session.closed
    assert slow_session.user_id not in writer.room.sessions
    assert 10 == len(fast.of_type("update"))
    assert [slow_session.user_id] == [m["user_id"] for m in fast.of_type("member_left")]
    assert before + 1 == metric("collab_dropped_sockets_total", reason="queue_overflow")


async def test_failing_send_drops_the_client() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(failing=True), hello("c1"))
    await registry.settled()
    assert session.closed


async def test_send_timeout_drops_the_client_and_only_it() -> None:
    registry, clock = make_registry(send_timeout_seconds=5)
    stuck = await registry.join_versioned("r", FakeTransport(stuck=True), hello("c1"))
    healthy = await registry.join_versioned("r", FakeTransport(), hello("c2"))
    sender = registry.outboxes.by_session[stuck].task
    await registry.settled()
    registry.check_sends()
    assert not stuck.closed
    clock.now += 6
    registry.check_sends()
    await registry.settled()
    assert stuck.closed
    assert not healthy.closed
    assert sender is not None and sender.done()


async def test_watchdog_runs_on_its_own(loop_time: LoopTime) -> None:
    registry, clock = make_registry(send_timeout_seconds=5)  # the watchdog looks every second
    await registry.start()
    await loop_time.advance(0)  # the callbacks ready before this timer ran first: the watchdog has started
    session = await registry.join_versioned("r", FakeTransport(stuck=True), hello("c1"))
    await registry.settled()  # the welcome's write is stuck
    await loop_time.advance(1.0)
    stuck_within_timeout = session.closed
    clock.now += 6
    await loop_time.advance(1.0)
    await registry.settled()
    closed = session.closed
    await registry.stop()
    assert (False, True) == (stuck_within_timeout, closed)


async def test_heartbeat_pings_and_drops_silent_versioned_clients() -> None:
    registry, clock = make_registry(heartbeat_timeout_seconds=60)
    silent, talking, seed = FakeTransport(), FakeTransport(), FakeTransport()
    silent_session = await registry.join_versioned("r", silent, hello("c1"))
    talking_session: Session = await registry.join_versioned("r", talking, hello("c2"))
    seed_session = await registry.join_full_text("r", seed, "sam")
    clock.now += 45
    registry.handle(talking_session, push(0, 1, [[0, "x"]]))
    registry.heartbeat()
    clock.now += 30
    registry.heartbeat()
    await registry.settled()
    assert silent_session.closed
    assert not talking_session.closed
    assert not seed_session.closed  # full-text clients rely on WebSocket-level pings instead
    assert 2 == len(talking.of_type("ping"))
    assert DropReason.HEARTBEAT_TIMEOUT.value in (silent.closed or (0, ""))[1]


async def test_empty_room_is_evicted_after_grace_and_kept_if_rejoined(loop_time: LoopTime) -> None:
    registry, _ = make_registry(room_grace_seconds=5)
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    registry.handle(session, push(0, 1, [[0, "kept"]]))
    registry.leave(session)
    again = await registry.join_versioned("r", FakeTransport(), hello("c2"))
    await registry.settled()
    await loop_time.advance(10)
    assert "kept" == registry.rooms["r"].document.text
    registry.leave(again)
    await registry.settled()
    await loop_time.advance(4)
    assert "r" in registry.rooms  # within the grace
    await loop_time.advance(2)
    assert "r" not in registry.rooms


async def test_room_full_is_refused() -> None:
    registry, _ = make_registry(max_members_per_room=1)
    await registry.join_versioned("r", FakeTransport(), hello("c1"))
    with pytest.raises(RoomFull):
        await registry.join_versioned("r", FakeTransport(), hello("c2"))


async def test_stop_closes_every_session_with_service_restart() -> None:
    registry, _ = make_registry()
    await registry.start()
    transport = FakeTransport()
    await registry.join_versioned("r", transport, hello("c1"))
    await registry.stop()
    assert transport.closed is not None and 1012 == transport.closed[0]
    assert not registry.accepting
    assert {} == registry.rooms


async def test_batching_client_gets_one_frame_for_queued_messages() -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    batched = Hello(type="hello", client_id="c1", username="ann", version=None, batch=True)
    session = await registry.join_versioned("r", transport, batched)
    await registry.settled()
    transport.sent.clear()
    registry.handle(session, push(0, 1, [[0, "a"]]))
    registry.handle(session, push(1, 2, [1, [0, "b"]]))
    await registry.settled()
    assert 1 == len(transport.sent)
    assert [1, 2] == [m["version"] for m in transport.sent[0]]


async def test_resent_push_is_not_broadcast_again() -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    registry.handle(session, push(0, 1, [[0, "a"]]))
    registry.handle(session, push(1, 1, [1, [0, "a"]]))
    await registry.settled()
    assert [1] == [u["version"] for u in transport.of_type("update")]


async def test_ping_is_answered_with_pong() -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_full_text("r", transport, "sam")
    registry.handle(session, Ping(type="ping"))
    await registry.settled()
    assert [{"type": "pong"}] == transport.sent


async def test_same_text_code_change_relays_cursor_to_full_text_and_versioned_clients() -> None:
    registry, _ = make_registry()
    author, seed, versioned = FakeTransport(), FakeTransport(), FakeTransport()
    session = await registry.join_full_text("r", author, "sam")
    registry.handle(session, CodeChange(type="code_change", code="abc", cursor_position=0))
    await registry.join_full_text("r", seed, "sid")
    await registry.join_versioned("r", versioned, hello("c1"))
    registry.handle(session, CodeChange(type="code_change", code="abc", cursor_position=2))
    await registry.settled()
    assert [("abc", 2)] == [(m["code"], m["cursor_position"]) for m in seed.of_type("code_change")]
    # The joiner got the cursor as it was (0), then its move.
    assert [(0, 0), (2, 2)] == [(m["anchor"], m["head"]) for m in versioned.of_type("cursor")]
    assert 1 == session.room.document.version


async def test_second_hello_is_refused() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    with pytest.raises(InvalidMessage):
        registry.handle(session, hello("c1"))


async def test_messages_after_leave_are_ignored() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    registry.leave(session)
    registry.handle(session, push(0, 1, [[0, "late"]]))
    assert "" == registry.rooms["r"].document.text


async def test_heartbeat_loop_runs_on_its_interval(loop_time: LoopTime) -> None:
    registry, _ = make_registry(heartbeat_interval_seconds=10)
    transport = FakeTransport()
    await registry.join_full_text("r", transport, "sam")
    await registry.start()
    await loop_time.advance(0)  # the callbacks ready before this timer ran first: the loop has started
    pings = []
    for _ in range(3):
        await loop_time.advance(10)
        await registry.settled()
        pings.append(len(transport.of_type("ping")))
    await registry.stop()
    assert [1, 2, 3] == pings


async def test_zero_grace_evicts_as_soon_as_the_step_ends(loop_time: LoopTime) -> None:
    registry, _ = make_registry(room_grace_seconds=0)
    session = await registry.join_versioned("r", FakeTransport(), hello("c1"))
    await registry.settled()  # the room's creation is committed
    registry.leave(session)
    await loop_time.advance(0)  # the timers due now have run; the loop's clock has not moved
    assert {} == registry.rooms


async def test_takeover_with_zero_grace_keeps_the_document() -> None:
    registry, _ = make_registry(room_grace_seconds=0)
    old = await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", "t" * 16))
    registry.handle(old, push(0, 1, [[0, "important"]]))
    transport = FakeTransport()
    await registry.join_versioned("r", transport, hello_with_token("tab", "t" * 16, version=1))
    await registry.settled()
    assert ("important", 1) == (registry.rooms["r"].document.text, transport.sent[0]["version"])


async def test_no_one_is_admitted_while_stopping() -> None:
    registry, _ = make_registry()
    registry.accepting = False
    with pytest.raises(ServerStopping):
        await registry.join_versioned("r", FakeTransport(), hello("late"))
    assert {} == registry.rooms


async def test_a_long_catch_up_is_not_taken_for_a_slow_client() -> None:
    registry, _ = make_registry(outbound_queue_size=10)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    writer.limit.own.burst = writer.limit.own.tokens = 1000
    for seq in range(1, 101):
        registry.handle(writer, push(seq - 1, seq, append(seq - 1, "x")))
        await registry.settled()
    transport = FakeTransport()
    late = await registry.join_versioned("r", transport, hello("late", version=0))
    await registry.settled()
    assert not late.closed
    assert list(range(1, 101)) == [u["version"] for u in transport.of_type("update")]


async def test_a_catch_up_over_half_the_character_budget_becomes_a_snapshot() -> None:
    registry, _ = make_registry(outbound_queue_chars=2000)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    for seq in range(1, 21):
        registry.handle(writer, push(seq - 1, seq, append((seq - 1) * 100, "y" * 100)))
        await registry.settled()
    transport = FakeTransport()
    await registry.join_versioned("r", transport, hello("late", version=0))
    await registry.settled()
    assert ("y" * 2000, 20) == (transport.sent[0]["doc"], transport.sent[0]["version"])
    assert [] == transport.of_type("update")


async def test_gauges_return_to_zero_when_everyone_leaves() -> None:
    registry, _ = make_registry()
    before = (metric("collab_members"), metric("collab_connections", transport="fake", protocol="versioned"))
    sessions = [await registry.join_versioned("r", FakeTransport(), hello(f"c{i}")) for i in range(3)]
    registry.drop(sessions[0], DropReason.SEND_FAILED)
    for session in sessions:
        registry.leave(session)
    after = (metric("collab_members"), metric("collab_connections", transport="fake", protocol="versioned"))
    assert before == after


async def test_hello_for_a_connected_client_id_is_refused() -> None:
    registry, _ = make_registry()
    await registry.join_versioned("r", FakeTransport(), hello("tab"))
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello("tab"))
    assert 1 == len(registry.rooms["r"].sessions)


async def test_hello_with_the_resume_token_takes_the_connection_over() -> None:
    registry, _ = make_registry()
    old_transport, watcher = FakeTransport(), FakeTransport()
    old = await registry.join_versioned("r", old_transport, hello("tab"))
    await registry.join_versioned("r", watcher, hello("watcher"))
    again = hello_with_token("tab", old.resume_token, version=0)
    new = await registry.join_versioned("r", FakeTransport(), again)
    await registry.settled()
    assert old.closed and not new.closed
    assert (4001, "replaced by a newer connection") == old_transport.closed
    assert [old.user_id] == [m["user_id"] for m in watcher.of_type("member_left")]
    assert new is registry.rooms["r"].clients[new.client_id]


async def test_a_wrong_resume_token_does_not_take_over() -> None:
    registry, _ = make_registry()
    await registry.join_versioned("r", FakeTransport(), hello("tab"))
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", "a-wrong-guess-of-16+"))


async def test_client_id_is_free_again_after_leaving_for_its_token() -> None:
    registry, _ = make_registry()
    first = await registry.join_versioned("r", FakeTransport(), hello("tab"))
    registry.leave(first)
    again = hello_with_token("tab", first.resume_token)
    assert not (await registry.join_versioned("r", FakeTransport(), again)).closed


async def test_full_text_prefix_is_reserved() -> None:
    registry, _ = make_registry()
    with pytest.raises(InvalidMessage):
        await registry.join_versioned("r", FakeTransport(), hello("seed-123"))


async def test_version_of_another_epoch_gets_a_snapshot() -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    registry.handle(writer, push(0, 1, [[0, "new text"]]))
    late = FakeTransport()
    await registry.join_versioned(
        "r", late, Hello(type="hello", client_id="old", username="o", version=1, epoch="gone-epoch")
    )
    await registry.join_versioned(
        "r",
        other := FakeTransport(),
        Hello(type="hello", client_id="cur", username="c", version=1, epoch=writer.room.document.epoch),
    )
    await registry.settled()
    assert ("new text", 1) == (late.sent[0]["doc"], late.sent[0]["version"])
    assert "doc" not in other.sent[0]
    assert writer.room.document.epoch == late.sent[0]["epoch"]


async def test_messages_of_the_other_protocol_are_refused() -> None:
    registry, _ = make_registry()
    versioned = await registry.join_versioned("r", FakeTransport(), hello("v"))
    seed = await registry.join_full_text("r", FakeTransport(), "sam")
    with pytest.raises(InvalidMessage, match="versioned protocol"):
        registry.handle(versioned, CodeChange(type="code_change", code="x", cursor_position=0))
    with pytest.raises(InvalidMessage, match="full-text protocol"):
        registry.handle(seed, push(0, 1, [[0, "x"]]))
    assert "" == versioned.room.document.text


async def test_malformed_frames_are_charged_to_the_rate_limit() -> None:
    registry, _ = make_registry(rate_limit_per_second=1, rate_limit_burst=3)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    for _ in range(10):
        registry.receive(session, "{not json")
    await registry.settled()
    assert ["invalid_json"] * 3 + ["rate_limited"] == [m["code"] for m in transport.of_type("error")]


async def test_a_stale_push_costs_tokens_in_proportion_to_its_rebase_work() -> None:
    registry, _ = make_registry(rate_limit_per_second=1, rate_limit_burst=4)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    type_chars(registry, writer, 10)
    stale = await registry.join_versioned("r", FakeTransport(), hello("stale"))
    many_parts = [[0, "x"]] * 1000
    with pytest.raises(RateLimited):
        # 10 versions behind, 1000 parts: 10 * 1000 + 18 steps, 1 + 20 tokens of 4.
        registry.handle(stale, push(0, 1, many_parts))
    assert 10 == stale.room.document.version


async def test_a_cursor_far_behind_is_dropped_silently() -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    type_chars(registry, writer, 150)
    watcher = FakeTransport()
    await registry.join_versioned("r", watcher, hello("watch"))
    registry.handle(writer, Cursor(type="cursor", version=10, anchor=1, head=1))
    await registry.settled()
    assert [] == watcher.of_type("cursor")


async def test_an_unexpected_failure_is_answered_and_the_room_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))

    def broken(*_: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(session.room, "_language", broken)
    registry.receive(session, '{"type": "language", "language": "go"}')
    registry.receive(session, '{"type": "push", "version": 0, "seq": 1, "changes": [[0, "ok"]]}')
    await registry.settled()
    assert ["internal_error"] == [m["code"] for m in transport.of_type("error")]
    assert "ok" == session.room.document.text


async def test_a_failed_welcome_leaves_no_half_joined_session(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = make_registry()

    def broken(*_: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(Room, "_welcome", broken)
    with pytest.raises(KeyError):
        await registry.join_versioned("r", FakeTransport(), hello("c1"))
    assert {} == registry.rooms["r"].sessions
    assert {} == registry.rooms["r"].clients


async def test_queue_over_its_character_budget_drops_the_client() -> None:
    registry, _ = make_registry(outbound_queue_chars=10_000)
    slow = await registry.join_full_text("r", FakeTransport(stuck=True), "slow")
    writer = await registry.join_full_text("r", FakeTransport(), "writer")
    await registry.settled()
    for index in range(5):
        registry.handle(writer, CodeChange(type="code_change", code=str(index) * 4000, cursor_position=0))
    await registry.settled()
    assert slow.closed
    assert not writer.closed


async def test_one_message_larger_than_the_budget_still_goes_to_an_idle_client() -> None:
    registry, _ = make_registry(outbound_queue_chars=100)
    reader = FakeTransport()
    await registry.join_full_text("r", reader, "reader")
    writer = await registry.join_full_text("r", FakeTransport(), "writer")
    await registry.settled()  # the reader has sent `user_joined`: its queue is empty
    registry.handle(writer, CodeChange(type="code_change", code="x" * 500, cursor_position=0))
    await registry.settled()
    assert ["x" * 500] == [m["code"] for m in reader.of_type("code_change")]


async def test_welcome_tells_a_known_client_its_last_applied_seq() -> None:
    registry, _ = make_registry()
    first = await registry.join_versioned("r", FakeTransport(), hello("tab"))
    registry.handle(first, push(0, 7, [[0, "a"]]))
    registry.leave(first)
    again, fresh = FakeTransport(), FakeTransport()
    await registry.join_versioned("r", again, hello_with_token("tab", first.resume_token))
    await registry.join_versioned("r", fresh, hello("new"))
    await registry.settled()
    assert 7 == again.sent[0]["last_seq"]
    assert "last_seq" not in fresh.sent[0]


async def test_the_clients_own_token_survives_a_lost_welcome() -> None:
    registry, _ = make_registry()
    token = "my-own-secret-token"
    await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", token))
    # The welcome of a second attempt is lost; the client tries again with the same secret.
    await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", token))
    third = await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", token))
    assert third is registry.rooms["r"].clients[third.client_id]
    assert 1 == len(registry.rooms["r"].sessions)


async def test_leave_ends_the_session_with_a_normal_close() -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_full_text("r", transport, "sam")
    registry.receive(session, '{"type": "pong"}')
    registry.receive(session, '{"type": "leave"}')
    await registry.settled()
    assert session.closed
    assert (1000, "left") == transport.closed
    assert [] == transport.of_type("error")


async def test_a_failing_periodic_step_is_logged_and_the_loop_goes_on() -> None:
    registry, _ = make_registry()
    calls: list[int] = []
    third = asyncio.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) == 3:
            third.set()
        raise KeyError("bug")

    task = asyncio.create_task(registry._every(0.001, step, "test"))
    with capture_logs() as logs:
        await asyncio.wait_for(third.wait(), 5)
    task.cancel()
    assert {"test_failed"} == {entry["event"] for entry in logs}


class GatedTransport(FakeTransport):
    """A connection whose buffer fills: `writer` answers None and `send` waits until it drains."""

    def __init__(self) -> None:
        super().__init__()
        self.drained = asyncio.Event()
        self.drained.set()
        self.sending = asyncio.Event()  # set once the sender awaits `send`
        self.paths: list[str] = []

    def writer(self) -> Callable[[str], None] | None:
        return self.direct if self.drained.is_set() else None

    def direct(self, message: str) -> None:
        self.paths.append("writer")
        self.receive(message)

    async def send(self, message: str) -> None:
        self.sending.set()
        await self.drained.wait()
        self.paths.append("send")
        self.receive(message)


async def test_a_full_connection_is_left_to_the_sender_and_order_is_kept() -> None:
    registry, _ = make_registry()
    transport = GatedTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    await registry.settled()
    registry.handle(session, push(0, 1, append(0, "a")))
    await registry.settled()
    transport.drained.clear()
    registry.handle(session, push(1, 2, append(1, "b")))
    await transport.sending.wait()  # the sender awaits `send`: the buffer is full
    registry.handle(session, push(2, 3, append(2, "c")))  # queued behind the waiting send
    await registry.settled()
    transport.drained.set()
    await transport.wait_until(lambda: len(transport.sent) == 4)
    registry.handle(session, push(3, 4, append(3, "d")))
    await transport.wait_until(lambda: len(transport.sent) == 5)
    await registry.settled()
    assert [0, 1, 2, 3, 4] == [m["version"] for m in transport.sent]
    # Every write goes through the writer while the connection takes frames (the welcome,
    # queued before the sender ran, included); while its buffer is full, the sender awaits
    # `send` for one entry, and writes the rest through the writer once the buffer drained.
    assert ["writer", "writer", "send", "writer", "writer"] == transport.paths


# The cost of one message is bounded by construction.


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (a method or a staticmethod), still calling it."""
    calls: list[int] = []
    original = owner.__dict__[name]
    function = original.__func__ if isinstance(original, staticmethod | classmethod) else original

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return function(*args, **kwargs)

    if isinstance(original, classmethod):
        monkeypatch.setattr(owner, name, classmethod(lambda cls, *a, **k: counted(cls, *a, **k)))
    else:
        monkeypatch.setattr(owner, name, staticmethod(counted) if isinstance(original, staticmethod) else counted)
    return calls


async def test_a_push_of_too_many_parts_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from rooms.changes import ChangeSet
    from rooms.document import Document

    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    parsed = count_calls(monkeypatch, ChangeSet, "from_json")
    rebased = count_calls(monkeypatch, Document, "rebase")
    attack = push(0, 1, [[0, "x"]] * 50_000)
    started = time.process_time()
    registry.receive(session, attack)
    spent = time.process_time() - started
    await registry.settled()
    assert ["too_complex"] == [m["code"] for m in transport.of_type("error")]
    assert ([], []) == (parsed, rebased)
    assert 0 == session.room.document.version
    assert spent < 0.05  # refused by counting the parts: far below the old 150 ms


async def test_a_push_at_the_parts_limit_is_applied() -> None:
    registry, _ = make_registry(max_change_parts=3)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    registry.handle(session, push(0, 1, [[0, "a"], [0, "b"], [0, "c"]]))
    assert "abc" == session.room.document.text


async def test_a_push_too_far_behind_gets_resync_and_lands_after_catching_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rooms.document import Document

    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    type_chars(registry, writer, 300)
    late = FakeTransport()
    session = await registry.join_versioned("r", late, hello("late"))
    rebased = count_calls(monkeypatch, Document, "rebase")
    registry.receive(session, push(0, 1, [[0, "mine"]]))  # 300 versions behind
    await registry.settled()
    assert ["resync"] == [m["code"] for m in late.of_type("error")]
    assert ([], 300) == (rebased, session.room.document.version)
    # The client catches up (here: from the current version) and pushes the same edit again.
    registry.handle(session, push(300, 1, [[0, "mine"], 300]))
    await registry.settled()
    assert session.room.document.text.startswith("mine")
    assert [1] == [m["seq"] for m in late.of_type("update") if m.get("client_id") == "late"]


async def test_a_push_whose_rebase_passes_the_step_bound_gets_resync() -> None:
    registry, _ = make_registry(max_rebase_steps=100)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    type_chars(registry, writer, 10)
    late = FakeTransport()
    session = await registry.join_versioned("r", late, hello("late"))
    registry.receive(session, push(0, 1, [[0, "y"]] * 20))  # 10 * 20 + 19 steps
    await registry.settled()
    assert ["resync"] == [m["code"] for m in late.of_type("error")]
    assert 10 == session.room.document.version


async def test_a_push_that_changes_nothing_is_acked_and_stores_nothing() -> None:
    registry, _ = make_registry()
    author, other = FakeTransport(), FakeTransport()
    session = await registry.join_versioned("r", author, hello("a"))
    await registry.join_versioned("r", other, hello("b"))
    registry.handle(session, push(0, 1, append(0, "x" * 100)))
    await registry.wait_committed()
    await registry.settled()
    room = session.room
    stored = room.changes_made
    registry.handle(session, push(1, 2, [1] * 100))  # 100 one-unit keeps
    await registry.wait_committed()
    await registry.settled()
    assert [{"type": "ack", "seq": 2, "version": 1}] == author.of_type("ack")
    assert [] == other.of_type("ack")
    assert [1] == [m["version"] for m in other.of_type("update")]
    assert (1, stored, []) == (room.document.version, room.changes_made, room.unsynced)
    assert 1 == len(room.document.updates_since(0))


async def test_a_push_whose_deletion_was_made_already_is_acked() -> None:
    registry, _ = make_registry()
    first, second = FakeTransport(), FakeTransport()
    a = await registry.join_versioned("r", first, hello("a"))
    b = await registry.join_versioned("r", second, hello("b"))
    registry.handle(a, push(0, 1, append(0, "abc")))
    registry.handle(a, push(1, 2, [1, [1], 1]))  # deletes "b"
    registry.handle(b, push(1, 1, [1, [1], 1]))  # the same deletion, made concurrently
    await registry.wait_committed()
    await registry.settled()
    assert ("ac", 2) == (a.room.document.text, a.room.document.version)
    assert [{"type": "ack", "seq": 1, "version": 2}] == second.of_type("ack")


async def test_a_resume_over_a_huge_history_takes_a_snapshot_without_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, _ = make_registry(outbound_queue_chars=60_000)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    writer.limit.own.burst = writer.limit.own.tokens = 10_000
    for seq in range(1, 201):
        registry.handle(writer, push(seq - 1, seq, append((seq - 1) * 100, "y" * 100)))
    encoded = count_calls(monkeypatch, room_messages, "encode_update_for")
    transport = FakeTransport()
    await registry.join_versioned("r", transport, hello("late", version=0))
    await registry.settled()
    welcome = transport.of_type("welcome")[0]
    assert (200, "y" * 20_000) == (welcome["version"], welcome["doc"])
    assert [] == encoded
    assert [] == transport.of_type("update")


async def test_a_small_resume_still_gets_updates() -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    type_chars(registry, writer, 3, "z")
    transport = FakeTransport()
    await registry.join_versioned("r", transport, hello("late", version=1))
    await registry.settled()
    welcome = transport.of_type("welcome")[0]
    assert (1, None, 1000) == (welcome["version"], welcome.get("doc"), welcome["max_change_parts"])
    assert [2, 3] == [m["version"] for m in transport.of_type("update")]


async def test_a_snapshot_is_taken_once_the_changes_since_the_last_pass_a_byte_budget() -> None:
    registry, _ = make_registry(max_document_chars=1_000, snapshot_every=500)
    session = await registry.join_versioned("r", FakeTransport(), hello("w"))
    session.limit.own.burst = session.limit.own.tokens = 10_000
    room = session.room
    # Replacing the whole text again and again: few versions, many bytes of changes.
    for seq in range(1, 11):
        length = room.document.length
        registry.handle(session, push(seq - 1, seq, [[length, "q" * 900]] if length else [[0, "q" * 900]]))
        await registry.wait_committed()
    assert 0 < room.snapshot_version <= 10
    stored = await registry.store.load("r", 10)
    assert stored is not None
    assert stored.snapshot_version == room.snapshot_version


async def test_a_safe_integer_bound_keeps_the_room_working() -> None:
    registry, _ = make_registry()
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c1"))
    registry.receive(session, json.dumps({"type": "push", "version": 0, "seq": 2**63, "changes": [[0, "x"]]}))
    registry.receive(session, json.dumps({"type": "push", "version": 0, "seq": 2**53, "changes": [[0, "x"]]}))
    registry.receive(session, json.dumps({"type": "push", "version": 0, "seq": 1, "changes": [[0, "ok"]]}))
    await registry.wait_committed()
    await registry.settled()
    assert ["invalid_message", "invalid_message"] == [m["code"] for m in transport.of_type("error")]
    assert ("ok", 1) == (session.room.document.text, session.room.document.version)


# Client ids bound to their tokens


async def test_a_remembered_client_id_is_refused_without_its_token() -> None:
    registry, _ = make_registry()
    token = "the-token-of-the-tab"
    registry.leave(await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", token)))
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello("tab"))
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", "another-token-of-16"))
    assert not (await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", token))).closed


async def test_a_client_id_is_bound_to_the_token_the_server_made_up_when_it_sent_none() -> None:
    registry, _ = make_registry()
    first = await registry.join_versioned("r", FakeTransport(), hello("tab"))
    registry.leave(first)
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello("tab"))
    assert token_hash(first.resume_token) == first.room.tokens["tab"]


async def test_the_room_keeps_a_hash_of_the_token_never_the_token() -> None:
    registry, _ = make_registry()
    session = await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", "the-token-of-the-tab"))
    registry.handle(session, push(0, 1, [[0, "x"]]))
    await registry.wait_committed()
    stored = await registry.store.load("r", 10)
    assert stored is not None
    expected = token_hash("the-token-of-the-tab")
    assert (expected, {"tab": expected}) == (session.room.tokens["tab"], stored.tokens)
    assert "the-token-of-the-tab" not in repr(stored)


async def test_a_stored_binding_is_restored_with_the_room() -> None:
    store = MemoryStore()
    registry = RoomRegistry(Settings(), clock=Clock(), store=store)
    session = await registry.join_versioned("r", FakeTransport(), hello_with_token("tab", "the-token-of-the-tab"))
    registry.handle(session, push(0, 1, [[0, "x"]]))
    await registry.stop()
    again = RoomRegistry(Settings(), clock=Clock(), store=store)
    with pytest.raises(ClientIdInUse):
        await again.join_versioned("r", FakeTransport(), hello("tab"))
    resumed = await again.join_versioned("r", FakeTransport(), hello_with_token("tab", "the-token-of-the-tab"))
    await again.stop()
    assert 1 == resumed.room.document.last_seq(resumed.client_id)


async def test_a_stored_client_without_a_token_binds_to_the_first_one_presented() -> None:
    store = MemoryStore()
    registry = RoomRegistry(Settings(), clock=Clock(), store=store)
    session = await registry.join_versioned("r", FakeTransport(), hello("tab"))
    registry.handle(session, push(0, 1, [[0, "x"]]))
    session.room.tokens.clear()  # as a database from before tokens would have it
    await registry.stop()
    again = RoomRegistry(Settings(), clock=Clock(), store=store)
    first = await again.join_versioned("r", FakeTransport(), hello_with_token("tab", "first-token-presented"))
    again.leave(first)
    with pytest.raises(ClientIdInUse):
        await again.join_versioned("r", FakeTransport(), hello_with_token("tab", "second-token-presented"))
    await again.stop()


async def test_the_token_table_forgets_the_least_recently_used_client_first() -> None:
    registry, _ = make_registry(history_limit=2, dedup_clients=2)
    # Up to twice DEDUP_CLIENTS bindings; past that, the least recently used go ("b", then "a")
    # until three quarters are left.
    for client in ("a", "b", "a", "c", "d", "e"):
        token = f"token-of-client-{client}"
        registry.leave(await registry.join_versioned("r", FakeTransport(), hello_with_token(client, token)))
    assert ["c", "d", "e"] == list(registry.rooms["r"].tokens)
    assert not (await registry.join_versioned("r", FakeTransport(), hello("b"))).closed


async def test_a_client_whose_seqs_are_remembered_keeps_its_binding_under_a_flood_of_hellos() -> None:
    registry, _ = make_registry(history_limit=2, dedup_clients=2)
    owner = await registry.join_versioned("r", FakeTransport(), hello_with_token("owner", "token-of-the-owner"))
    registry.handle(owner, push(0, 1, [[0, "mine"]]))
    registry.leave(owner)
    for index in range(10):  # fresh client ids, never pushing: the oldest binding is the owner's
        registry.leave(await registry.join_versioned("r", FakeTransport(), hello(f"flood-{index}")))
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello("owner"))
    assert "owner" in registry.rooms["r"].tokens


async def test_an_update_is_encoded_twice_per_broadcast_not_once_per_member() -> None:
    registry, _ = make_registry()
    transports = [FakeTransport() for _ in range(4)]
    sessions = [await registry.join_versioned("r", t, hello(f"c{i}")) for i, t in enumerate(transports)]
    registry.handle(sessions[0], push(0, 1, [[0, "a"]]))
    await registry.settled()
    sent = [t.of_type("update")[0] for t in transports]
    assert ["c0", None, None, None] == [u.get("client_id") for u in sent]
    assert 1 == len({json.dumps(u) for u in sent[1:]})


# Limits per client address


async def test_connections_of_one_address_share_its_bucket() -> None:
    registry, _ = make_registry(rate_limit_per_address_per_second=1, rate_limit_per_address_burst=5)
    transports = [FakeTransport() for _ in range(3)]
    sessions = [await registry.join_full_text("r", t, "ann", address="10.0.0.1") for t in transports]
    other = await registry.join_full_text("r", FakeTransport(), "bob", address="10.0.0.2")
    for session in (*sessions, *sessions[:2]):  # five pings from three connections
        registry.handle(session, Ping(type="ping"))
    with pytest.raises(RateLimited):
        registry.handle(sessions[0], Ping(type="ping"))
    registry.handle(other, Ping(type="ping"))  # another address has its own


async def test_a_refused_message_costs_the_connection_nothing() -> None:
    registry, _ = make_registry(rate_limit_per_address_per_second=1, rate_limit_per_address_burst=1)
    first = await registry.join_full_text("r", FakeTransport(), "ann", address="10.0.0.1")
    second = await registry.join_full_text("r", FakeTransport(), "ann", address="10.0.0.1")
    registry.handle(first, Ping(type="ping"))
    with pytest.raises(RateLimited):
        registry.handle(second, Ping(type="ping"))
    assert float(registry.settings.rate_limit_burst) == second.limit.own.tokens


async def test_reconnecting_does_not_refill_the_address_bucket() -> None:
    registry, clock = make_registry(rate_limit_per_address_per_second=1, rate_limit_per_address_burst=3)
    session = await registry.join_full_text("r", FakeTransport(), "ann", address="10.0.0.1")
    for _ in range(3):
        registry.handle(session, Ping(type="ping"))
    registry.leave(session)
    again = await registry.join_full_text("r", FakeTransport(), "ann", address="10.0.0.1")
    with pytest.raises(RateLimited):
        registry.handle(again, Ping(type="ping"))
    with pytest.raises(RateLimited):
        registry.charge_address("10.0.0.1")  # nor does a connection that has not joined
    clock.now += 1
    registry.handle(again, Ping(type="ping"))


async def test_the_address_table_forgets_idle_addresses_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rooms.addresses.ADDRESS_TABLE_LIMIT", 3)
    registry, clock = make_registry(rate_limit_per_address_per_second=0.5, rate_limit_per_address_burst=2)
    busy = await registry.join_full_text("r", FakeTransport(), "ann", address="busy")
    registry.charge_address("idle")
    clock.now += 2  # "idle" is full again
    registry.charge_address("spent")
    registry.charge_address("spent")
    registry.charge_address("new")
    assert ["busy", "spent", "new"] == list(registry._addresses)
    assert not busy.closed
    with pytest.raises(RateLimited):
        registry.charge_address("spent")


async def test_an_unknown_address_has_no_address_limits() -> None:
    registry, _ = make_registry(rate_limit_per_address_burst=1, rooms_per_address_per_minute=1)
    session = await registry.join_full_text("r", FakeTransport(), "ann")
    registry.handle(session, Ping(type="ping"))
    registry.handle(session, Ping(type="ping"))
    await registry.join_full_text("other", FakeTransport(), "ann")


async def test_an_address_may_make_so_many_rooms_a_minute() -> None:
    registry, clock = make_registry(rooms_per_address_per_minute=2)
    await registry.join_full_text("a", FakeTransport(), "ann", address="10.0.0.1")
    await registry.join_full_text("b", FakeTransport(), "ann", address="10.0.0.1")
    with pytest.raises(TooManyNewRooms) as refused:
        await registry.join_full_text("c", FakeTransport(), "ann", address="10.0.0.1")
    assert ("rate_limited", 60.0) == (refused.value.code, refused.value.retry_after)
    await registry.join_full_text("a", FakeTransport(), "ann", address="10.0.0.1")  # existing rooms open
    await registry.join_full_text("c", FakeTransport(), "bob", address="10.0.0.2")
    clock.now += 60
    await registry.join_full_text("d", FakeTransport(), "ann", address="10.0.0.1")


async def test_a_stored_room_is_not_a_new_room(loop_time: LoopTime) -> None:
    registry, _ = make_registry(rooms_per_address_per_minute=1, room_grace_seconds=0)
    session = await registry.join_full_text("a", FakeTransport(), "ann", address="10.0.0.1")
    await registry.wait_committed()
    registry.leave(session)
    await registry.settled()
    await loop_time.advance(0)  # a zero grace: the eviction is due now
    assert "a" not in registry.rooms
    await registry.join_full_text("a", FakeTransport(), "ann", address="10.0.0.1")


async def test_a_full_server_unloads_an_empty_committed_room_or_refuses() -> None:
    registry, _ = make_registry(max_loaded_rooms=2)
    first = await registry.join_full_text("a", FakeTransport(), "ann")
    await registry.join_full_text("b", FakeTransport(), "bob")
    with pytest.raises(ServerBusy) as refused:
        await registry.join_full_text("c", FakeTransport(), "cy")
    assert "server_busy" == refused.value.code
    await registry.wait_committed()
    registry.leave(first)
    await registry.join_full_text("c", FakeTransport(), "cy")
    assert ["b", "c"] == list(registry.rooms)


async def test_a_room_with_uncommitted_changes_is_not_unloaded_for_another() -> None:
    registry, _ = make_registry(max_loaded_rooms=1)
    first = await registry.join_full_text("a", FakeTransport(), "ann")
    registry.leave(first)  # its creation is not committed yet
    with pytest.raises(ServerBusy):
        await registry.join_full_text("b", FakeTransport(), "bob")


# Retention


class PurgingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.purges: list[tuple[float, set[str]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.purging = asyncio.Event()  # set when a purge begins
        self.calls: list[str] = []  # "purge", "purged" and "load", in the order they happened

    async def purge(self, before: float, keep: Any, limit: int | None = None) -> list[str]:
        self.purges.append((before, set(keep)))
        self.calls.append("purge")
        self.purging.set()
        await self.gate.wait()
        self.calls.append("purged")
        return ["old-1", "old-2"]

    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        self.calls.append("load")
        return await super().load(room_id, history)


class BatchedPurgingStore(MemoryStore):
    """Full batches while ``batches`` lasts, each held until its gate opens."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.gates = [asyncio.Event() for _ in range(batches)]
        self.calls = 0
        self.loads: list[int] = []  # how many purge calls had begun when each load began

    async def purge(self, before: float, keep: Any, limit: int | None = None) -> list[str]:
        self.calls += 1
        if self.calls > len(self.gates):
            return []
        await self.gates[self.calls - 1].wait()
        return [f"old-{self.calls}-{index}" for index in range(limit or 1)]

    async def load(self, room_id: str, history: int) -> StoredRoom | None:
        self.loads.append(self.calls)
        return await super().load(room_id, history)


async def test_retention_keeps_the_loaded_rooms_and_logs_the_count() -> None:
    store = PurgingStore()
    registry = RoomRegistry(Settings(room_retention_days=2), clock=Clock(), store=store)
    await registry.join_full_text("open", FakeTransport(), "ann")
    with capture_logs() as logs:
        assert 2 == await registry.purge()
    before, keep = store.purges[0]
    assert ({"open"}, True) == (keep, abs(time.time() - 2 * 86_400 - before) < 60)
    assert [{"event": "rooms_purged", "count": 2, "log_level": "info"}] == [
        entry for entry in logs if entry["event"] == "rooms_purged"
    ]


async def test_retention_zero_keeps_every_room() -> None:
    store = PurgingStore()
    registry = RoomRegistry(Settings(room_retention_days=0), clock=Clock(), store=store)
    assert 0 == await registry.purge()
    assert [] == store.purges


async def test_a_load_waits_for_the_purge_in_progress() -> None:
    store = PurgingStore()
    store.gate.clear()
    registry = RoomRegistry(Settings(), clock=Clock(), store=store)
    purge = await begun(registry.purge())
    join = await begun(registry.join_full_text("r", FakeTransport(), "ann"))
    assert "r" not in registry.rooms
    store.gate.set()
    await purge
    await join
    assert ("r" in registry.rooms, ["purge", "purged", "load"]) == (True, store.calls)


async def test_a_load_waits_for_one_purge_batch_not_the_whole_purge() -> None:
    store = BatchedPurgingStore(batches=2)
    registry = RoomRegistry(Settings(), clock=Clock(), store=store)
    purge = await begun(registry.purge())
    join = await begun(registry.join_full_text("r", FakeTransport(), "ann"))
    assert "r" not in registry.rooms
    store.gates[0].set()  # the first batch ends; the second is still running
    await join
    assert (True, False, 2, [2]) == ("r" in registry.rooms, purge.done(), store.calls, store.loads)
    store.gates[1].set()
    assert 2 * PURGE_BATCH == await purge


async def test_retention_runs_at_start() -> None:
    store = PurgingStore()
    registry = RoomRegistry(Settings(), clock=Clock(), store=store)
    await registry.start()
    await asyncio.wait_for(store.purging.wait(), 5)
    await registry.stop()
    assert 1 == len(store.purges)


async def test_opening_a_stored_room_writes_its_row_once(loop_time: LoopTime) -> None:
    store = MemoryStore()
    registry = RoomRegistry(Settings(room_grace_seconds=0), clock=Clock(), store=store)
    session = await registry.join_full_text("r", FakeTransport(), "ann")
    await registry.wait_committed()
    registry.leave(session)
    await registry.settled()
    await loop_time.advance(0)  # a zero grace: the eviction is due now
    assert "r" not in registry.rooms
    commits = store.commits
    await registry.join_full_text("r", FakeTransport(), "ann")
    await registry.join_full_text("r", FakeTransport(), "bob")
    await registry.wait_committed()
    assert commits + 1 == store.commits


async def test_a_push_is_charged_for_its_own_parts_which_every_later_rebase_pays_for() -> None:
    registry, _ = make_registry(rate_limit_per_second=1, rate_limit_burst=4)
    author = await registry.join_versioned("r", FakeTransport(), hello("a"))
    # At the current version, so no rebase: 1 token for the frame and 1000 // 500 for its parts.
    author.limit.own.tokens = 2.5
    with pytest.raises(RateLimited):
        registry.handle(author, push(0, 1, [[0, "x"]] * 1000))
    assert 0 == author.room.document.version


async def test_a_refused_hello_leaves_the_room_to_be_unloaded(loop_time: LoopTime) -> None:
    registry, _ = make_registry(room_grace_seconds=0)
    owner = await registry.join_versioned("r", FakeTransport(), hello_with_token("mine", "t" * 16))
    registry.handle(owner, push(0, 1, [[0, "x"]]))
    await registry.wait_committed()
    registry.leave(owner)
    with pytest.raises(ClientIdInUse):
        await registry.join_versioned("r", FakeTransport(), hello_with_token("mine", "u" * 16))
    await registry.settled()
    await loop_time.advance(0)  # a zero grace: the eviction is due now
    assert "r" not in registry.rooms


async def test_an_address_holds_at_most_its_connection_limit_in_sessions() -> None:
    registry, _ = make_registry(max_connections_per_address=2)
    for index in range(2):
        await registry.join_versioned("r", FakeTransport(), hello(f"c{index}"), address="10.0.0.1")
    with pytest.raises(ServerBusy):
        await registry.join_versioned("r", FakeTransport(), hello("c2"), address="10.0.0.1")
    # Another address, and an IPv6 client outside the first one's /64, are not affected.
    await registry.join_versioned("r", FakeTransport(), hello("c3"), address="10.0.0.2")
    await registry.join_full_text("r", FakeTransport(), "seed", address="2001:db8:0:1::1")


async def test_an_ipv6_network_shares_one_address_bucket() -> None:
    registry, _ = make_registry(rate_limit_per_address_per_second=1, rate_limit_per_address_burst=3)
    first = await registry.join_versioned("r", FakeTransport(), hello("c1"), address="2001:db8::1")
    second = await registry.join_versioned("r", FakeTransport(), hello("c2"), address="2001:db8::2")
    assert first.limit.shared is not None and first.limit.shared is second.limit.shared


async def test_retention_touches_loaded_rooms_so_an_idle_open_room_is_not_purged_once_unloaded() -> None:
    store = MemoryStore()
    registry = RoomRegistry(Settings(room_retention_days=30), clock=Clock(), store=store)
    await registry.join_versioned("open", FakeTransport(), hello("c"))
    await registry.wait_committed()
    commits = store.commits
    await registry.purge()
    await registry.wait_committed()
    assert store.commits > commits


async def test_a_resume_over_updates_of_many_parts_gets_a_snapshot_though_their_bytes_fit() -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    _fill_with_big_updates(registry, writer, 40)  # 40,000 parts, about 200 kB
    assert 40 == writer.room.document.version
    reader = FakeTransport()
    await registry.join_versioned("r", reader, hello("late", version=0))
    await registry.settled()
    welcome = reader.of_type("welcome")[0]
    assert (40, []) == (welcome["version"], reader.of_type("update"))
    assert "x" * 39_960 == welcome["doc"]


def _fill_with_big_updates(registry: RoomRegistry, writer: Session, count: int) -> None:
    writer.limit.own.burst = writer.limit.own.tokens = 100_000
    for seq in range(1, count + 1):
        length = writer.room.document.length
        registry.handle(writer, push(seq - 1, seq, [*([[0, "x"]] * 999), *([length] if length else [])]))


async def test_a_cursor_far_behind_big_updates_is_dropped_without_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    _fill_with_big_updates(registry, writer, 20)  # 20,000 parts behind version 0
    watcher = FakeTransport()
    mover = await registry.join_versioned("r", FakeTransport(), hello("m"))
    await registry.join_versioned("r", watcher, hello("watch"))
    mapped: list[int] = []
    original = Selection.mapped
    monkeypatch.setattr(Selection, "mapped", lambda self, changes: mapped.append(1) or original(self, changes))
    registry.handle(mover, Cursor(type="cursor", version=0, anchor=0, head=0))
    await registry.settled()
    assert ([], []) == (mapped, watcher.of_type("cursor"))


async def test_a_cursor_is_charged_for_the_parts_it_is_mapped_over() -> None:
    registry, _ = make_registry(rate_limit_per_second=1, rate_limit_burst=10)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    _fill_with_big_updates(registry, writer, 10)  # 10,000 parts: 20 tokens at 500 a token
    mover = await registry.join_versioned("r", FakeTransport(), hello("m"))
    with pytest.raises(RateLimited):
        registry.handle(mover, Cursor(type="cursor", version=0, anchor=0, head=0))


async def test_a_large_frame_costs_a_token_per_64_kib() -> None:
    registry, _ = make_registry(rate_limit_per_second=1, rate_limit_burst=10)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c"))
    session.limit.own.tokens = 3
    frame = json.dumps({"type": "push", "version": 0, "seq": 1, "changes": [[0, "x" * 200_000]]})
    registry.receive(session, frame)  # about 200 kB: 1 + 3 tokens of 3
    await registry.settled()
    assert ["rate_limited"] == [error["code"] for error in transport.of_type("error")]
    assert 0 == session.room.document.version


async def test_a_push_of_more_lines_than_a_document_may_hold_is_refused_before_they_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, _ = make_registry(max_document_chars=1_000)
    session = await registry.join_versioned("r", FakeTransport(), hello("c"))
    session.limit.own.tokens = session.limit.own.burst = 1_000
    built: list[int] = []
    original = ChangeSet.from_json
    monkeypatch.setattr(ChangeSet, "from_json", lambda *a, **k: built.append(1) or original(*a, **k))
    with pytest.raises(DocumentTooLarge):
        registry.handle(session, push(0, 1, [[0, *([""] * 5_000)]]))
    assert [] == built


async def test_a_resend_of_an_applied_push_that_grew_past_the_part_limit_is_ignored() -> None:
    registry, _ = make_registry(max_change_parts=3)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c"))
    registry.handle(session, push(0, 1, [[0, "ab"]]))
    registry.handle(session, push(0, 1, [[0, "a"], [0, "b"], [0, ""], [0, ""]]))  # same seq, 4 parts
    await registry.settled()
    assert ([], 1) == (transport.of_type("error"), session.room.document.version)


async def test_a_resume_pays_its_address_for_the_parts_of_its_catch_up() -> None:
    registry, _ = make_registry()
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    _fill_with_big_updates(registry, writer, 10)
    late = await registry.join_versioned("r", FakeTransport(), hello("late", version=0), address="10.1.1.1")
    shared = late.limit.shared
    assert shared is not None
    parts = late.room.document.rebase_steps(0, 0)  # every part of the catch-up
    assert 9_000 < parts and shared.tokens <= shared.burst - parts // 500


async def test_an_over_limit_push_under_a_spent_seq_is_refused_as_reused_not_ignored() -> None:
    registry, _ = make_registry(max_change_parts=3)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c"))
    registry.handle(session, push(0, 1, [[0, "a"]]))
    registry.handle(session, push(1, 2, [[0, "b"], 1]))
    with pytest.raises(SeqReused):
        registry.handle(session, push(0, 1, [[0, "x"], [0, "y"], [0, "z"], [0, "w"]]))


async def test_the_refusals_of_a_push_name_its_seq() -> None:
    registry, _ = make_registry(max_change_parts=3)
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, hello("c"))
    registry.receive(session, json.dumps({"type": "push", "version": 0, "seq": 7, "changes": [[0, "x"]] * 4}))
    await registry.settled()
    assert [("too_complex", 7)] == [(e["code"], e.get("seq")) for e in transport.of_type("error")]


async def test_a_cursor_older_than_the_kept_history_is_dropped_without_an_error() -> None:
    registry, _ = make_registry(history_limit_bytes=1, history_limit=2, dedup_clients=2)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    type_chars(registry, writer, 3)
    transport = FakeTransport()
    mover = await registry.join_versioned("r", transport, hello("m"))
    registry.receive(mover, json.dumps({"type": "cursor", "version": 0, "anchor": 0, "head": 0}))
    await registry.settled()
    assert [] == transport.of_type("error")


async def test_a_resume_its_address_cannot_pay_for_is_refused_before_anyone_hears_of_it() -> None:
    registry, _ = make_registry(rate_limit_per_address_burst=5, rate_limit_per_address_per_second=1)
    writer = await registry.join_versioned("r", FakeTransport(), hello("w"))
    _fill_with_big_updates(registry, writer, 10)  # a catch-up of 10,000 parts: 19 tokens
    watcher = FakeTransport()
    await registry.join_versioned("r", watcher, hello("watch"))
    await registry.settled()
    joined = len(watcher.of_type("member_joined"))
    with pytest.raises(RateLimited):
        await registry.join_versioned("r", FakeTransport(), hello("late", version=0), address="10.2.2.2")
    await registry.settled()
    assert joined == len(watcher.of_type("member_joined"))


async def test_a_reconnect_taking_its_own_connection_over_is_not_refused_at_the_address_limit() -> None:
    registry, _ = make_registry(max_connections_per_address=2)
    address = "10.0.0.9"
    first = await registry.join_versioned("r", FakeTransport(), hello_with_token("c1", "t" * 16), address=address)
    await registry.join_versioned("r", FakeTransport(), hello("c2"), address=address)
    # c1's socket died unnoticed; it comes back with its token while the old session still counts.
    again = await registry.join_versioned("r", FakeTransport(), hello_with_token("c1", "t" * 16), address=address)
    assert (True, CLOSE_REPLACED, False) == (first.closed, first.close_code, again.closed)
    with pytest.raises(TooManyConnections):  # a third client of the address is still refused
        await registry.join_versioned("r", FakeTransport(), hello("c3"), address=address)


async def test_a_hello_with_a_reserved_client_id_makes_no_room_and_spends_no_quota() -> None:
    registry, _ = make_registry(rooms_per_address_per_minute=1)
    with pytest.raises(InvalidMessage, match="must not start with"):
        await registry.join_versioned("first", FakeTransport(), hello("seed-x"), address="10.0.0.7")
    assert "first" not in registry.rooms
    await registry.join_versioned("second", FakeTransport(), hello("ok"), address="10.0.0.7")
    assert None is await registry.store.load("first", 10)


async def test_a_room_unloaded_early_and_loaded_again_gets_a_grace_period_of_its_own(loop_time: LoopTime) -> None:
    registry, _ = make_registry(room_grace_seconds=1.0, max_loaded_rooms=1)
    registry.leave(await registry.join_versioned("a", FakeTransport(), hello("c1")))  # a's grace ends at 1.0
    await registry.settled()
    await loop_time.advance(0.5)
    registry.leave(await registry.join_versioned("b", FakeTransport(), hello("c2")))  # unloads a to fit
    await registry.settled()
    assert ["b"] == list(registry.rooms)
    registry.leave(await registry.join_versioned("a", FakeTransport(), hello("c3")))  # a's grace ends at 1.5
    await registry.settled()
    await loop_time.advance(0.6)  # past where a's first grace would have ended
    assert ["a"] == list(registry.rooms)
    await loop_time.advance(0.5)
    assert [] == list(registry.rooms)
