"""Presence across processes against a real Redis (db 12, a key prefix of each test's own).

Two `SharedPresence` instances in one event loop play two processes."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from structlog.testing import capture_logs

from rooms.shared_presence import SharedPresence, events_channel, members_key, process_key
from tests.conftest import free_port
from tests.redis_admin import delete_keys, redis_admin

REDIS_URL = os.environ.get("TEST_PRESENCE_REDIS_URL", "redis://127.0.0.1:6379/12")
WAIT = 5.0  # seconds anything expected may take at most
# timeout_seconds where heartbeats matter (one every third of it) but expiry is not what is
# tested: long enough that a busy machine's stall does not expire a process's key.
HEARTBEATS = 2.0
# Where expiry is what is tested: short, so that the test is.
EXPIRES = 0.6
ROOM = "room-1"

Make = Callable[..., Awaitable[SharedPresence]]


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def member(user_id: str, username: str = "Ann") -> dict[str, Any]:
    return {"user_id": user_id, "username": username, "color": "#112233", "role": "candidate"}


class Seen:
    """What one `SharedPresence` handed to its process, with waits on it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.members: dict[str, dict[str, dict[str, Any]]] = {}
        self.lists = 0
        self._changed = asyncio.Event()

    def on_event(self, room_id: str, kind: str, payload: dict[str, Any]) -> None:
        self.events.append((room_id, kind, payload))
        self._changed.set()

    def on_members(self, room_id: str, members: dict[str, dict[str, Any]]) -> None:
        self.members[room_id] = members
        self.lists += 1
        self._changed.set()

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.events]

    def users(self, room_id: str = ROOM) -> set[str]:
        return set(self.members.get(room_id, {}))

    async def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Wait for a condition on Redis' own state (there is no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def admin() -> AsyncIterator[Redis]:
    client = await redis_admin(REDIS_URL, "TEST_PRESENCE_REDIS_URL")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(admin: Redis) -> AsyncIterator[str]:
    prefix = f"test-presence-{uuid.uuid4().hex}:"
    yield prefix
    await delete_keys(admin, prefix)


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Make]:
    made: list[SharedPresence] = []

    async def make(seen: Seen | None = None, *, start: bool = True, **options: Any) -> SharedPresence:
        seen = seen or Seen()
        options.setdefault("url", REDIS_URL)
        options.setdefault("process_id", uuid.uuid4().hex[:8])
        options.setdefault("timeout_seconds", 30.0)
        options.setdefault("client_name", f"test-{uuid.uuid4().hex[:12]}")
        presence = SharedPresence(
            options.pop("url"), prefix=prefix, on_event=seen.on_event, on_members=seen.on_members, **options
        )
        made.append(presence)
        if start:
            await presence.start()
        return presence

    yield make
    for presence in made:
        await presence.stop()


async def subscribed(admin: Redis, prefix: str, count: int, room_id: str = ROOM) -> None:
    channel = events_channel(prefix, room_id)

    async def enough() -> bool:
        return int(dict(await admin.pubsub_numsub(channel))[channel.encode()]) >= count

    await poll(enough)


async def crash(presence: SharedPresence) -> None:
    """The process stops heartbeating without leaving (its tasks end, nothing is cleaned up)."""
    tasks, presence._tasks = presence._tasks, []
    presence._closed = True  # its loops end (a cancellation alone may be swallowed by a read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def two_in_a_room(
    make: Make, admin: Redis, prefix: str, **options: Any
) -> tuple[Seen, SharedPresence, Seen, SharedPresence]:
    seen_a, seen_b = Seen(), Seen()
    a = await make(seen_a, process_id="a", **options)
    b = await make(seen_b, process_id="b", **options)
    a.follow(ROOM)
    b.follow(ROOM)
    await subscribed(admin, prefix, 2)
    return seen_a, a, seen_b, b


# Events and lists


