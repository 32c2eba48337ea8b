"""Interview rooms against a live server: a room made with ``POST /api/rooms``, then raw /ws clients
of each role, joined with their link's secret in ``hello``."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, LiveServer, start_server

pytestmark = pytest.mark.slow

Connect = Callable[..., Any]
ROLES = ("interviewer", "candidate", "observer")
CLOSE_REVOKED = 4003


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for this module. Every test client comes from 127.0.0.1, so the refused links
    of all its tests would count against one address: that limit is lifted here."""
    server = start_server(tmp_path_factory.mktemp("roles"), LINK_FAILURES_PER_ADDRESS_PER_MINUTE="100000")
    yield server
    server.stop()


@dataclass
class Interview:
    """A private room: its id and each role's link secret."""

    server: LiveServer
    room_id: str
    tokens: dict[str, str]

    @property
    def ws(self) -> str:
        return self.server.ws(self.room_id)


async def create_room(server: LiveServer) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        return await http.post("/api/rooms")


async def new_interview(server: LiveServer) -> Interview:
    """A private room made as the start page makes one."""
    response = await create_room(server)
    assert 201 == response.status_code, response.text
    body = response.json()
    return Interview(server, body["room_id"], body["tokens"])


@pytest.fixture
async def interview(live: LiveServer) -> Interview:
    return await new_interview(live)


async def say_hello(client: Client, client_id: str, token: str | None = None) -> dict[str, Any]:
    """Send hello; the server's first answer (a welcome or an error)."""
    message: dict[str, Any] = {"type": "hello", "client_id": client_id, "username": client_id}
    if token is not None:
        message["token"] = token
    await client.send(message)
    return await client.recv()


async def member(connect_client: Connect, room: Interview, role: str, client_id: str | None = None) -> Client:
    """A client joined with the role's link; its welcome is read (and an interviewer's notes)."""
    client: Client = await connect_client(room.ws)
    welcome = await say_hello(client, client_id or f"{role}-{uuid.uuid4().hex[:6]}", room.tokens[role])
    assert ("welcome", role) == (welcome["type"], welcome.get("role")), welcome
    if role == "interviewer":
        assert "notes" == (await client.recv())["type"]  # right after the welcome
    return client


async def members(connect_client: Connect, room: Interview) -> dict[str, Client]:
    """One client of each role, joined in the order of `ROLES`."""
    return {role: await member(connect_client, room, role) for role in ROLES}


def push(version: int, seq: int, changes: list[Any]) -> dict[str, Any]:
    return {"type": "push", "version": version, "seq": seq, "changes": changes}


async def closed(client: Client, within: float = 5.0) -> tuple[int | None, str | None]:
    """The close code and reason, once the server has closed the connection."""
    await asyncio.wait_for(client.connection.wait_closed(), within)
    return client.connection.close_code, client.connection.close_reason


async def document(connect_client: Connect, room: Interview) -> str:
    """The room's text, as an interviewer joining now is shown it."""
    probe: Client = await connect_client(room.ws)
    welcome = await say_hello(probe, f"probe-{uuid.uuid4().hex[:6]}", room.tokens["interviewer"])
    await probe.close()
    return str(welcome["doc"])


async def test_post_api_rooms_makes_a_private_room_with_a_link_for_every_role(interview: Interview) -> None:
    response = await create_room(interview.server)
    body = response.json()
    assert (201, set(ROLES), set(ROLES)) == (response.status_code, set(body["tokens"]), set(body["links"]))
    for role in ROLES:
        assert f"{interview.server.http}/join/{body['room_id']}/{body['tokens'][role]}" == body["links"][role]
    assert 3 == len(set(body["tokens"].values()))
    assert body["room_id"] != interview.room_id


async def test_each_link_joins_with_its_role_and_only_the_interviewer_sees_the_links(
    interview: Interview, connect_client: Connect
) -> None:
    welcomes = {}
    for role in ROLES:
        client: Client = await connect_client(interview.ws)
        welcomes[role] = await say_hello(client, role, interview.tokens[role])
    assert {role: role for role in ROLES} == {role: welcome["role"] for role, welcome in welcomes.items()}
    shared = {role: interview.tokens[role] for role in ("candidate", "observer")}
    assert (shared, None, None) == (
        welcomes["interviewer"]["links"],
        welcomes["candidate"].get("links"),
        welcomes["observer"].get("links"),
    )
    assert list(ROLES) == [m["role"] for m in welcomes["observer"]["members"]]


