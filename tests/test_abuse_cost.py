"""What one message may cost a live server: pushes too complex, too far behind, or empty, and
integers beyond what a browser can hold. Each test performs the attack over a real socket."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rooms.changes import ChangeSet
from rooms.replica import Replica
from tests.conftest import Client, LiveServer, free_port, start_server

pytestmark = pytest.mark.slow

TICKS = os.sysconf("SC_CLK_TCK")
TOKEN = "a-resume-token-of-this-tab"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def join(connect_client: Any, server: LiveServer, room: str, client_id: str, **hello: Any) -> Client:
    client: Client = await connect_client(server.ws(room))
    await client.send({"type": "hello", "client_id": client_id, "username": client_id, **hello})
    await client.recv_type("welcome")
    return client


async def type_versions(writer: Client, count: int) -> None:
    for version in range(count):
        changes: list[Any] = [version, [0, "x"]] if version else [[0, "x"]]
        await writer.send({"type": "push", "version": version, "seq": version + 1, "changes": changes})
        assert version + 1 == (await writer.recv_type("update"))["version"]


async def test_a_push_of_fifty_thousand_parts_is_refused_cheaply(
    server: LiveServer, room: str, connect_client: Any
) -> None:
    writer = await join(connect_client, server, room, "writer")
    await type_versions(writer, 50)
    attacker = await join(connect_client, server, room, "attacker")
    frame = json.dumps({"type": "push", "version": 0, "seq": 1, "changes": [[0, "y"]] * 50_000})
    before = cpu_seconds(server.process.pid)
    await attacker.send(frame)
    error = await attacker.recv_type("error")
    spent = cpu_seconds(server.process.pid) - before
    assert "too_complex" == error["code"]
    # Rebased over 50 versions, this push cost 2.7 s of the server's only event loop.
    assert spent < 0.3
    # The room goes on.
    await writer.send({"type": "push", "version": 50, "seq": 51, "changes": [50, [0, "!"]]})
    assert 51 == (await writer.recv_type("update"))["version"]


async def test_a_push_too_far_behind_gets_resync_and_lands_after_hello(
    make_server: Any, room: str, connect_client: Any
) -> None:
    server = make_server(MAX_REBASE_VERSIONS="20")
    writer = await join(connect_client, server, room, "writer")
    await type_versions(writer, 30)
    late: Client = await connect_client(server.ws(room))
    replica = Replica("late")
    await late.send(replica.hello("late", resume=False))
    replica.welcome(await late.recv_type("welcome"))
    # Everything the replica missed while it was offline: it edits at version 0 of its own text.
    replica.version, replica.text = 0, ""
    push = replica.edit(ChangeSet.of_replace(0, 0, 0, "mine"))
    assert push is not None
    await late.send(push)
    assert "resync" == (await late.recv_type("error"))["code"]
    await late.close()

    late = await connect_client(server.ws(room))
    await late.send(replica.resync("late"))
    welcome = await late.recv_type("welcome")
    assert "doc" not in welcome
    replica.welcome(welcome)
    for _ in range(30):
        assert replica.update(await late.recv_type("update")) is None
    # Sent once the catch-up is applied: rebased by the client, at the current version.
    resend = replica.resend()
    assert resend is not None and 30 == resend["version"]
    await late.send(resend)
    mine = await late.recv_type("update")
    assert ("late", 1, 31) == (mine.get("client_id"), mine["seq"], mine["version"])
    replica.update(mine)
    assert not replica.has_unconfirmed
    assert "x" * 30 + "mine" == replica.text  # the earlier-committed insert first


async def test_a_push_that_changes_nothing_gets_ack_and_makes_no_version(
    server: LiveServer, room: str, connect_client: Any
) -> None:
    author = await join(connect_client, server, room, "author")
    await type_versions(author, 1)
    await author.send({"type": "push", "version": 1, "seq": 2, "changes": [1]})
    assert {"type": "ack", "seq": 2, "version": 1} == await author.recv_type("ack")
    await author.send({"type": "push", "version": 1, "seq": 3, "changes": [1, [0, "!"]]})
    assert (2, 3) == ((update := await author.recv_type("update"))["version"], update["seq"])
    newcomer: Client = await connect_client(server.ws(room))
    await newcomer.send({"type": "hello", "client_id": "newcomer", "version": 0})
    welcome = await newcomer.recv_type("welcome")
    assert 0 == welcome["version"]
    assert [1, 2] == [(await newcomer.recv_type("update"))["version"] for _ in range(2)]


async def test_a_seq_beyond_the_safe_range_is_refused_and_the_room_survives_a_restart(
    tmp_path: Path, room: str, connect_client: Any
) -> None:
    port = free_port()
    server = start_server(tmp_path, PORT=str(port))
    try:
        client = await join(connect_client, server, room, "tab", resume_token=TOKEN)
        await client.send({"type": "push", "version": 0, "seq": 2**63, "changes": [[0, "x"]]})
        assert "invalid_message" == (await client.recv_type("error"))["code"]
        await client.send({"type": "push", "version": 0, "seq": 1, "changes": [[0, "ok"]]})
        assert 1 == (await client.recv_type("update"))["version"]
        await client.close()
    finally:
        server.stop()
    server = start_server(tmp_path, PORT=str(port))
    try:
        again: Client = await connect_client(server.ws(room))
        await again.send({"type": "hello", "client_id": "tab", "version": 0, "resume_token": TOKEN})
        welcome = await again.recv_type("welcome")
        assert (0, 1) == (welcome["version"], welcome.get("last_seq"))
        assert [[0, "ok"]] == (await again.recv_type("update"))["changes"]
    finally:
        server.stop()