async def test_a_join_reaches_the_other_process_as_an_event_and_in_its_list(
    make: Make, admin: Redis, prefix: str
) -> None:
    seen_a, _, seen_b, b = await two_in_a_room(make, admin, prefix, timeout_seconds=HEARTBEATS)
    await seen_a.wait_until(lambda: ROOM in seen_a.members)  # the first list comes at once
    assert {} == seen_a.members[ROOM]
    sent, received = (
        sample("collab_presence_events_total", {"direction": "out", "kind": "joined"}),
        sample("collab_presence_events_total", {"direction": "in", "kind": "joined"}),
    )
    b.tell(ROOM, "joined", member("u1"))
    await seen_a.wait_until(lambda: "joined" in seen_a.kinds())
    assert [(ROOM, "joined", member("u1"))] == seen_a.events
    await seen_a.wait_until(lambda: "u1" in seen_a.users())  # at a's next heartbeat
    assert {**member("u1"), "process": "b"} == seen_a.members[ROOM]["u1"]
    stored = await admin.hget(members_key(prefix, ROOM), "u1")
    assert stored is not None, "u1's field is gone from the hash (b's key expired?)"
    assert {**member("u1"), "process": "b"} == json.loads(stored)
    assert [] == seen_b.events  # its own events are not handed back
    assert sent + 1 == sample("collab_presence_events_total", {"direction": "out", "kind": "joined"})
    assert received + 1 == sample("collab_presence_events_total", {"direction": "in", "kind": "joined"})
    assert b.connected


async def test_cursor_language_and_leave_reach_the_other_in_order(make: Make, admin: Redis, prefix: str) -> None:
    seen_a, _, _, b = await two_in_a_room(make, admin, prefix, timeout_seconds=HEARTBEATS)
    b.tell(ROOM, "joined", member("u1"))
    b.tell(ROOM, "cursor", {"user_id": "u1", "anchor": 1, "head": 2, "version": 3})
    b.tell(ROOM, "language", {"language": "javascript", "user_id": "u1"})
    b.tell(ROOM, "left", {"user_id": "u1"})
    await seen_a.wait_until(lambda: len(seen_a.events) == 4)
    assert [
        (ROOM, "joined", member("u1")),
        (ROOM, "cursor", {"user_id": "u1", "anchor": 1, "head": 2, "version": 3}),
        (ROOM, "language", {"language": "javascript", "user_id": "u1"}),
        (ROOM, "left", {"user_id": "u1"}),
    ] == seen_a.events
    assert 0 == await admin.hexists(members_key(prefix, ROOM), "u1")
    lists = seen_a.lists
    await seen_a.wait_until(lambda: seen_a.lists > lists)
    assert set() == seen_a.users()
    b.tell(ROOM, "language", {"language": "python", "user_id": None})  # a change made by nobody in particular
    await seen_a.wait_until(lambda: len(seen_a.events) == 5)
    assert (ROOM, "language", {"language": "python", "user_id": None}) == seen_a.events[-1]


async def test_events_of_an_unfollowed_room_are_not_delivered(make: Make, admin: Redis, prefix: str) -> None:
    seen_a, a, _, b = await two_in_a_room(make, admin, prefix)
    a.follow("other")
    await subscribed(admin, prefix, 1, "other")
    a.unfollow(ROOM)
    await poll(
        lambda: _equal(admin.pubsub_numsub(events_channel(prefix, ROOM)), [(events_channel(prefix, ROOM).encode(), 1)])
    )
    b.tell(ROOM, "joined", member("u1"))
    b.tell("other", "joined", member("u2"))
    await seen_a.wait_until(lambda: bool(seen_a.events))
    assert [("other", "joined", member("u2"))] == seen_a.events


class Failing(Seen):
    """Its first event raises."""

    def on_event(self, room_id: str, kind: str, payload: dict[str, Any]) -> None:
        failed, self.failed = getattr(self, "failed", False), True
        if not failed:
            raise RuntimeError("a bug in the room")
        super().on_event(room_id, kind, payload)


