"""Redis update streams against a real Redis (db 15, a key prefix of each test's own)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from structlog.testing import capture_logs

from rooms.store import Record
from rooms.streams import UpdateStreams, decode_record, encode_record, secrets_of, stream_key
from tests.conftest import free_port
from tests.redis_admin import delete_keys, redis_admin

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
WAIT = 5.0  # seconds any expected delivery may take at most


def record(version: int, *, client_id: str = "c1", stamp: float | None = None) -> Record:
    return Record(
        version=version,
        client_id=client_id,
        seq=version,
        changes=json.dumps([version - 1, [0, "é😀"]]),
        user_id="u1",
        author="Ann 李",
        color="#112233",
        time=time.time() if stamp is None else stamp,
    )


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class Received:
    """What one `UpdateStreams` delivered, with waits on it."""

    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = defaultdict(list)
        self.calls: list[tuple[str, list[int]]] = []
        self.reconnects = 0
        self.fail_next = False  # the next on_records raises
        self._changed = asyncio.Event()

    def on_records(self, room_id: str, records: list[Record]) -> None:
        self.calls.append((room_id, [r.version for r in records]))
        self._changed.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug in the room")
        self.records[room_id].extend(records)

    def on_reconnect(self) -> None:
        self.reconnects += 1
        self._changed.set()

    def versions(self, room_id: str) -> list[int]:
        return [r.version for r in self.records[room_id]]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_versions(self, room_id: str, expected: list[int]) -> None:
        try:
            await self.wait_until(lambda: len(self.versions(room_id)) >= len(expected))
        finally:
            assert expected == self.versions(room_id)


@pytest.fixture
async def admin() -> AsyncIterator[Redis]:
    client = await redis_admin(REDIS_URL, "TEST_REDIS_URL")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(admin: Redis) -> AsyncIterator[str]:
    prefix = f"test-streams-{uuid.uuid4().hex}:"
    yield prefix
    await delete_keys(admin, prefix)


@pytest.fixture
async def make_streams(prefix: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[UpdateStreams] = []

    async def make(
        received: Received | None = None, *, url: str = REDIS_URL, start: bool = True, **options: Any
    ) -> UpdateStreams:
        received = received or Received()
        options.setdefault("block_ms", 200)
        options.setdefault("client_name", f"test-{uuid.uuid4().hex[:12]}")
        streams = UpdateStreams(
            url, prefix=prefix, on_records=received.on_records, on_reconnect=received.on_reconnect, **options
        )
        made.append(streams)
        if start:
            await streams.start()
        return streams

    yield make
    for streams in made:
        await streams.stop()


async def poll(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for a state that no event announces (a connection's, Redis' own)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (a connection's state: no event announces it)
            await asyncio.sleep(0.01)


async def follower_connection(admin: Redis, client_name: str, command: str = "", timeout: float = WAIT) -> int:
    """The ID of the follower's connection in Redis, once it exists (and runs ``command``)."""
    found: list[int] = []

    async def check() -> bool:
        for client in await admin.client_list():
            if client.get("name") == f"{client_name}:streams-follower" and command in ("", client.get("cmd")):
                found.append(int(client["id"]))
        return bool(found)

    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (Redis' own state: no event announces it)
            await asyncio.sleep(0.01)
    return found[0]


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


# Encoding


def test_a_record_survives_encoding_with_every_field() -> None:
    original = record(7, stamp=1_700_000_000.25)
    assert original == decode_record(encode_record(original).encode())


def test_a_record_from_an_older_writer_takes_the_defaults() -> None:
    data = json.dumps({"version": 3, "client_id": "c", "seq": 1, "changes": "[]", "newer": 1}).encode()
    assert Record(version=3, client_id="c", seq=1, changes="[]") == decode_record(data)


@pytest.mark.parametrize(
    "data",
    [
        b"[1]",
        b'{"version": 1}',
        b'{"version": true, "client_id": "c", "seq": 1, "changes": "[]"}',
        b'{"version": 1, "client_id": 5, "seq": 1, "changes": "[]"}',
        b'{"version": 1, "client_id": "c", "seq": 1, "changes": "[]", "time": NaN}',
        b'{"version": 1, "client_id": "c", "seq": 1, "changes": "[]", "time": "now"}',
        b"\xff",
        b"{",
    ],
)
def test_an_entry_that_is_not_a_record_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(data)


def test_the_password_of_a_url_is_found_in_every_spelling() -> None:
    assert ["p%40ss", "p@ss"] == secrets_of("redis://user:p%40ss@host:6379/0")
    assert ["pw"] == secrets_of("unix:///run/redis.sock?db=0&password=pw")
    assert [] == secrets_of("redis://127.0.0.1:6379/15")


# Publishing and following


async def test_published_records_reach_a_follower_in_order(make_streams: Callable[..., Any], room: str) -> None:
    received = Received()
    follower = await make_streams(received)
    publisher = await make_streams()
    follower.follow(room, 0)
    sent = [record(v) for v in range(1, 6)]
    assert await publisher.publish(room, sent[:3])
    assert await publisher.publish(room, sent[3:])
    await received.wait_versions(room, [1, 2, 3, 4, 5])
    assert sent == received.records[room]
    assert follower.connected


async def test_a_stream_nothing_is_appended_to_expires(
    make_streams: Callable[..., Any], admin: Redis, room: str
) -> None:
    """Redis keeps no key per room forever: the database has every update."""
    publisher = await make_streams(key_ttl_seconds=600)
    assert await publisher.publish(room, [record(1)])
    assert 0 < await admin.ttl(publisher.key(room)) <= 600


async def test_an_appended_version_appended_again_is_a_duplicate(
    make_streams: Callable[..., Any], admin: Redis, prefix: str, room: str
) -> None:
    streams = await make_streams()
    ok, duplicate = (
        sample("collab_stream_appends_total", {"result": "ok"}),
        sample("collab_stream_appends_total", {"result": "duplicate"}),
    )
    assert await streams.publish(room, [record(1), record(2)])
    assert await streams.publish(room, [record(2), record(3)])  # another process appended 2 first
    assert 3 == await admin.xlen(stream_key(prefix, room))
    assert ok + 3 == sample("collab_stream_appends_total", {"result": "ok"})
    assert duplicate + 1 == sample("collab_stream_appends_total", {"result": "duplicate"})


async def test_every_follower_of_a_room_receives_its_records(make_streams: Callable[..., Any], room: str) -> None:
    first, second = Received(), Received()
    (await make_streams(first)).follow(room, 0)
    (await make_streams(second)).follow(room, 0)
    publisher = await make_streams()
    assert await publisher.publish(room, [record(1), record(2)])
    await first.wait_versions(room, [1, 2])
    await second.wait_versions(room, [1, 2])


async def test_one_follower_reads_many_rooms(make_streams: Callable[..., Any]) -> None:
    received = Received()
    follower = await make_streams(received)
    publisher = await make_streams()
    rooms = [f"room-{n}" for n in range(5)]
    for room_id in rooms:
        follower.follow(room_id, 0)
    for room_id in rooms:
        assert await publisher.publish(room_id, [record(1), record(2)])
    for room_id in rooms:
        await received.wait_versions(room_id, [1, 2])


async def test_following_from_a_version_delivers_only_later_ones(make_streams: Callable[..., Any], room: str) -> None:
    received = Received()
    streams = await make_streams(received)
    assert await streams.publish(room, [record(v) for v in range(1, 11)])
    streams.follow(room, 6)
    await received.wait_versions(room, [7, 8, 9, 10])


async def test_advancing_a_room_skips_what_it_has(make_streams: Callable[..., Any], room: str) -> None:
    received = Received()
    streams = await make_streams(received)
    streams.follow(room, 0)
    streams.advance(room, 3)  # the room loaded versions up to 3 from the database
    streams.advance(room, 2)  # never backwards
    assert await streams.publish(room, [record(v) for v in range(1, 6)])
    await received.wait_versions(room, [4, 5])


async def test_a_trimmed_stream_keeps_about_max_length_and_delivers_its_tail(
    make_streams: Callable[..., Any], admin: Redis, prefix: str, room: str
) -> None:
    received = Received()
    streams = await make_streams(received, max_length=10)
    for first in range(1, 501, 50):
        assert await streams.publish(room, [record(v) for v in range(first, first + 50)])
    # An approximate trim drops whole nodes of the stream (100 entries each by default).
    length = await admin.xlen(stream_key(prefix, room))
    assert 10 <= length <= 200
    streams.follow(room, 0)
    await received.wait_versions(room, list(range(501 - length, 501)))


async def test_a_deleted_stream_recreated_is_still_followed_from_the_room_position(
    make_streams: Callable[..., Any], admin: Redis, prefix: str, room: str
) -> None:
    received = Received()
    follower = await make_streams(received)
    publisher = await make_streams()
    follower.follow(room, 0)
    assert await publisher.publish(room, [record(1), record(2), record(3)])
    await received.wait_versions(room, [1, 2, 3])
    await delete_keys(admin, prefix)  # what FLUSHDB does to this test's streams, without touching others' keys
    assert 0 == await admin.exists(stream_key(prefix, room))
    assert await publisher.publish(room, [record(2)])  # a late process appends an old version again
    assert await publisher.publish(room, [record(4), record(5)])
    await received.wait_versions(room, [1, 2, 3, 4, 5])


async def test_unfollowing_a_room_stops_its_delivery(make_streams: Callable[..., Any]) -> None:
    received = Received()
    follower = await make_streams(received)
    publisher = await make_streams()
    follower.follow("gone", 0)
    follower.follow("kept", 0)
    follower.unfollow("gone")
    assert await publisher.publish("gone", [record(1)])
    assert await publisher.publish("kept", [record(1)])
    # Both come in one read or "gone" first: it would have been delivered by now.
    await received.wait_versions("kept", [1])
    assert [] == received.versions("gone")


async def test_following_a_room_interrupts_a_blocking_read_and_the_connection_is_still_usable(
    make_streams: Callable[..., Any], admin: Redis
) -> None:
    received = Received()
    name = f"test-{uuid.uuid4().hex[:12]}"
    follower = await make_streams(received, block_ms=60_000, client_name=name)
    publisher = await make_streams()
    follower.follow("first", 0)
    await follower_connection(admin, name, command="xread")  # blocked in its read
    follower.follow("second", 0)
    assert await publisher.publish("second", [record(1)])
    await received.wait_versions("second", [1])  # long before the 60 s block ends
    assert await publisher.publish("first", [record(1)])
    await received.wait_versions("first", [1])
    assert 0 == received.reconnects  # an interrupted read is not a lost connection
    async with asyncio.timeout(WAIT):
        await follower.stop()  # a blocking read does not hold up stopping


async def test_a_callback_that_raises_does_not_stop_the_follower(make_streams: Callable[..., Any], room: str) -> None:
    received = Received()
    received.fail_next = True
    follower = await make_streams(received)
    follower.follow(room, 0)
    with capture_logs() as logs:
        assert await follower.publish(room, [record(1)])
        await received.wait_until(lambda: bool(received.calls))
        assert await follower.publish(room, [record(2)])
        await received.wait_versions(room, [2])
    assert ["stream_callback_failed"] == [log["event"] for log in logs if log["log_level"] == "error"]


# Bad data and lost connections


async def test_entries_that_do_not_parse_are_logged_and_skipped(
    make_streams: Callable[..., Any], admin: Redis, prefix: str, room: str
) -> None:
    received = Received()
    follower = await make_streams(received)
    follower.follow(room, 0)
    key = stream_key(prefix, room)
    errors = sample("collab_stream_errors_total")
    with capture_logs() as logs:
        assert await follower.publish(room, [record(1)])
        await admin.xadd(key, {"r": "not json"}, id="2-0")
        await admin.xadd(key, {"x": encode_record(record(3))}, id="3-0")
        await admin.xadd(key, {"r": encode_record(record(9))}, id="4-0")  # not the entry's version
        await admin.xadd(key, {"r": b"\xff\xfe"}, id="5-0")
        await admin.xadd(key, {"r": encode_record(record(5))}, id="5-1")  # not a version's ID
        assert await follower.publish(room, [record(6)])
        await received.wait_versions(room, [1, 6])
        assert await follower.publish(room, [record(7)])
        await received.wait_versions(room, [1, 6, 7])
    skipped = [log["entry"] for log in logs if log["event"] == "stream_entry_skipped"]
    assert ["2-0", "3-0", "4-0", "5-0", "5-1"] == skipped
    assert errors + 5 == sample("collab_stream_errors_total")


async def test_a_key_that_is_not_a_stream_does_not_stop_the_other_rooms(
    make_streams: Callable[..., Any], admin: Redis, prefix: str
) -> None:
    received = Received()
    follower = await make_streams(received)
    await admin.set(stream_key(prefix, "broken"), "a string")
    with capture_logs() as logs:
        follower.follow("broken", 0)
        follower.follow("fine", 0)
        assert await follower.publish("fine", [record(1)])
        await received.wait_versions("fine", [1])
    assert any(log["event"] == "stream_key_not_a_stream" and log["room_id"] == "broken" for log in logs)
    assert not await follower.publish("broken", [record(1)])


async def test_a_killed_connection_is_reconnected_and_reported(
    make_streams: Callable[..., Any], admin: Redis, room: str
) -> None:
    received = Received()
    name = f"test-{uuid.uuid4().hex[:12]}"
    follower = await make_streams(received, client_name=name, backoff_min=0.01)
    publisher = await make_streams()
    follower.follow(room, 0)
    assert await publisher.publish(room, [record(1)])
    await received.wait_versions(room, [1])
    errors = sample("collab_stream_errors_total")
    with capture_logs() as logs:
        assert 1 == await admin.client_kill_filter(_id=str(await follower_connection(admin, name)))
        assert await publisher.publish(room, [record(2)])  # while the follower is away, or not yet
        await received.wait_until(lambda: received.reconnects == 1)
        await received.wait_versions(room, [1, 2])
    assert follower.connected
    assert 1.0 == sample("collab_stream_connected")
    assert errors < sample("collab_stream_errors_total")
    events = [log["event"] for log in logs]
    assert events.index("stream_connection_lost") < events.index("stream_reconnected")


class Proxy:
    """A TCP relay to Redis on a loopback port, that can be down, or up but silent."""

    def __init__(self, target: str = REDIS_URL) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.db = parts.path
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.db}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            await self.server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(*self.target)
        self.writers += [client_writer, redis_writer]
        await asyncio.gather(
            self._pump(client_reader, redis_writer), self._pump(redis_reader, client_writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    relay = Proxy()
    yield relay
    relay.flowing.set()
    await relay.stop()


async def test_a_follower_started_while_redis_is_down_connects_later_and_reports_it(
    make_streams: Callable[..., Any], proxy: Proxy, room: str
) -> None:
    received = Received()
    follower = await make_streams(received, url=proxy.url, backoff_max=0.05)
    assert not follower.connected
    follower.follow(room, 0)
    publisher = await make_streams()
    assert await publisher.publish(room, [record(1)])
    await proxy.start()
    await received.wait_versions(room, [1])
    assert 1 == received.reconnects
    assert follower.connected


async def test_a_silent_connection_is_given_up_and_everything_is_bounded(
    make_streams: Callable[..., Any], proxy: Proxy, room: str
) -> None:
    await proxy.start()
    received = Received()
    # A read unanswered for block_ms + timeout is a lost connection: a whole second, so that a
    # busy machine does not lose (and count) one before the test stops the traffic.
    follower = await make_streams(received, url=proxy.url, block_ms=100, timeout=1.0, backoff_max=0.05)
    through_proxy = await make_streams(url=proxy.url, timeout=0.2)
    publisher = await make_streams()
    follower.follow(room, 0)
    assert await publisher.publish(room, [record(1)])
    await received.wait_versions(room, [1])
    before = received.reconnects
    with capture_logs() as logs:
        proxy.flowing.clear()  # connections stay open, nothing gets through
        async with asyncio.timeout(WAIT):
            assert not await through_proxy.publish(room, [record(2)])
        await poll(lambda: not follower.connected)  # its read got no answer in time
        assert await publisher.publish(room, [record(2)])
        proxy.flowing.set()
        await received.wait_versions(room, [1, 2])
    assert 1 == received.reconnects - before
    assert "stream_connection_lost" in [log["event"] for log in logs]


async def test_unreachable_redis_fails_publishes_without_raising_or_logging_the_password(
    make_streams: Callable[..., Any], room: str
) -> None:
    received = Received()
    url = f"redis://:sekret-pw@127.0.0.1:{free_port()}/15"
    errors = sample("collab_stream_appends_total", {"result": "error"})
    with capture_logs() as logs:
        streams = await make_streams(received, url=url, timeout=0.5)
        assert not streams.connected
        streams.follow(room, 0)
        assert not await streams.publish(room, [record(1), record(2)])
        assert not await streams.publish(room, [record(3)])
        await streams.stop()
    assert errors + 3 == sample("collab_stream_appends_total", {"result": "error"})
    events = [log["event"] for log in logs]
    assert "stream_connect_failed" in events
    assert 1 == events.count("stream_publish_failed")  # once per outage
    assert "sekret" not in repr(logs)
    assert 0 == received.reconnects
    assert 0.0 == sample("collab_stream_connected")


async def test_publish_after_stop_returns_false(make_streams: Callable[..., Any], room: str) -> None:
    streams = await make_streams()
    await streams.stop()
    await streams.stop()  # twice is harmless
    assert not await streams.publish(room, [record(1)])
    assert await streams.publish(room, [])  # nothing to append


async def test_delivery_is_measured(make_streams: Callable[..., Any], room: str) -> None:
    received = Received()
    streams = await make_streams(received)
    lag, reads = sample("collab_stream_lag_seconds_count"), sample("collab_stream_reads_total")
    streams.follow(room, 0)
    assert await streams.publish(room, [record(1), record(2, stamp=0.0)])  # no time: not measured
    await received.wait_versions(room, [1, 2])
    assert lag + 1 == sample("collab_stream_lag_seconds_count")
    assert reads < sample("collab_stream_reads_total")


def test_bad_options_are_refused() -> None:
    def make(**options: Any) -> UpdateStreams:
        return UpdateStreams(REDIS_URL, on_records=lambda *_: None, on_reconnect=lambda: None, **options)

    for options in ({"max_length": 0}, {"block_ms": 0}, {"backoff_min": 3.0}, {"client_name": "a b"}):
        with pytest.raises(ValueError):
            make(**options)
