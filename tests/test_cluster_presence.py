"""Several processes serving one room: who is there, cursors, the language and the room's access
state are the same on every process (`rooms.room_remote`, `rooms.shared_presence`, and
`Room.refresh_access`), with real ``python app.py`` processes and raw `/ws` clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from rooms.changes import ChangeSet
from rooms.replica import Replica
from rooms.session import CLOSE_REVOKED
from tests.cluster import LiveCluster
from tests.cluster import cluster_services as cluster_services  # the fixtures
from tests.cluster import live_cluster as live_cluster
from tests.conftest import Client
from tests.test_server_roles import new_interview, say_hello

pytestmark = [pytest.mark.slow, pytest.mark.live_server]

Connect = Callable[..., Any]
PRESENCE_TIMEOUT = 2.0  # PRESENCE_TIMEOUT_SECONDS of the processes


@pytest.fixture(scope="module", autouse=True)
def services(cluster_services: None) -> None:
    """PostgreSQL and Redis answer, or the module is skipped."""


async def seen(client: Client, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The first message of this type with these fields, among those kept and those to come."""
    for index, message in enumerate(client.inbox):
        if message.get("type") == kind and all(message.get(k) == v for k, v in fields.items()):
            return client.inbox.pop(index)
    deadline = time.monotonic() + timeout
    while True:
        message = await client.recv_type(kind, timeout=max(0.01, deadline - time.monotonic()))
        if all(message.get(k) == v for k, v in fields.items()):
            return message


async def test_members_cursors_and_the_language_cross_processes_and_a_dead_ones_members_leave(
    live_cluster: LiveCluster, connect_client: Connect
) -> None:
    first, second = await live_cluster.start(2, PRESENCE_TIMEOUT_SECONDS=str(PRESENCE_TIMEOUT))
    room = f"presence-{uuid.uuid4().hex[:8]}"
    ann: Client = await connect_client(first.ws(room))
    ann_welcome = await say_hello(ann, "ann")
    bob: Client = await connect_client(second.ws(room))
    bob_welcome = await say_hello(bob, "bob")
    ann_id, bob_id = ann_welcome["user_id"], bob_welcome["user_id"]
    # Bob's process may not have heard of Ann when it welcomed him: then he is told at once.
    if ann_id not in {member["user_id"] for member in bob_welcome["members"]}:
        await seen(bob, "member_joined", user_id=ann_id)
    await seen(ann, "member_joined", user_id=bob_id, username="bob")

    await ann.send({"type": "cursor", "anchor": 0, "head": 0, "version": 0})
    await seen(bob, "cursor", user_id=ann_id)
    await ann.send({"type": "language", "language": "rust"})
    await seen(bob, "language", language="rust")

    started = time.monotonic()
    live_cluster.kill(first)  # kill -9: no goodbye from its process
    await seen(bob, "member_left", timeout=PRESENCE_TIMEOUT * 3, user_id=ann_id)
    gone = time.monotonic() - started
    print(f"a dead process's member left the other's room {gone:.2f} s after kill -9")
    assert gone <= PRESENCE_TIMEOUT * 2


async def test_a_lock_and_a_revocation_made_on_one_process_take_effect_on_another(
    live_cluster: LiveCluster, connect_client: Connect
) -> None:
    first, second = await live_cluster.start(2)
    interview = await new_interview(first)
    interviewer: Client = await connect_client(first.ws(interview.room_id))
    assert "welcome" == (await say_hello(interviewer, "boss", interview.tokens["interviewer"]))["type"]
    candidate: Client = await connect_client(second.ws(interview.room_id))
    welcome = await say_hello(candidate, "cand", interview.tokens["candidate"])
    assert ("welcome", "candidate", False) == (welcome["type"], welcome["role"], welcome["locked"])

    await interviewer.send({"type": "lock", "locked": True})
    await seen(candidate, "locked", locked=True)
    await candidate.send({"type": "push", "version": welcome["version"], "seq": 1, "changes": [[0, "x"]]})
    refused = await seen(candidate, "error")
    assert "read_only" == refused["code"]

    started = time.monotonic()
    await interviewer.send({"type": "revoke", "role": "candidate", "renew": True})
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await candidate.recv(timeout=10)
    print(f"a revocation on one process closed a member on another in {time.monotonic() - started:.2f} s")
    assert CLOSE_REVOKED == closed.value.rcvd.code  # type: ignore[union-attr]
    # Its link is dead on every process: a hello with it is refused on the other one too.
    again: Client = await connect_client(second.ws(interview.room_id))
    assert "error" == (await say_hello(again, "cand2", interview.tokens["candidate"]))["type"]


async def test_a_client_that_moves_to_a_process_behind_resumes_where_it_was_and_keeps_its_work(
    live_cluster: LiveCluster, connect_client: Connect
) -> None:
    """Its process committed what it was shown; the other has not heard of it yet (no stream
    from that process, a slow head check): welcomed at an older version, the client would drop
    its unconfirmed work. The process reads the room up to the client's version first."""
    (ahead,) = await live_cluster.start(1, REDIS_URL="redis://127.0.0.1:9/0")  # nothing reaches Redis
    (behind,) = await live_cluster.start(1, CLUSTER_HEAD_CHECK_SECONDS="600")
    room = f"behind-{uuid.uuid4().hex[:8]}"
    watcher: Client = await connect_client(behind.ws(room))  # the room is loaded there, at 0
    await say_hello(watcher, "watcher")
    kim = Replica("kim")
    first: Client = await connect_client(ahead.ws(room))
    await first.send(kim.hello("kim"))
    for message in kim.receive([await first.recv_type("welcome")]).send:
        await first.send(message)
    await first.send(kim.edit(ChangeSet.of_replace(kim.length, 0, 0, "abc")) or {})
    while kim.has_unconfirmed:
        for message in kim.receive([await first.recv()]).send:
            await first.send(message)
    assert (1, "abc") == (kim.version, kim.text)
    await first.close()
    kim.edit(ChangeSet.of_replace(kim.length, 3, 3, "d"))  # typed while offline
    second: Client = await connect_client(behind.ws(room))
    await second.send(kim.hello("kim"))
    welcome = await second.recv_type("welcome")
    assert welcome["version"] >= 1 or welcome.get("doc") == "abc", welcome
    received = kim.receive([welcome])
    assert received.offer is None, received.offer
    for message in received.send:
        await second.send(message)
    deadline = time.monotonic() + 10
    while kim.has_unconfirmed and time.monotonic() < deadline:
        for message in kim.receive([await second.recv(timeout=10)]).send:
            await second.send(message)
    assert ("abcd", False) == (kim.text, kim.has_unconfirmed)
