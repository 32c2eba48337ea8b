"""The versioned protocol over real WebSockets against a live server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rooms.changes import ChangeSet, utf16_len
from rooms.replica import Replica
from tests.conftest import Client, LiveServer, stalled_socket

pytestmark = pytest.mark.slow

Connect = Callable[..., Any]


class VersionedClient:
    """A replica driven over a real socket: a reader task applies updates and sends pushes."""

    def __init__(self, url: str, client_id: str, username: str) -> None:
        self.url = url
        self.username = username
        self.replica = Replica(client_id)
        self.connection: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.seen: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.user_id = ""
        self.rebased = 0  # remote updates that arrived while a push of ours was in flight
        self.changed = asyncio.Event()  # set after each message is handled, and when reading ends

    async def open(self, *, resume: bool = False) -> None:
        self.connection = await connect(self.url, max_size=None)
        await self.connection.send(json.dumps(self.replica.hello(self.username, resume=resume)))
        welcome = json.loads(await self.connection.recv())
        assert "welcome" == welcome["type"], welcome
        self.user_id = welcome["user_id"]
        resend = self.replica.welcome(welcome)
        if resend is not None:
            await self.connection.send(json.dumps(resend))
        self.reader = asyncio.create_task(self._read(self.connection))

    async def _read(self, connection: ClientConnection) -> None:
        try:
            await self._handle_messages(connection)
        finally:
            self.changed.set()

    async def _handle_messages(self, connection: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in connection:
                message = json.loads(raw)
                if message["type"] == "update":
                    self.seen.append(message)
                    if self.replica.inflight is not None and message.get("client_id") != self.replica.client_id:
                        self.rebased += 1
                    out = self.replica.update(message)
                    if out is not None:
                        await connection.send(json.dumps(out))
                elif message["type"] == "ack":
                    out = self.replica.ack(message)
                    if out is not None:
                        await connection.send(json.dumps(out))
                elif message["type"] == "error":
                    self.errors.append(message)
                self.changed.set()

    async def edit(self, changes: ChangeSet) -> None:
        out = self.replica.edit(changes)
        if out is not None and self.connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.connection.send(json.dumps(out))

    async def insert(self, at_char: int, text: str) -> None:
        position = utf16_len(self.replica.text[:at_char])
        await self.edit(ChangeSet.of_replace(self.replica.length, position, position, text))

    async def drop(self) -> None:
        """Cut the connection without a close frame and stop reading."""
        assert self.connection is not None and self.reader is not None
        self.connection.transport.abort()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.connection is not None:
            await self.connection.close()

    async def settled(self, version: int, timeout: float = 15.0) -> None:
        """Until the replica is at ``version`` or later with nothing unconfirmed; only a message
        from the server changes either, so it looks again after each one."""
        try:
            async with asyncio.timeout(timeout):
                while self.replica.version < version or self.replica.has_unconfirmed:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.replica.client_id} stuck at {self.replica.version} (want {version}), "
                f"unconfirmed={self.replica.has_unconfirmed}, errors={self.errors[-3:]}"
            ) from None


async def log_lines_until(
    live: LiveServer, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The server's JSON log lines, once one of them meets ``condition``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in live.log().splitlines() if line.startswith("{")]
        if any(condition(line) for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no such log line within {timeout} s:\n{live.log()}"
        await asyncio.sleep(0.02)


async def server_text(server: LiveServer, room: str) -> tuple[str, int]:
    async with connect(server.ws(room), max_size=None) as probe:
        await probe.send(json.dumps({"type": "hello", "client_id": "probe", "username": "probe", "version": None}))
        welcome = json.loads(await probe.recv())
        return welcome["doc"], welcome["version"]


async def hello(
    client: Client, client_id: str, name: str = "ann", version: int | None = None, resume_token: str | None = None
) -> dict[str, Any]:
    message = {"type": "hello", "client_id": client_id, "username": name, "version": version}
    if resume_token is not None:
        message["resume_token"] = resume_token
    await client.send(message)
    return await client.recv_type("welcome")


async def test_six_clients_on_stale_versions_converge_without_losing_inserts(server: LiveServer, room: str) -> None:
    clients = [VersionedClient(server.ws(room), f"client-{i}", f"user{i}") for i in range(6)]
    for client in clients:
        await client.open()
    tokens: list[str] = []

    async def type_into(client: VersionedClient, index: int) -> None:
        local = random.Random(index)
        for step in range(25):
            text = client.replica.text
            if local.random() < 0.25 and "~" in text:
                # Delete one filler character: tokens themselves are never deleted.
                at = local.choice([i for i, char in enumerate(text) if char == "~"])
                start = utf16_len(text[:at])
                await client.edit(ChangeSet.of_replace(client.replica.length, start, start + 1, ""))
            else:
                token = f"[{index}.{step}{local.choice('a😀漢🎉')}]"
                tokens.append(token)
                boundaries = [0] + [i + 1 for i, char in enumerate(text) if char in "]~"]
                await client.insert(local.choice(boundaries), token + "~" * local.randint(0, 2))
            # Not a wait for anything: uneven typing paces, so that pushes cross on stale versions.
            await asyncio.sleep(local.uniform(0, 0.02))

    await asyncio.gather(*(type_into(client, index) for index, client in enumerate(clients)))
    text, version = await server_text(server, room)
    for client in clients:
        await client.settled(version)
    for client in clients:
        assert text == client.replica.text
        assert [] == client.errors
    for token in tokens:
        assert 1 == text.count(token), token
    assert 0 < version <= 150
    # The pushes really were concurrent: some were made on versions others had moved past.
    assert sum(client.rebased for client in clients) > 10
    for client in clients:
        await client.close()


async def test_resend_after_reconnect_is_applied_once(server: LiveServer, room: str, connect_client: Connect) -> None:
    first: Client = await connect_client(server.ws(room))
    token = (await hello(first, "resender"))["resume_token"]
    push = {"type": "push", "version": 0, "seq": 1, "changes": [[0, "once"]]}
    await first.send(push)
    assert 1 == (await first.recv_type("update"))["version"]
    await first.close()
    # Reconnect as the same client (its token proves it), resume from version 0, and resend.
    second: Client = await connect_client(server.ws(room))
    welcome = await hello(second, "resender", version=0, resume_token=token)
    assert ("doc" not in welcome, 0) == (True, welcome["version"])
    replay = await second.recv_type("update")
    assert ("resender", 1) == (replay["client_id"], replay["seq"])
    await second.send(push)
    await second.expect_silence(0.5)
    assert ("once", 1) == await server_text(server, room)


async def test_unconfirmed_push_resent_after_drop_lands_exactly_once(server: LiveServer, room: str) -> None:
    writer = VersionedClient(server.ws(room), "dropper", "dan")
    await writer.open()
    await writer.insert(0, "abc")
    await writer.settled(1)
    await writer.insert(3, "def")  # in flight when the connection goes
    await writer.drop()
    await writer.open(resume=True)
    await writer.settled(2)
    assert ("abcdef", 2) == await server_text(server, room)
    await writer.close()


async def test_update_names_its_client_id_to_its_author_only(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann: Client = await connect_client(server.ws(room))
    bob: Client = await connect_client(server.ws(room))
    ann_welcome = await hello(ann, "a1", "ann")
    await hello(bob, "b1", "bob")
    await ann.send({"type": "push", "version": 0, "seq": 7, "changes": [[0, "x😀"]]})
    expected = {
        "type": "update",
        "version": 1,
        "client_id": "a1",
        "seq": 7,
        "changes": [[0, "x😀"]],
        "user_id": ann_welcome["user_id"],
    }
    assert expected == await ann.recv_type("update")
    del expected["client_id"]  # a client_id is its owner's credential: others never learn it
    assert expected == await bob.recv_type("update")


async def test_members_join_and_leave_are_announced(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann: Client = await connect_client(server.ws(room))
    await hello(ann, "a1", "ann")
    bob: Client = await connect_client(server.ws(room))
    bob_welcome = await hello(bob, "b1", "<img src=x onerror=alert(1)>")
    assert ["ann", "<img src=x onerror=alert(1)>"] == [m["username"] for m in bob_welcome["members"]]
    joined = await ann.recv_type("member_joined")
    assert (bob_welcome["user_id"], "<img src=x onerror=alert(1)>") == (joined["user_id"], joined["username"])
    assert re.fullmatch("#[0-9a-f]{6}", joined["color"])
    await bob.close()
    assert {"type": "member_left", "user_id": bob_welcome["user_id"]} == await ann.recv_type("member_left")


async def test_full_text_and_versioned_clients_share_a_room(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    seed: Client = await connect_client(server.ws(room))
    await seed.send({"type": "join", "username": "sam"})
    versioned: Client = await connect_client(server.ws(room))
    await hello(versioned, "v1", "vic")
    await seed.recv_type("user_joined")
    await seed.send({"type": "code_change", "code": "def f():\n    pass\n", "cursor_position": 0})
    first = await versioned.recv_type("update")
    assert [[0, "def f():", "    pass", ""]] == first["changes"]
    await seed.send({"type": "code_change", "code": "def f():\n    return 1\n", "cursor_position": 0})
    second = await versioned.recv_type("update")
    assert 2 == len([part for part in second["changes"] if isinstance(part, list)]) or 1 == len(
        [part for part in second["changes"] if isinstance(part, list)]
    )
    assert utf16_len("def f():\n    pass\n") == ChangeSet.from_json(second["changes"]).length
    await versioned.send({"type": "push", "version": 2, "seq": 1, "changes": [22, [0, "# end"]]})
    change = await seed.recv_type("code_change")
    assert "def f():\n    return 1\n# end" == change["code"]


async def test_cursor_is_relayed_mapped_to_current_version(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann: Client = await connect_client(server.ws(room))
    bob: Client = await connect_client(server.ws(room))
    ann_id = (await hello(ann, "a1", "ann"))["user_id"]
    await hello(bob, "b1", "bob")
    await ann.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "world"]]})
    await bob.send({"type": "push", "version": 1, "seq": 1, "changes": [[0, "hello "], 5]})
    await ann.recv_type("update")
    await ann.recv_type("update")
    await ann.send({"type": "cursor", "version": 1, "anchor": 1, "head": 5})
    cursor = await bob.recv_type("cursor")
    assert {"type": "cursor", "user_id": ann_id, "anchor": 7, "head": 11, "version": 2} == cursor


async def test_language_change_reaches_everyone(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann: Client = await connect_client(server.ws(room))
    bob: Client = await connect_client(server.ws(room))
    await hello(ann, "a1")
    await hello(bob, "b1")
    await ann.send({"type": "language", "language": "javascript"})
    assert "javascript" == (await ann.recv_type("language"))["language"]
    assert "javascript" == (await bob.recv_type("language"))["language"]
    late: Client = await connect_client(server.ws(room))
    assert "javascript" == (await hello(late, "c1"))["language"]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{oops", "invalid_json"),
        ('{"type": "teleport"}', "invalid_message"),
        ('{"type": "push", "version": "x", "seq": 1, "changes": []}', "invalid_message"),
        ('{"type": "push", "version": 0, "seq": 1, "changes": [99, [0, "x"]]}', "invalid_changes"),
        ('{"type": "push", "version": 0, "seq": 1, "changes": [[0, 5]]}', "invalid_changes"),
        ('{"type": "push", "version": 0, "seq": 1, "changes": [[0, "\\ud83d"]]}', "invalid_message"),
        ('{"type": "push", "version": 0, "seq": 1, "changes": [[0, "a"], [1, "b"]]}', "invalid_changes"),
        ('{"type": "language", "language": "\\udc00"}', "invalid_message"),
        ('{"type": "push", "version": 0, "seq": 1, "changes": [[0, "' + "x" * 100_001 + '"]]}', "too_large"),
        ('{"type": "push", "version": 9, "seq": 1, "changes": []}', "invalid_version"),
        ('{"type": "hello", "client_id": "again", "username": "x"}', "invalid_message"),
        ('{"type": "cursor", "version": 0, "anchor": 50, "head": 0}', "invalid_message"),
    ],
)
async def test_bad_input_gets_error_code_and_leaves_document_and_connection(
    server: LiveServer, room: str, connect_client: Connect, message: str, code: str
) -> None:
    client: Client = await connect_client(server.ws(room))
    await hello(client, "c1")
    await client.send(message)
    error = await client.recv_type("error")
    assert code == error["code"], error
    assert error["message"]
    await client.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "still here"]]})
    assert 1 == (await client.recv_type("update"))["version"]
    assert ("still here", 1) == await server_text(server, room)


async def test_push_on_version_beyond_history_gets_version_too_old(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(HISTORY_LIMIT="2")
    client: Client = await connect_client(live.ws(room))
    await hello(client, "c1")
    for seq in range(1, 4):
        changes: list[Any] = [seq - 1, [0, "x"]] if seq > 1 else [[0, "x"]]
        await client.send({"type": "push", "version": seq - 1, "seq": seq, "changes": changes})
        await client.recv_type("update")
    await client.send({"type": "push", "version": 0, "seq": 4, "changes": [[0, "y"]]})
    assert "version_too_old" == (await client.recv_type("error"))["code"]


async def test_flood_gets_rate_limited_with_retry_after(server: LiveServer, room: str, connect_client: Connect) -> None:
    client: Client = await connect_client(server.ws(room))
    await hello(client, "c1")
    for _ in range(800):
        await client.send({"type": "ping"})
    error = await client.recv_type("error", timeout=10)
    assert "rate_limited" == error["code"]
    assert error["retry_after"] > 0
    # Once the bucket has refilled enough, the push is applied (a repeat of an applied seq is not).
    update = await client.send_until({"type": "push", "version": 0, "seq": 1, "changes": [[0, "ok"]]}, "update")
    assert 1 == update["version"]


async def test_client_that_stops_reading_is_dropped_and_others_keep_receiving(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(OUTBOUND_QUEUE_SIZE="50", SEND_TIMEOUT_SECONDS="2", RATE_LIMIT_BURST="100000")
    stalled = stalled_socket(live.port, room, {"type": "hello", "client_id": "stalled", "username": "sid"})
    watcher: Client = await connect_client(live.ws(room))
    await hello(watcher, "watcher")
    writer: Client = await connect_client(live.ws(room))
    await hello(writer, "writer")
    big = "x" * 50_000
    left: dict[str, Any] | None = None
    received: list[int] = []
    seq = 0
    # Insert a large block, then delete it again (the document stays small), until the server
    # has given up on the stalled client: its socket buffers hold a few MB at most.
    while left is None and seq < 600:
        seq += 1
        changes: list[Any] = [[0, big]] if seq % 2 else [[50_000]]
        await writer.send({"type": "push", "version": seq - 1, "seq": seq, "changes": changes})
        while True:
            message = await watcher.recv(timeout=10)
            if message["type"] == "member_left":
                left = message
            elif message["type"] == "update":
                received.append(message["version"])
                break
    assert left is not None, "the stalled client was not dropped"
    # The others never waited for it: the watcher got every update, each before the next push
    # was even sent, while more than a queue's worth piled up for the stalled client.
    assert list(range(1, seq + 1)) == received
    assert seq > 50
    metrics = live.metrics()
    dropped = re.search(r'collab_dropped_sockets_total\{reason="(queue_overflow|send_timeout)"\} (\d+)', metrics)
    assert dropped is not None and int(dropped.group(2)) >= 1
    stalled.close()
    writer.connection.transport.abort()  # it never read its own updates: no close handshake


async def test_silent_versioned_client_is_dropped_by_heartbeat(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(HEARTBEAT_INTERVAL_SECONDS="0.2", HEARTBEAT_TIMEOUT_SECONDS="0.5")
    silent: Client = await connect_client(live.ws(room))
    await hello(silent, "silent")
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(50):
            await silent.recv(timeout=5)
    assert closed.value.rcvd is not None and 1013 == closed.value.rcvd.code


async def test_metrics_reflect_connections_messages_and_drops(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    client: Client = await connect_client(server.ws(room))
    await hello(client, "metrics")
    await client.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "m"]]})
    await client.recv_type("update")
    async with httpx.AsyncClient(base_url=server.http) as http:
        text = (await http.get("/metrics")).text
    gauge = re.search(r'collab_connections\{protocol="versioned",transport="websocket"\} (\S+)', text)
    assert gauge is not None and float(gauge.group(1)) >= 1
    pushes = re.search(r'collab_messages_total\{direction="in",type="push"\} (\S+)', text)
    assert pushes is not None and float(pushes.group(1)) >= 1
    updates = re.search(r'collab_messages_total\{direction="out",type="update"\} (\S+)', text)
    assert updates is not None and float(updates.group(1)) >= 1
    for name in (
        "collab_rooms",
        "collab_members",
        "collab_update_apply_seconds_count",
        "collab_fanout_seconds_count",
        "collab_rate_limited_total",
        "process_resident_memory_bytes",
    ):
        assert re.search(rf"^{name}(\{{.*\}})? ", text, re.MULTILINE), name


async def test_logs_carry_room_and_user_and_never_contents(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server()
    client: Client = await connect_client(live.ws(room))
    welcome = await hello(client, "logger", "lou")
    secret = "SECRET-TEXT-" + "q" * 10
    await client.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, secret]]})
    await client.recv_type("update")
    await client.send("{broken " + secret)
    await client.recv_type("error")
    await client.close()
    lines = await log_lines_until(live, lambda line: line.get("event") == "member_left")  # the last line of it
    joined = [line for line in lines if line.get("event") == "member_joined"]
    assert joined and welcome["user_id"] == joined[0]["user_id"]
    rejected = [line for line in lines if line.get("event") == "message_rejected"]
    # The room is named by its tag, the same on every line about it, never by its id.
    assert rejected and re.fullmatch("[0-9a-f]{12}", rejected[0]["room"]) and rejected[0]["room"] == joined[0]["room"]
    assert secret not in live.log()
    assert room not in live.log()


async def test_second_connection_with_a_live_client_id_is_refused_and_may_retry(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    first: Client = await connect_client(server.ws(room))
    welcome = await hello(first, "tab-1")
    copy: Client = await connect_client(server.ws(room))
    await copy.send({"type": "hello", "client_id": "tab-1", "username": "copy", "version": None})
    assert "client_id_in_use" == (await copy.recv_type("error"))["code"]
    # The same connection may say hello again, as a new client.
    assert "" == (await hello(copy, "tab-2"))["doc"]
    # The owner of the resume token takes its client_id over.
    again: Client = await connect_client(server.ws(room))
    await again.send(
        {
            "type": "hello",
            "client_id": "tab-1",
            "username": "ann",
            "version": 0,
            "resume_token": welcome["resume_token"],
        }
    )
    assert "welcome" == (await again.recv_type("welcome"))["type"]
    with pytest.raises(ConnectionClosed) as closed:
        await first.recv_type("never", timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


async def test_resume_into_a_room_made_anew_gets_a_snapshot_not_foreign_updates(
    make_server: Callable[..., LiveServer], room: str, tmp_path: Path
) -> None:
    first = make_server(DATA_DIR=str(tmp_path / "first"))
    old = VersionedClient(first.ws(room), "old-client", "olga")
    await old.open()
    await old.insert(0, "abc")
    await old.settled(1)
    await old.close()
    second = make_server(DATA_DIR=str(tmp_path / "second"))  # another server: the room is new there
    other = VersionedClient(second.ws(room), "other", "otto")
    await other.open()
    await other.insert(0, "XYZ")
    await other.settled(1)
    returning = VersionedClient(second.ws(room), "old-client", "olga")
    returning.replica = old.replica  # same version number (1), another epoch
    await returning.open(resume=True)
    assert "XYZ" == returning.replica.text
    await other.close()
    await returning.close()


async def test_an_unloaded_room_comes_back_with_its_text_version_and_epoch(
    make_server: Callable[..., LiveServer], room: str
) -> None:
    live = make_server(ROOM_GRACE_SECONDS="0")
    ann = VersionedClient(live.ws(room), "ann-client", "ann")
    await ann.open()
    await ann.insert(0, "abc")
    await ann.settled(1)
    await ann.close()
    await log_lines_until(live, lambda line: line.get("event") == "room_evicted")  # the empty room goes at once
    bob = VersionedClient(live.ws(room), "bob-client", "bob")
    await bob.open()  # loads the room from the store
    assert ("abc", 1, ann.replica.epoch) == (bob.replica.text, bob.replica.version, bob.replica.epoch)
    await bob.insert(3, "d")
    await bob.settled(2)
    returning = VersionedClient(live.ws(room), "ann-client", "ann")
    returning.replica = ann.replica
    await returning.open(resume=True)  # the same epoch: a catch-up, not a snapshot
    await returning.settled(2)
    assert "abcd" == returning.replica.text
    await bob.close()
    await returning.close()


async def test_a_member_keeps_the_colour_it_chose(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann: Client = await connect_client(server.ws(room))
    await ann.send({"type": "hello", "client_id": "ann", "username": "Ann", "version": None, "color": "#AA00ff"})
    welcome = await ann.recv_type("welcome")
    assert {"user_id": welcome["user_id"], "username": "Ann", "color": "#aa00ff"} in welcome["members"]
    bob: Client = await connect_client(server.ws(room))
    await bob.send({"type": "hello", "client_id": "bob", "username": "Bob", "version": None, "color": "red"})
    error = await bob.recv_type("error")
    assert "invalid_message" == error["code"] and "color" in error["message"]
