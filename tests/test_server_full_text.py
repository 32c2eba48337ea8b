"""The full-text protocol over real WebSockets against a live server: every behaviour, verbatim."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Client, LiveServer, stalled_socket, start_server

pytestmark = pytest.mark.slow

Connect = Callable[..., Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for this module. Every test opens its own rooms from this one address, more
    than an address may make a minute by default; the limits per address have tests of their
    own (tests/test_abuse_identity.py)."""
    live = start_server(
        tmp_path_factory.mktemp("seed-server"),
        ROOMS_PER_ADDRESS_PER_MINUTE="100000",
        RATE_LIMIT_PER_ADDRESS_PER_SECOND="100000",
        RATE_LIMIT_PER_ADDRESS_BURST="100000",
    )
    yield live
    live.stop()


async def join(connect_client: Connect, server: LiveServer, room: str, name: object = "ann") -> Client:
    client: Client = await connect_client(server.ws(room))
    await client.send({"type": "join", "username": name})
    return client


async def test_joiner_gets_nothing_and_others_get_user_joined(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room, "ann")
    bob = await join(connect_client, server, room, "bob")
    joined = await ann.recv()
    assert "user_joined" == joined["type"]
    assert "bob" == joined["username"]
    assert isinstance(joined["user_id"], str) and joined["user_id"]
    await bob.expect_silence()


@pytest.mark.parametrize("name", [None, 42, "", "   ", {"x": 1}])
async def test_invalid_or_missing_name_becomes_anonymous(
    server: LiveServer, room: str, connect_client: Connect, name: object
) -> None:
    ann = await join(connect_client, server, room)
    other: Client = await connect_client(server.ws(room))
    await other.send({"type": "join"} if name is None else {"type": "join", "username": name})
    assert "Anonymous" == (await ann.recv())["username"]