async def test_an_observers_push_is_read_only_and_changes_the_text_for_no_one(
    interview: Interview, connect_client: Connect
) -> None:
    clients = await members(connect_client, interview)
    await clients["observer"].send(push(0, 5, [[0, "sneaky"]]))
    error = await clients["observer"].recv_type("error")
    assert ("read_only", 5) == (error["code"], error["seq"])
    # The next update anyone sees is the interviewer's, at version 1: the observer's never was.
    await clients["interviewer"].send(push(0, 1, [[0, "fair"]]))
    for role in ROLES:
        update = await clients[role].recv_type("update")
        assert (1, [[0, "fair"]]) == (update["version"], update["changes"]), role
    assert "fair" == await document(connect_client, interview)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"type": "cursor", "version": 0, "anchor": 0, "head": 0}, id="cursor"),
        pytest.param({"type": "language", "language": "rust"}, id="language"),
        pytest.param({"type": "lock", "locked": True}, id="lock"),
    ],
)
async def test_an_observer_may_not_move_a_cursor_change_the_language_or_lock(
    interview: Interview, connect_client: Connect, message: dict[str, Any]
) -> None:
    observer = await member(connect_client, interview, "observer")
    await observer.send(message)
    assert "forbidden" == (await observer.recv_type("error"))["code"]
    await observer.send({"type": "ping"})
    await observer.recv_type("pong")  # the connection stays open


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"type": "lock", "locked": True}, id="lock"),
        pytest.param({"type": "revoke", "role": "observer", "renew": True}, id="revoke"),
        pytest.param({"type": "end"}, id="end"),
        pytest.param({"type": "notes", "text": "I did great"}, id="notes"),
    ],
)
async def test_a_candidate_may_not_control_the_room_or_write_notes(
    interview: Interview, connect_client: Connect, message: dict[str, Any]
) -> None:
    clients = await members(connect_client, interview)
    await clients["candidate"].send(message)
    assert "forbidden" == (await clients["candidate"].recv_type("error"))["code"]
    # Nothing happened: the candidate still types, the observer still watches.
    await clients["candidate"].send(push(0, 1, [[0, "still typing"]]))
    assert "still typing" == (await clients["observer"].recv_type("update"))["changes"][0][1]
    assert [] == [m for m in clients["observer"].inbox if m["type"] in ("locked", "ended", "notes", "link")]


@pytest.mark.parametrize("token", [None, "not-a-link-of-this-room"], ids=["no_token", "bad_token"])
async def test_a_hello_without_a_live_link_is_forbidden_and_may_try_again(
    interview: Interview, connect_client: Connect, token: str | None
) -> None:
    client: Client = await connect_client(interview.ws)
    refused = await say_hello(client, "guest", token)
    assert ("error", "forbidden") == (refused["type"], refused["code"])
    welcome = await say_hello(client, "guest", interview.tokens["observer"])
    assert ("welcome", "observer") == (welcome["type"], welcome["role"])


async def test_a_full_text_join_to_a_private_room_is_refused_and_closed(
    interview: Interview, connect_client: Connect
) -> None:
    client: Client = await connect_client(interview.ws)
    await client.send({"type": "join", "username": "sam"})
    error = await client.recv()
    assert ("error", True) == (error["type"], "private" in error["message"])
    assert 1008 == (await closed(client))[0]


async def test_a_lock_reaches_everyone_and_the_candidates_next_push_is_read_only(
    interview: Interview, connect_client: Connect
) -> None:
    clients = await members(connect_client, interview)
    await clients["interviewer"].send({"type": "lock", "locked": True})
    for role in ROLES:
        locked = await clients[role].recv_type("locked")
        assert True is locked["locked"], role
    await clients["candidate"].send(push(0, 1, [[0, "too late"]]))
    refused = await clients["candidate"].recv_type("error")
    assert ("read_only", 1) == (refused["code"], refused["seq"])
    await clients["interviewer"].send({"type": "lock", "locked": False})
    await clients["candidate"].recv_type("locked")
    await clients["candidate"].send(push(0, 1, [[0, "let through"]]))
    assert 1 == (await clients["candidate"].recv_type("update"))["version"]