async def test_a_callback_that_raises_does_not_stop_delivery(make: Make, admin: Redis, prefix: str) -> None:
    seen = Failing()
    a = await make(seen, process_id="a")
    b = await make(process_id="b")
    a.follow(ROOM)
    await subscribed(admin, prefix, 1)
    with capture_logs() as logs:
        b.tell(ROOM, "joined", member("u1"))
        b.tell(ROOM, "left", {"user_id": "u1"})
        await seen.wait_until(lambda: bool(seen.events))
    assert [(ROOM, "left", {"user_id": "u1"})] == seen.events
    assert ["presence_callback_failed"] == [entry["event"] for entry in logs if entry["log_level"] == "error"]


# Liveness


async def test_a_process_that_stops_heartbeating_leaves_the_lists_within_the_timeout(
    make: Make, admin: Redis, prefix: str
) -> None:
    seen_a, _, _, b = await two_in_a_room(make, admin, prefix, timeout_seconds=EXPIRES)
    b.tell(ROOM, "joined", member("u1"))
    await seen_a.wait_until(lambda: "u1" in seen_a.users())
    await crash(b)
    crashed = time.monotonic()
    await seen_a.wait_until(lambda: "u1" not in seen_a.users())
    elapsed = time.monotonic() - crashed
    # The key expires, then a's next heartbeat (a third of the timeout) sees it; 5 × the timeout
    # leaves room for a busy machine, and is still well under the default timeout (30 s) and WAIT.
    assert elapsed < 5 * EXPIRES
    await poll(lambda: _not(admin.hexists(members_key(prefix, ROOM), "u1")))  # and deletes the field


async def _not(value: Awaitable[Any]) -> bool:
    return not await value


async def test_a_clean_stop_leaves_at_once(make: Make, admin: Redis, prefix: str) -> None:
    seen_a, _, _, b = await two_in_a_room(make, admin, prefix)  # a timeout of 30 s: only leaving explains it
    b.tell(ROOM, "joined", member("u1"))
    await seen_a.wait_until(lambda: "joined" in seen_a.kinds())
    await poll(lambda: admin.hexists(members_key(prefix, ROOM), "u1"))
    await b.stop()
    assert 0 == await admin.hexists(members_key(prefix, ROOM), "u1")
    assert 0 == await admin.exists(process_key(prefix, "b"))
    await seen_a.wait_until(lambda: "left" in seen_a.kinds())
    assert (ROOM, "left", {"user_id": "u1"}) == seen_a.events[-1]
    assert not b.connected


async def test_a_flushed_redis_gets_the_members_back_at_the_next_heartbeat(
    make: Make, admin: Redis, prefix: str
) -> None:
    seen_a, _, _, b = await two_in_a_room(make, admin, prefix, timeout_seconds=HEARTBEATS)
    b.tell(ROOM, "joined", member("u1"))
    await seen_a.wait_until(lambda: "u1" in seen_a.users())
    await delete_keys(admin, prefix)
    await poll(lambda: admin.hexists(members_key(prefix, ROOM), "u1"))
    await poll(lambda: admin.exists(process_key(prefix, "b")))
    lists = seen_a.lists
    await seen_a.wait_until(lambda: seen_a.lists > lists + 1 and "u1" in seen_a.users())


async def test_a_field_of_this_process_for_a_member_it_does_not_have_is_deleted(
    make: Make, admin: Redis, prefix: str
) -> None:
    await admin.hset(members_key(prefix, ROOM), "ghost", json.dumps({**member("ghost"), "process": "a"}))
    seen = Seen()
    a = await make(seen, process_id="a", timeout_seconds=HEARTBEATS)
    a.follow(ROOM)
    await poll(lambda: _not(admin.hexists(members_key(prefix, ROOM), "ghost")))  # its leave was lost
    assert set() == seen.users()


# What does not parse