async def test_username_is_trimmed_and_cut_to_the_limit(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann = await join(connect_client, server, room)
    await join(connect_client, server, room, "  Bob\n\u202e  " + "x" * 100)
    assert "Bob " + "x" * 36 == (await ann.recv())["username"]


async def test_code_change_reaches_everyone_but_sender_as_full_text(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room, "ann")
    bob = await join(connect_client, server, room, "bob")
    carol = await join(connect_client, server, room, "carol")
    bob_id = (await ann.recv())["user_id"]
    await ann.recv()  # carol joined
    await bob.recv()  # carol joined
    await bob.send({"type": "code_change", "code": "print('hi 😀')", "cursor_position": 7})
    expected = {"type": "code_change", "code": "print('hi 😀')", "cursor_position": 7, "user_id": bob_id}
    assert expected == await ann.recv()
    assert expected == await carol.recv()
    await bob.expect_silence()
    # Every later change carries the whole text.
    await carol.send({"type": "code_change", "code": "print('hi 😀')\nx = 1", "cursor_position": 18})
    assert "print('hi 😀')\nx = 1" == (await ann.recv())["code"]
    assert "print('hi 😀')\nx = 1" == (await bob.recv())["code"]


async def test_sync_request_answers_with_current_text(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann = await join(connect_client, server, room)
    await ann.send({"type": "code_change", "code": "a = 1", "cursor_position": 5})
    late = await join(connect_client, server, room, "late")
    await late.send({"type": "sync_request"})
    reply = await late.recv()
    assert ("code_change", "a = 1") == (reply["type"], reply["code"])


async def test_leave_closes_and_others_get_user_left(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann = await join(connect_client, server, room)
    bob = await join(connect_client, server, room, "bob")
    bob_id = (await ann.recv())["user_id"]
    await bob.send({"type": "leave"})
    assert {"type": "user_left", "user_id": bob_id} == await ann.recv()
    with pytest.raises(ConnectionClosed) as closed:
        await bob.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_dropped_connection_sends_user_left(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann = await join(connect_client, server, room)
    bob = await join(connect_client, server, room, "bob")
    bob_id = (await ann.recv())["user_id"]
    bob.connection.transport.abort()  # no close frame: as if the network went away
    assert {"type": "user_left", "user_id": bob_id} == await ann.recv()


async def test_server_pings_and_pong_is_accepted_silently(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(HEARTBEAT_INTERVAL_SECONDS="0.2")
    ann = await join(connect_client, live, room)
    raw = await asyncio.wait_for(ann.connection.recv(), 5)
    assert '{"type":"ping"}' == raw
    await ann.send({"type": "pong"})
    await ann.send({"type": "sync_request"})
    assert "code_change" == (await ann.recv())["type"]  # no error came before it


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "shout"}', "unknown message type"),
        ('{"type": "code_change"}', "code"),
        ('{"type": "code_change", "code": 5}', "code"),
    ],
)
async def test_bad_messages_get_error_and_connection_stays(
    server: LiveServer, room: str, connect_client: Connect, frame: str, fragment: str
) -> None:
    ann = await join(connect_client, server, room)
    await ann.send({"type": "code_change", "code": "intact", "cursor_position": 0})
    await ann.send(frame)
    error = await ann.recv()
    assert "error" == error["type"]
    assert fragment in error["message"]
    assert {"type", "message"} == set(error)
    await ann.send({"type": "sync_request"})
    assert "intact" == (await ann.recv())["code"]


async def test_oversize_code_gets_error_and_document_stays(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room)
    bob = await join(connect_client, server, room, "bob")
    await ann.recv()
    await ann.send({"type": "code_change", "code": "small", "cursor_position": 0})
    assert "small" == (await bob.recv())["code"]
    await ann.send({"type": "code_change", "code": "😀" * 100_001, "cursor_position": 0})
    error = await ann.recv()
    assert "error" == error["type"]
    assert "100000" in error["message"]
    await bob.expect_silence()
    await ann.send({"type": "sync_request"})
    assert "small" == (await ann.recv())["code"]


async def test_full_size_document_is_accepted(server: LiveServer, room: str, connect_client: Connect) -> None:
    ann = await join(connect_client, server, room)
    bob = await join(connect_client, server, room, "bob")
    await ann.recv()
    await ann.send({"type": "code_change", "code": "😀" * 100_000, "cursor_position": 0})
    assert 100_000 == len((await bob.recv(timeout=10))["code"])


async def test_flood_is_rate_limited_and_connection_stays(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room)
    for index in range(600):
        await ann.send({"type": "code_change", "code": f"v{index}", "cursor_position": 0})
    error = await ann.recv_type("error")
    assert "too many messages" in error["message"]
    # Once the bucket has refilled enough, a request is answered again.
    reply = await ann.send_until({"type": "sync_request"}, "code_change")
    assert reply["code"].startswith("v")


async def test_full_text_client_without_join_is_served_as_anonymous(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room)
    other: Client = await connect_client(server.ws(room))
    await other.send({"type": "code_change", "code": "hi", "cursor_position": 2})
    assert "Anonymous" == (await ann.recv())["username"]
    assert "hi" == (await ann.recv())["code"]


async def test_foreign_origin_is_refused_and_same_origin_accepted(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect_client(server.ws(room), origin="https://evil.example")
    assert 403 == refused.value.response.status_code
    same = await connect_client(server.ws(room), origin=f"http://127.0.0.1:{server.port}")
    await same.send({"type": "sync_request"})
    assert "code_change" == (await same.recv())["type"]


async def test_invalid_room_id_gets_error(server: LiveServer, connect_client: Connect) -> None:
    client: Client = await connect_client(server.ws("bad%20room"))
    error = await client.recv()
    assert "room id" in error["message"]


async def test_health_endpoints_answer(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert {"status": "ok"} == (await http.get("/healthz")).json()
        ready = await http.get("/readyz")
        assert (200, "ready") == (ready.status_code, ready.json()["status"])
        page = await http.get("/")
        assert 200 == page.status_code
        assert "collab pad" in page.text


async def test_frame_over_the_cap_closes_with_message_too_big(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(MAX_MESSAGE_BYTES="1000")
    ann = await join(connect_client, live, room)
    await ann.send({"type": "code_change", "code": "x" * 2000, "cursor_position": 0})
    with pytest.raises(ConnectionClosed) as closed:
        await ann.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_connection_that_never_joins_is_closed(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(JOIN_TIMEOUT_SECONDS="0.5")
    lurker: Client = await connect_client(live.ws(room))
    await lurker.send({"type": "hello"})  # a failed hello does not restart the clock
    assert "error" == (await lurker.recv())["type"]
    with pytest.raises(ConnectionClosed) as closed:
        await lurker.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_binary_frame_with_encoded_surrogate_is_refused_and_room_goes_on(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room)
    bob = await join(connect_client, server, room, "bob")
    await ann.recv()
    await ann.connection.send(b'{"type":"code_change","code":"x","cursor_position":"\xed\xa0\x80"}')
    assert "UTF-8" in (await ann.recv())["message"]
    await ann.send({"type": "code_change", "code": "fine", "cursor_position": 4})
    assert "fine" == (await bob.recv())["code"]


async def test_full_text_client_cannot_speak_the_versioned_protocol(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room)
    await ann.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "x"]]})
    assert "full-text protocol" in (await ann.recv())["message"]


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "hello", "username": "no id"}',
        '{"type": "hello", "client_id": "x", "username": "\\ud800"}',
        '{"type": "push", "version": 0, "seq": 1, "changes": []}',
        '{"type": "language", "language": 5}',
    ],
)
async def test_a_failed_hello_attempt_gets_a_versioned_error_and_may_say_hello_again(
    server: LiveServer, room: str, connect_client: Connect, frame: str
) -> None:
    client: Client = await connect_client(server.ws(room))
    await client.send(frame)
    error = await client.recv()
    assert ("error", {"type", "code", "message"}) == (error["type"], set(error))
    await client.send({"type": "hello", "client_id": "tab-late", "username": "late"})
    assert "welcome" == (await client.recv())["type"]


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1, 2]", '{"type": "join", "username": [1]', '{"type": "dance"}', '{"no": "type"}', b"\xff"],
)
async def test_a_first_frame_that_is_no_valid_message_joins_as_anonymous_silently(
    server: LiveServer, room: str, connect_client: Connect, frame: str | bytes
) -> None:
    ann = await join(connect_client, server, room)
    client: Client = await connect_client(server.ws(room))
    await client.connection.send(frame)
    assert ("user_joined", "Anonymous") == ((joined := await ann.recv())["type"], joined["username"])
    await client.expect_silence()
    await client.send({"type": "sync_request"})
    assert "code_change" == (await client.recv())["type"]


async def test_a_broken_code_change_as_first_frame_joins_and_is_told_its_edit_was_refused(
    server: LiveServer, room: str, connect_client: Connect
) -> None:
    ann = await join(connect_client, server, room)
    client: Client = await connect_client(server.ws(room))
    await client.send({"type": "code_change", "cursor_position": 0})  # no code
    assert ("user_joined", "Anonymous") == ((joined := await ann.recv())["type"], joined["username"])
    error = await client.recv()
    assert ("error", {"type", "message"}) == (error["type"], set(error))
    await client.send({"type": "sync_request"})
    assert ("code_change", "") == ((reply := await client.recv())["type"], reply["code"])


async def test_dead_full_text_socket_is_found_by_protocol_pings(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(WS_PING_INTERVAL_SECONDS="0.3", WS_PING_TIMEOUT_SECONDS="0.5")
    ann = await join(connect_client, live, room)
    # A full-text client whose machine vanished: it joined, then never reads or answers again.
    dead = stalled_socket(live.port, room, {"type": "join", "username": "ghost"})
    ghost_id = (await ann.recv_type("user_joined"))["user_id"]
    assert {"type": "user_left", "user_id": ghost_id} == await ann.recv_type("user_left", timeout=10)
    dead.close()