async def test_revoke_closes_the_candidate_within_a_second_and_its_link_is_refused(
    interview: Interview, connect_client: Connect
) -> None:
    clients = await members(connect_client, interview)
    await clients["interviewer"].send({"type": "revoke", "role": "candidate", "renew": True})
    assert (CLOSE_REVOKED, "link revoked") == await closed(clients["candidate"], within=1.0)
    renewed = (await clients["interviewer"].recv_type("link"))["token"]
    again: Client = await connect_client(interview.ws)
    assert "forbidden" == (await say_hello(again, "cam-again", interview.tokens["candidate"]))["code"]
    assert "candidate" == (await say_hello(again, "cam-again", renewed))["role"]
    assert renewed != interview.tokens["candidate"]


async def test_remove_closes_the_member_with_4003(interview: Interview, connect_client: Connect) -> None:
    clients = await members(connect_client, interview)
    joined = await clients["interviewer"].recv_type("member_joined")  # the candidate
    await clients["interviewer"].send({"type": "remove", "user_id": joined["user_id"]})
    assert (CLOSE_REVOKED, "removed from the room") == await closed(clients["candidate"], within=1.0)
    assert joined["user_id"] == (await clients["observer"].recv_type("member_left"))["user_id"]


async def test_end_closes_the_candidate_keeps_the_observer_and_loses_nothing(
    interview: Interview, connect_client: Connect
) -> None:
    clients = await members(connect_client, interview)
    await clients["candidate"].send(push(0, 1, [[0, "def answer(): return 42"]]))
    await clients["candidate"].recv_type("update")
    await clients["interviewer"].send({"type": "end"})
    assert (CLOSE_REVOKED, "the interview has ended") == await closed(clients["candidate"], within=1.0)
    assert "ended" == (await clients["observer"].recv_type("ended"))["type"]
    await clients["observer"].send({"type": "ping"})
    await clients["observer"].recv_type("pong")  # still connected
    assert "ended" == (await clients["interviewer"].recv_type("ended"))["type"]
    again: Client = await connect_client(interview.ws)
    assert "forbidden" == (await say_hello(again, "cam-again", interview.tokens["candidate"]))["code"]
    await clients["interviewer"].close()
    assert "def answer(): return 42" == await document(connect_client, interview)  # the interviewer, back
    late = await member(connect_client, interview, "observer")  # observers may still come and read
    await late.send(push(1, 1, [23, [0, "#"]]))
    assert "read_only" == (await late.recv_type("error"))["code"]


async def read_all(client: Client, frames: list[str], until: str | None) -> None:
    """Every frame the client receives, kept raw in ``frames``, up to one of type ``until``
    (None: until the server closes the connection)."""
    while True:
        try:
            raw = await asyncio.wait_for(client.connection.recv(), 5)
        except ConnectionClosed:
            assert until is None, f"closed before a {until!r} message"
            return
        text = raw if isinstance(raw, str) else raw.decode()
        frames.append(text)
        if json.loads(text)["type"] == until:
            return


async def test_notes_and_links_never_reach_a_candidate_or_an_observer(
    interview: Interview, connect_client: Connect
) -> None:
    frames: list[str] = []
    interviewer = await member(connect_client, interview, "interviewer")
    second = await member(connect_client, interview, "interviewer")
    watched: dict[str, Client] = {}

    async def watch(name: str, token: str) -> None:
        watched[name] = await connect_client(interview.ws)
        await watched[name].send({"type": "hello", "client_id": name, "token": token})
        await read_all(watched[name], frames, "welcome")

    await watch("candidate", interview.tokens["candidate"])
    await watch("observer", interview.tokens["observer"])
    notes = ["NOTES-ONE: clear thinking", "NOTES-TWO: ask about tests"]
    await interviewer.send({"type": "notes", "text": notes[0]})
    assert notes[0] == (await second.recv_type("notes"))["text"]
    await interviewer.send({"type": "revoke", "role": "observer", "renew": True})
    renewed = (await interviewer.recv_type("link"))["token"]
    await read_all(watched["observer"], frames, None)  # closed by the revocation
    await second.send({"type": "notes", "text": notes[1]})
    assert notes[1] == (await interviewer.recv_type("notes"))["text"]
    await watch("observer-2", renewed)
    # A lock reaches everyone after the notes: what the watchers were sent up to it is the record.
    await interviewer.send({"type": "lock", "locked": True})
    for name in ("candidate", "observer-2"):
        await read_all(watched[name], frames, "locked")
    assert (CLOSE_REVOKED, "link revoked") == (
        watched["observer"].connection.close_code,
        watched["observer"].connection.close_reason,
    )
    secrets = {interview.tokens["interviewer"], interview.tokens["observer"], renewed}
    assert [] == [frame for frame in frames for secret in (*notes, *secrets) if secret in frame]
    assert {"welcome", "member_joined", "locked"} <= {json.loads(frame)["type"] for frame in frames}


