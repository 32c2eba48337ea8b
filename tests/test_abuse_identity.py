"""Attacks on who a client is and what one address may cost, over real sockets against live
servers: taking over another client's id, learning ids from updates, flooding from many
connections of one address, making rooms without end, filling the server with rooms, and a
kill -9 right after a new room's welcome."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, LiveServer

pytestmark = pytest.mark.slow

Connect = Callable[..., Any]
TOKEN = "token-of-ann-0123456789"


async def hello(client: Client, client_id: str, **fields: Any) -> dict[str, Any]:
    await client.send({"type": "hello", "client_id": client_id, "username": "someone", **fields})
    return await client.recv()


async def frames_until_silence(client: Client, quiet: float = 0.3) -> list[str]:
    """Every raw frame the client receives until none comes for ``quiet`` seconds."""
    frames: list[str] = []
    with contextlib.suppress(TimeoutError, ConnectionClosed):
        while True:
            raw = await asyncio.wait_for(client.connection.recv(), quiet)
            frames.append(raw if isinstance(raw, str) else raw.decode())
    return frames


# Client ids are bound to their resume tokens


async def test_a_disconnected_clients_id_cannot_be_taken_over(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server()
    carol: Client = await connect_client(live.ws(room))
    assert "welcome" == (await hello(carol, "tab-carol"))["type"]
    ann: Client = await connect_client(live.ws(room))
    welcome = await hello(ann, "tab-ann", resume_token=TOKEN)
    await ann.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "hi"]]})
    assert "tab-ann" == (await ann.recv_type("update"))["client_id"]
    await ann.close()

    for token in ({}, {"resume_token": "a-guess-of-the-token-0000"}):
        attacker: Client = await connect_client(live.ws(room))
        refusal = await hello(attacker, "tab-ann", **token)
        assert ("error", "client_id_in_use") == (refusal["type"], refusal.get("code"))
        # Had it been let in, a push under a huge seq would make Ann's resend fail.
        await attacker.send({"type": "push", "version": 1, "seq": 10**9, "changes": [2, [0, "!"]]})
        assert "error" == (await attacker.recv())["type"]

    ann = await connect_client(live.ws(room))
    again = await hello(ann, "tab-ann", resume_token=TOKEN, version=1, epoch=welcome["epoch"])
    assert ("welcome", 1) == (again["type"], again["last_seq"])
    await ann.send({"type": "push", "version": 1, "seq": 2, "changes": [2, [0, "!"]]})
    assert (2, "tab-ann") == ((update := await ann.recv_type("update"))["version"], update["client_id"])

    assert [] == [frame for frame in await frames_until_silence(carol) if "tab-ann" in frame]


async def test_a_client_ids_binding_survives_a_restart(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect, tmp_path: Path
) -> None:
    data = str(tmp_path / "kept")
    live = make_server(DATA_DIR=data)
    ann: Client = await connect_client(live.ws(room))
    await hello(ann, "tab-ann", resume_token=TOKEN)
    await ann.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "hi"]]})
    await ann.recv_type("update")
    live.stop()

    again = make_server(DATA_DIR=data)
    attacker: Client = await connect_client(again.ws(room))
    refusal = await hello(attacker, "tab-ann")
    assert ("error", "client_id_in_use") == (refusal["type"], refusal.get("code"))
    ann = await connect_client(again.ws(room))
    assert 1 == (await hello(ann, "tab-ann", resume_token=TOKEN))["last_seq"]


# One address, many connections


async def joined(live: LiveServer, room: str, connect_client: Connect, count: int) -> list[Client]:
    clients: list[Client] = []
    for index in range(count):
        client: Client = await connect_client(live.ws(room))
        await client.send({"type": "join", "username": f"user{index}"})
        clients.append(client)
    return clients


async def sync_replies(clients: list[Client], count: int) -> int:
    """Each client sends ``count`` sync_requests at once; how many got a reply."""
    for client in clients:
        for _ in range(count):
            await client.send({"type": "sync_request"})
    replies = 0
    for client in clients:
        replies += sum(json.loads(frame).get("type") == "code_change" for frame in await frames_until_silence(client))
    return replies


async def test_connections_of_one_address_share_one_rate_and_reconnecting_does_not_refill_it(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    rate, burst = 1.0, 20
    live = make_server(
        RATE_LIMIT_PER_SECOND="1000",
        RATE_LIMIT_BURST="1000",
        RATE_LIMIT_PER_ADDRESS_PER_SECOND=str(rate),
        RATE_LIMIT_PER_ADDRESS_BURST=str(burst),
    )
    started = time.monotonic()
    clients = await joined(live, room, connect_client, 4)
    flooded = await sync_replies(clients, 20)  # 80 frames, each connection within its own limit
    for client in clients:
        await client.close()
    # New connections from the same address: a fresh bucket would answer 16 more.
    again = await sync_replies(await joined(live, room, connect_client, 4), 5)
    elapsed = time.monotonic() - started
    assert flooded + again <= burst + rate * elapsed


async def test_one_address_may_make_thirty_rooms_a_minute_and_still_open_existing_ones(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(ROOMS_PER_ADDRESS_PER_MINUTE="30")  # the default
    for index in range(30):
        client: Client = await connect_client(live.ws(f"{room}-{index}"))
        assert "welcome" == (await hello(client, "maker", resume_token=TOKEN))["type"]
        await client.close()
    client = await connect_client(live.ws(f"{room}-30"))
    refusal = await hello(client, "maker", resume_token=TOKEN)
    assert ("error", "rate_limited") == (refusal["type"], refusal.get("code"))
    assert 0 < refusal["retry_after"] <= 60
    existing: Client = await connect_client(live.ws(f"{room}-0"))
    assert "welcome" == (await hello(existing, "maker", resume_token=TOKEN))["type"]


async def test_a_server_with_every_room_slot_taken_unloads_an_empty_room_or_refuses(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect
) -> None:
    live = make_server(MAX_LOADED_ROOMS="2")
    first: Client = await connect_client(live.ws(f"{room}-1"))
    await hello(first, "one")
    second: Client = await connect_client(live.ws(f"{room}-2"))
    await hello(second, "two")
    third: Client = await connect_client(live.ws(f"{room}-3"))
    refusal = await hello(third, "three")
    assert ("error", "server_busy") == (refusal["type"], refusal.get("code"))
    with pytest.raises(ConnectionClosed) as closed:
        await third.recv()
    assert closed.value.rcvd is not None and 1013 == closed.value.rcvd.code

    await second.close()  # its room is now empty, and committed: it can be unloaded
    with contextlib.suppress(TimeoutError, ConnectionClosed):
        await asyncio.wait_for(second.connection.wait_closed(), 5)
    deadline = time.monotonic() + 10
    while True:
        third = await connect_client(live.ws(f"{room}-3"))
        answer = await hello(third, "three")
        if answer["type"] == "welcome" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # the server has not yet seen the close: ask again
    assert "welcome" == answer["type"]


# A new room is stored before anyone is welcomed


async def test_a_new_room_killed_right_after_its_welcome_comes_back_under_its_epoch(
    make_server: Callable[..., LiveServer], room: str, connect_client: Connect, tmp_path: Path
) -> None:
    data = str(tmp_path / "kept")
    live = make_server(DATA_DIR=data)
    ann: Client = await connect_client(live.ws(room))
    welcome = await hello(ann, "tab-ann", resume_token=TOKEN)
    live.process.kill()  # SIGKILL: nothing more is written
    live.process.wait()

    again = make_server(DATA_DIR=data)
    ann = await connect_client(again.ws(room))
    resumed = await hello(ann, "tab-ann", resume_token=TOKEN, version=0, epoch=welcome["epoch"])
    assert ("welcome", welcome["epoch"], 0, False) == (
        resumed["type"],
        resumed["epoch"],
        resumed["version"],
        "doc" in resumed,
    )