async def test_bad_entries_in_the_hash_are_skipped_and_deleted(make: Make, admin: Redis, prefix: str) -> None:
    key = members_key(prefix, ROOM)
    await admin.set(process_key(prefix, "b"), "1")
    await admin.hset(
        key,
        mapping={
            "good": json.dumps({**member("good"), "process": "b"}),
            "not-json": "{",
            "not-an-object": "[1]",
            "other-user": json.dumps({**member("someone"), "process": "b"}),
            "no-process": json.dumps(member("no-process")),
            b"\xff": json.dumps({**member("x"), "process": "b"}),
        },
    )
    errors = sample("collab_presence_errors_total")
    seen = Seen()
    a = await make(seen, process_id="a")
    with capture_logs() as logs:
        a.follow(ROOM)
        await seen.wait_until(lambda: ROOM in seen.members)
    assert {"good"} == seen.users()
    assert errors + 5 <= sample("collab_presence_errors_total")
    assert 5 == sum(entry["event"] == "presence_member_skipped" for entry in logs)
    await poll(lambda: _equal(admin.hkeys(key), [b"good"]))


async def _equal(value: Awaitable[Any], expected: object) -> bool:
    return expected == await value


async def test_bad_events_on_the_channel_are_skipped(make: Make, admin: Redis, prefix: str) -> None:
    seen_a, _, _, b = await two_in_a_room(make, admin, prefix)
    channel = events_channel(prefix, ROOM)
    with capture_logs() as logs:
        for junk in ("{", "[1]", '{"kind": "dance", "process": "x", "payload": {}}', '{"kind": "left"}', b"\xff"):
            await admin.publish(channel, junk)
        b.tell(ROOM, "joined", member("u1"))
        await seen_a.wait_until(lambda: bool(seen_a.events))
        # By a and by b: b reads the channel on its own schedule, nothing waits for it above.
        await poll(lambda: _true(2 * 5 <= sum(entry["event"] == "presence_event_skipped" for entry in logs)))
    assert [(ROOM, "joined", member("u1"))] == seen_a.events
    assert 2 * 5 == sum(entry["event"] == "presence_event_skipped" for entry in logs)


async def test_a_tell_that_cannot_be_sent_is_refused_without_raising(make: Make) -> None:
    presence = await make(start=False)
    presence.tell(ROOM, "dance", {"user_id": "u1"})
    presence.tell(ROOM, "joined", {"username": "no id"})
    presence.tell(ROOM, "cursor", {"user_id": "u1", "anchor": object()})
    assert 0 == len(presence._queue)


# The send queue


async def test_cursors_waiting_to_be_sent_are_coalesced_per_user(make: Make, admin: Redis, prefix: str) -> None:
    seen = Seen()
    a = await make(seen, process_id="a")
    a.follow(ROOM)
    b = await make(process_id="b", start=False)  # its queue fills until it starts
    await subscribed(admin, prefix, 1)
    for position in range(5):
        b.tell(ROOM, "cursor", {"user_id": "u1", "anchor": position, "head": position, "version": 1})
    b.tell(ROOM, "cursor", {"user_id": "u2", "anchor": 9, "head": 9, "version": 1})
    b.tell(ROOM, "language", {"language": "python", "user_id": "u2"})
    await b.start()
    await seen.wait_until(lambda: "language" in seen.kinds())
    assert [
        (ROOM, "cursor", {"user_id": "u1", "anchor": 4, "head": 4, "version": 1}),  # the newest, in the first's place
        (ROOM, "cursor", {"user_id": "u2", "anchor": 9, "head": 9, "version": 1}),
        (ROOM, "language", {"language": "python", "user_id": "u2"}),
    ] == seen.events