async def test_an_open_room_still_takes_anyone_without_a_token(
    live: LiveServer, connect_client: Connect, room: str
) -> None:
    client: Client = await connect_client(live.ws(room))
    welcome = await say_hello(client, "anyone")
    assert ("welcome", None) == (welcome["type"], welcome.get("role"))
    await client.send(push(0, 1, [[0, "open"]]))
    update = await client.recv_type("update")
    assert (1, "anyone") == (update["version"], update["client_id"])
    await client.send({"type": "notes", "text": "no notes here"})
    assert "forbidden" == (await client.recv_type("error"))["code"]


async def test_without_open_rooms_a_hello_to_an_unknown_room_is_forbidden(
    make_server: Callable[..., LiveServer], connect_client: Connect, room: str
) -> None:
    server = make_server(OPEN_ROOMS="false")
    client: Client = await connect_client(server.ws(room))
    refused = await say_hello(client, "anyone")
    assert ("error", "forbidden") == (refused["type"], refused["code"])
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        assert 404 == (await http.get(f"/api/rooms/{room}")).status_code  # no room was made
        made = await http.post("/api/rooms")
    assert 201 == made.status_code, made.text
    body = made.json()
    invited: Client = await connect_client(server.ws(body["room_id"]))
    assert "interviewer" == (await say_hello(invited, "ivy", body["tokens"]["interviewer"]))["role"]


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Until ``condition()`` holds: for what only another process knows (its log, its gauges),
    which sends no event to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        assert time.monotonic() < deadline, f"not so within {timeout} s"
        await asyncio.sleep(0.02)


async def no_rooms_in_memory(server: LiveServer) -> bool:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        text = (await http.get("/metrics")).text
    found = re.search(r"^collab_rooms (\S+)$", text, re.MULTILINE)
    assert found is not None, "no collab_rooms gauge in /metrics"
    return float(found.group(1)) == 0


@pytest.mark.parametrize(
    "loaded",
    [
        pytest.param(True, id="loaded"),
        pytest.param(False, id="unloaded"),
    ],
)
async def test_only_an_interviewers_link_reads_a_private_rooms_history(
    live: LiveServer, make_server: Callable[..., LiveServer], connect_client: Connect, loaded: bool
) -> None:
    server = live if loaded else make_server(ROOM_GRACE_SECONDS="0")
    response = await create_room(server)
    assert 201 == response.status_code, response.text
    room = Interview(server, response.json()["room_id"], response.json()["tokens"])
    candidate = await member(connect_client, room, "candidate")
    await candidate.send(push(0, 1, [[0, "typed, then deleted"]]))
    await candidate.recv_type("update")
    await candidate.close()
    if loaded:
        await member(connect_client, room, "observer")  # someone stays: the room stays in memory
    else:
        await eventually(lambda: no_rooms_in_memory(server))  # unloaded once empty: no grace
    statuses = {}
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        for role in ROLES:
            headers = {"Authorization": f"Bearer {room.tokens[role]}"}
            statuses[role] = [
                (await http.get(f"/api/rooms/{room.room_id}{path}", headers=headers)).status_code
                for path in ("", "/history", "/versions/1")
            ]
        statuses["no link"] = [(await http.get(f"/api/rooms/{room.room_id}/history")).status_code]
    assert {
        "interviewer": [200, 200, 200],
        "candidate": [200, 403, 403],
        "observer": [200, 403, 403],
        "no link": [403],
    } == statuses


async def test_no_link_secret_nor_notes_reach_the_server_log(interview: Interview, connect_client: Connect) -> None:
    def locks() -> int:
        return interview.server.log().count('"room_locked"')

    async def locked_since(count: int) -> bool:
        return locks() > count

    before = locks()
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        for role in ROLES:
            opened = await http.get(f"/join/{interview.room_id}/{interview.tokens[role]}")
            assert 200 == opened.status_code
    clients = await members(connect_client, interview)
    await clients["interviewer"].send({"type": "notes", "text": "NOTES-IN-LOG? never"})
    await clients["interviewer"].send({"type": "revoke", "role": "observer", "renew": True})
    renewed = (await clients["interviewer"].recv_type("link"))["token"]
    await clients["interviewer"].send({"type": "lock", "locked": True})
    await clients["candidate"].recv_type("locked")
    await eventually(lambda: locked_since(before))
    log = interview.server.log()
    assert [] == [s for s in (*interview.tokens.values(), renewed, "NOTES-IN-LOG") if s in log]


async def test_a_page_of_another_site_cannot_make_rooms(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
        response = await http.post("/api/rooms", headers={"Origin": "https://evil.example"})
    assert (403, "origin_not_allowed") == (response.status_code, response.json()["error"])


async def test_opening_a_link_keeps_it_in_a_cookie_for_the_room_and_leaves_it_out_of_the_next_address(
    interview: Interview,
) -> None:
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        response = await http.get(f"/join/{interview.room_id}/{interview.tokens['candidate']}")
    cookie = response.headers["set-cookie"]
    assert 200 == response.status_code
    assert f"collab_link_{interview.room_id}={interview.tokens['candidate']}" in cookie
    assert {"httponly", "samesite=strict"} <= {part.strip().lower() for part in cookie.split(";")}
    assert f'content="0;url=/room/{interview.room_id}"' in response.text


async def test_a_revoked_link_opens_nothing_and_sets_no_cookie(interview: Interview, connect_client: Connect) -> None:
    interviewer = await member(connect_client, interview, "interviewer")
    await interviewer.send_until({"type": "revoke", "role": "observer"}, "link")
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        response = await http.get(f"/join/{interview.room_id}/{interview.tokens['observer']}")
    assert (403, None) == (response.status_code, response.headers.get("set-cookie"))
    assert "revoked" in response.text


async def test_an_interviewer_opening_the_candidate_link_stays_the_interviewer(interview: Interview) -> None:
    room, tokens = interview.room_id, interview.tokens
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        http.cookies.set(f"collab_link_{room}", tokens["interviewer"])
        response = await http.get(f"/join/{room}/{tokens['candidate']}")
    assert (200, None) == (response.status_code, response.headers.get("set-cookie"))
    assert "private window" in response.text


async def test_a_link_opened_from_another_site_is_opened_again_from_this_one_before_it_is_checked(
    interview: Interview,
) -> None:
    path = f"/join/{interview.room_id}/{interview.tokens['candidate']}"
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        response = await http.get(path, headers=headers)
    assert (200, None) == (response.status_code, response.headers.get("set-cookie"))
    assert f'content="0;url={path}?again=1"' in response.text
    # Opened again (from this site, once): checked and kept, whatever the browser calls it.
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        again = await http.get(f"{path}?again=1", headers=headers)
    assert f"collab_link_{interview.room_id}=" in again.headers.get("set-cookie", "")


async def test_a_link_loaded_as_an_image_by_some_site_is_not_checked(interview: Interview) -> None:
    path = f"/join/{interview.room_id}/not-a-secret"
    async with httpx.AsyncClient(base_url=interview.server.http, timeout=10) as http:
        before = await http.get("/metrics")
        response = await http.get(path, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image"})
        after = await http.get("/metrics")
    assert (400, None) == (response.status_code, response.headers.get("set-cookie"))
    pattern = r'collab_link_redemptions_total\{result="unknown"\} ([0-9.e+]+)'
    assert re.findall(pattern, before.text) == re.findall(pattern, after.text)


async def test_a_hello_with_a_link_to_a_room_that_does_not_exist_makes_no_room(
    live: LiveServer, connect_client: Connect, room: str
) -> None:
    client: Client = await connect_client(live.ws(room))
    refused = await say_hello(client, "anyone", "a-secret-of-a-deleted-room")
    assert ("error", "forbidden") == (refused["type"], refused["code"])
    async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
        assert 404 == (await http.get(f"/api/rooms/{room}")).status_code