async def test_a_full_queue_gives_up_the_oldest_cursor_first(make: Make, admin: Redis, prefix: str) -> None:
    seen = Seen()
    a = await make(seen, process_id="a")
    a.follow(ROOM)
    b = await make(process_id="b", start=False, max_queued=3)
    await subscribed(admin, prefix, 1)
    errors = sample("collab_presence_errors_total")
    b.tell(ROOM, "joined", member("u1"))
    b.tell(ROOM, "cursor", {"user_id": "u1", "anchor": 0, "head": 0, "version": 1})
    b.tell(ROOM, "cursor", {"user_id": "u2", "anchor": 0, "head": 0, "version": 1})
    b.tell(ROOM, "joined", member("u3"))  # full: u1's cursor goes
    b.tell(ROOM, "joined", member("u4"))  # full: u2's cursor goes
    b.tell(ROOM, "joined", member("u5"))  # full, no cursor: the oldest event goes
    assert errors + 3 == sample("collab_presence_errors_total")
    await b.start()
    await seen.wait_until(lambda: seen.kinds().count("joined") == 3)
    assert ["u3", "u4", "u5"] == [payload["user_id"] for _, _, payload in seen.events]
    # The lost join is repaired by the state: every member is in the hash.
    await poll(lambda: _equal(admin.hlen(members_key(prefix, ROOM)), 4))


# Connections


async def test_lost_connections_are_retried_and_the_lists_and_events_resume(
    make: Make, admin: Redis, prefix: str
) -> None:
    name = f"test-{uuid.uuid4().hex[:12]}"
    seen = Seen()
    a = await make(seen, process_id="a", client_name=name, timeout_seconds=HEARTBEATS)
    b = await make(process_id="b", timeout_seconds=HEARTBEATS)
    a.follow(ROOM)
    await subscribed(admin, prefix, 1)
    b.tell(ROOM, "joined", member("u1"))
    await seen.wait_until(lambda: "u1" in seen.users())
    killed = 0
    with capture_logs() as logs:
        for client in await admin.client_list():
            if client.get("name") in (f"{name}:presence", f"{name}:presence-events"):
                killed += await admin.client_kill_filter(_id=str(client["id"]))
        assert 2 == killed
        # Its next read fails: it subscribes again.
        await poll(lambda: _true(any(entry["event"] == "presence_events_reconnected" for entry in logs)))
        await subscribed(admin, prefix, 1)
        seen.events.clear()
        b.tell(ROOM, "left", {"user_id": "u1"})
        await seen.wait_until(lambda: (ROOM, "left", {"user_id": "u1"}) in seen.events)
        lists = seen.lists
        await seen.wait_until(lambda: seen.lists > lists + 1)  # heartbeats go on (a pooled connection is checked)
    events = [entry["event"] for entry in logs]
    assert ["presence_events_connection_lost", "presence_events_reconnected"] == [
        e for e in events if e.startswith("presence_events")
    ]
    await poll(lambda: _true(a.connected))


async def _true(value: bool) -> bool:
    return value


async def test_an_unreachable_redis_is_retried_and_never_logs_the_password(make: Make) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/12"
    with capture_logs() as logs:
        presence = await make(url=url, backoff_min=0.01, backoff_max=0.02, timeout=0.5)
        presence.follow(ROOM)
        presence.tell(ROOM, "joined", member("u1"))
        assert not presence.connected
        await poll(lambda: _true(any(entry["event"] == "presence_events_connection_lost" for entry in logs)))
        async with asyncio.timeout(WAIT):
            await presence.stop()
    assert logs
    assert all("s3cret" not in str(entry) for entry in logs)
    assert any(entry.get("redis") == "127.0.0.1:" + url.split(":")[3].split("/")[0] for entry in logs)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="process_id"):
        SharedPresence(
            REDIS_URL, process_id="", timeout_seconds=1, on_event=Seen().on_event, on_members=Seen().on_members
        )
    with pytest.raises(ValueError, match="timeouts"):
        SharedPresence(
            REDIS_URL, process_id="p", timeout_seconds=0, on_event=Seen().on_event, on_members=Seen().on_members
        )
    with pytest.raises(ValueError, match="max_queued"):
        SharedPresence(
            REDIS_URL,
            process_id="p",
            timeout_seconds=1,
            max_queued=0,
            on_event=Seen().on_event,
            on_members=Seen().on_members,
        )
