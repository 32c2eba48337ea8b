"""Several processes serving the same rooms (STORE=postgres, REDIS_URL): real ``python app.py``
processes, clients that type and reconnect as the browser does, and failures injected while they
type. Each test ends with the room converged: every process's text, every client's text and the
replay of the database's rows are one text, with one row per version, every confirmed token once
and no token twice (`tests.cluster.assert_converged`)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
import redis.asyncio

from rooms.streams import stream_key
from tests.cluster import (
    CONVERGE_SECONDS,
    NO_REDIS_SERVER,
    REDIS_SERVER,
    STREAM_PREFIX,
    LiveCluster,
    Typist,
    converge,
    metric,
    private_redis,
    redis_url,
    rotate,
    stored,
    stream_start,
    terminate_connections,
    typists_in,
    until,
)
from tests.cluster import cluster_services as cluster_services  # the fixtures
from tests.cluster import live_cluster as live_cluster
from tests.conftest import LiveServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.live_server]


@pytest.fixture(scope="module", autouse=True)
def services(cluster_services: None) -> None:
    """PostgreSQL and Redis answer, or the module is skipped."""


def new_room(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def assert_nothing_lost(typists: list[Typist]) -> None:
    """Every token typed was confirmed (no snapshot ever dropped local work)."""
    for typist in typists:
        assert [] == typist.offers, typist.describe()
        assert set(typist.typed) == typist.confirmed, typist.describe()


async def total(cluster: LiveCluster, name: str) -> float:
    return sum(await asyncio.gather(*(metric(server, name) for server in cluster.running)))


async def confirmed_at_least(typists: list[Typist], count: int) -> None:
    await until(lambda: sum(len(t.confirmed) for t in typists) >= count, CONVERGE_SECONDS, f"{count} confirmed")


async def test_a_room_opened_at_once_on_three_processes_is_one_room(live_cluster: LiveCluster) -> None:
    """Each process makes the new room (its first write is the room's row); one row wins, and every
    client must be welcomed into that room's epoch, or a later reconnect finds an epoch it does
    not know and resets to a snapshot, dropping its unconfirmed edits."""
    servers = await live_cluster.start(3)
    room = new_room("c0")
    async with typists_in(room, [rotate(servers, i) for i in range(3)], "e", together=True) as typists:
        await asyncio.gather(*(typist.type(5, seed) for seed, typist in enumerate(typists)))
        await converge(live_cluster, room, typists)
    assert_nothing_lost(typists)


async def test_typists_on_three_processes_in_two_rooms_converge(live_cluster: LiveCluster) -> None:
    servers = await live_cluster.start(3)
    first, second = new_room("c1a"), new_room("c1b")
    # Eight typists, four a room, each room on all three processes.
    async with (
        typists_in(first, [rotate(servers, i % 3) for i in range(4)], "a") as a,
        typists_in(second, [rotate(servers, (i + 1) % 3) for i in range(4)], "b") as b,
    ):
        started = time.monotonic()
        await asyncio.gather(*(typist.type(40, seed) for seed, typist in enumerate([*a, *b])))
        typed = time.monotonic() - started
        results = [await converge(live_cluster, first, a), await converge(live_cluster, second, b)]
        conflicts = await total(live_cluster, "collab_commit_conflicts_total")
        rebased = sum(typist.rebased for typist in [*a, *b])
    print(
        f"2 rooms x 4 typists x 40 edits on 3 processes: typed in {typed:.2f} s, versions "
        f"{[r.version for r in results]}, converged {[round(r.seconds, 2) for r in results]} s after typing, "
        f"commit conflicts {conflicts:.0f}, client rebases {rebased}"
    )
    assert_nothing_lost([*a, *b])
    # The edits really crossed: clients rebased over updates made elsewhere meanwhile.
    assert rebased > 20


async def test_pushes_on_the_same_base_version_on_two_processes_make_one_row_per_version(
    live_cluster: LiveCluster,
) -> None:
    left, right = await live_cluster.start(2)
    room = new_room("c2")
    rounds = 30
    async with typists_in(room, [[left], [right]], "s") as (a, b):
        rngs = random.Random(1), random.Random(2)
        for _ in range(rounds):
            await until(
                lambda: a.synced(b.replica.version) and b.synced(a.replica.version),
                CONVERGE_SECONDS,
                f"both at one version: {a.describe()}; {b.describe()}",
                step=0.002,
            )
            # Both pushes leave on the same base version, at the same moment.
            await asyncio.gather(a.type_token(rngs[0]), b.type_token(rngs[1]))
        result = await converge(live_cluster, room, [a, b])
        conflicts = await total(live_cluster, "collab_commit_conflicts_total")
        rows = (await stored(live_cluster.database_url, room)).records
    print(f"{rounds} rounds of two pushes on one base version: {conflicts:.0f} commit conflicts (lost races)")
    assert 2 * rounds == result.version
    # Each round's two versions are the two typists' pushes, one each.
    for index in range(rounds):
        pair = rows[2 * index : 2 * index + 2]
        assert {a.replica.client_id, b.replica.client_id} == {record.client_id for record in pair}
    assert_nothing_lost([a, b])
    # The database decided some of the races: a process committed on a head another had moved.
    assert conflicts >= 1


async def test_kill_9_of_a_process_while_its_clients_type(live_cluster: LiveCluster) -> None:
    servers = await live_cluster.start(3)
    victim = servers[2]
    room = new_room("c3")
    async with typists_in(room, [rotate(servers, i % 3) for i in range(6)], "k") as typists:
        orphans = [typist for typist in typists if typist.servers[0] is victim]
        assert 2 == len(orphans)
        burst = asyncio.gather(*(typist.type(40, seed, pace=0.06) for seed, typist in enumerate(typists)))
        await confirmed_at_least(typists, 30)
        typed_before = {typist.name: set(typist.typed) for typist in orphans}
        killed = time.monotonic()
        live_cluster.kill(victim)
        # Back on another process, with everything typed before the kill confirmed there.
        recovered = await until(
            lambda: all(t.live and t.server is not victim and typed_before[t.name] <= t.confirmed for t in orphans),
            CONVERGE_SECONDS,
            "the killed process's clients recovered",
        )
        await burst
        result = await converge(live_cluster, room, typists)
        after_kill = time.monotonic() - killed
    print(
        f"kill -9 mid-burst: its 2 clients reconnected elsewhere with their edits confirmed {recovered:.2f} s "
        f"after the kill; room converged at version {result.version}, {after_kill:.2f} s after the kill "
        f"({result.seconds:.2f} s after typing ended)"
    )
    assert_nothing_lost(typists)


async def test_a_process_that_cannot_reach_redis_is_kept_in_step_through_the_database(
    live_cluster: LiveCluster,
) -> None:
    """A crash between the database commit and the stream append, for every commit of one process:
    its REDIS_URL names a loopback port nobody listens on."""
    servers = await live_cluster.start(2)
    servers += await live_cluster.start(1, REDIS_URL=redis_url(free_port()))
    cut = servers[2]
    room = new_room("c4")
    async with typists_in(room, [rotate(servers, i % 3) for i in range(6)], "r") as typists:
        await asyncio.gather(*(typist.type(30, seed) for seed, typist in enumerate(typists)))
        burst = await converge(live_cluster, room, typists)
        # Alone now: only the others' head checks can bring the cut process's edit to them, and
        # only its own head check can bring theirs to it.
        await typists[2].type(1, 100)
        theirs = await converge(live_cluster, room, typists)
        await typists[0].type(1, 101)
        ours = await converge(live_cluster, room, typists)
        stream_up = await metric(cut, "collab_stream_connected")
        catch_ups = [await metric(server, "collab_catch_ups_total") for server in servers]
    print(
        f"process without Redis: burst converged {burst.seconds:.2f} s after typing; its lone edit reached "
        f"the others in {theirs.seconds:.2f} s, theirs reached it in {ours.seconds:.2f} s; catch-ups {catch_ups}"
    )
    assert 0 == stream_up
    assert_nothing_lost(typists)
    assert all(count > 0 for count in catch_ups)


@pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS_SERVER)
async def test_redis_flushed_then_restarted_mid_burst(live_cluster: LiveCluster) -> None:
    with private_redis(live_cluster.tmp) as private:
        servers = await live_cluster.start(3, REDIS_URL=private.url)
        room = new_room("c5")
        key = stream_key(STREAM_PREFIX, room)
        async with (
            redis.asyncio.Redis(port=private.port, socket_timeout=5) as client,
            typists_in(room, [rotate(servers, i % 3) for i in range(6)], "f") as typists,
        ):
            burst = asyncio.gather(*(typist.type(45, seed, pace=0.04) for seed, typist in enumerate(typists)))
            await confirmed_at_least(typists, 30)
            assert await client.xlen(key) > 0
            await client.flushdb()
            flushed = (await stored(live_cluster.database_url, room)).head or 0
            await confirmed_at_least(typists, 70)
            private.kill()
            down = (await stored(live_cluster.database_url, room)).head or 0
            # Commits go on without Redis.
            await confirmed_at_least(typists, 110)
            await asyncio.to_thread(private.start)
            restarted = (await stored(live_cluster.database_url, room)).head or 0
            assert restarted > down
            await until(
                lambda: _all_connected(servers), CONVERGE_SECONDS, "every process reconnected to Redis", step=0.1
            )
            await burst
            result = await converge(live_cluster, room, typists)
            # Fan-out through the stream resumed: a new edit reaches the other processes as a
            # stream delivery (their stream lag histograms count it).
            delivered = [await metric(server, "collab_stream_lag_seconds_count") for server in servers]
            author = typists[0]
            await author.type(3, 200)
            final = await converge(live_cluster, room, typists)
            after = [await metric(server, "collab_stream_lag_seconds_count") for server in servers]
            appended = await client.xlen(key)
    print(
        f"Redis flushed at version {flushed}, killed at {down}, started again at {restarted}; converged at "
        f"{result.version} {result.seconds:.2f} s after typing; last edits reached everyone in {final.seconds:.2f} s"
    )
    assert appended > 0
    others = [index for index, server in enumerate(servers) if server is not author.server]
    assert all(after[index] > delivered[index] for index in others), (delivered, after)
    assert_nothing_lost(typists)


async def _all_connected(servers: list[LiveServer]) -> bool:
    return all([await metric(server, "collab_stream_connected") == 1 for server in servers])


def cut_commits(cluster: LiveCluster) -> list[str]:
    """The failed commits (logged) that failed for another reason than a lost race."""
    failures = [event.get("exception", "").strip() for event in cluster.log_events("store_commit_failed")]
    return [failure for failure in failures if "StoreConflict" not in failure.splitlines()[-1:][0]]


async def test_database_connections_terminated_mid_burst(live_cluster: LiveCluster) -> None:
    servers = await live_cluster.start(3)
    room = new_room("c6")
    async with typists_in(room, [rotate(servers, i % 3) for i in range(6)], "d") as typists:
        burst = asyncio.gather(*(typist.type(40, seed, pace=0.03) for seed, typist in enumerate(typists)))
        await confirmed_at_least(typists, 30)
        # Terminated until a commit in progress was cut (bounded: at most 50 times).
        terminated = rounds = 0
        while rounds < 50 and not cut_commits(live_cluster):
            terminated += await terminate_connections(live_cluster.database_url)
            rounds += 1
            await asyncio.sleep(0.02)  # a pace, not a wait: commits go on between two terminations
        failures = cut_commits(live_cluster)
        await burst
        result = await converge(live_cluster, room, typists)
        reconnects = sum(typist.welcomes - 1 for typist in typists)
    print(
        f"pg_terminate_backend x{rounds} ({terminated} connections): {len(failures)} commits cut, "
        f"{reconnects} client reconnects; converged at {result.version} {result.seconds:.2f} s after typing"
    )
    assert failures, "no commit was in progress when connections were terminated"
    # A failed commit resets its room: the clients were told to reconnect, and did.
    assert reconnects > 0
    assert_nothing_lost(typists)


async def test_a_stopped_process_far_behind_the_trim_point_catches_up(live_cluster: LiveCluster) -> None:
    servers = await live_cluster.start(3, STREAM_MAX_LENGTH="10")
    sleeper = servers[2]
    room = new_room("c7")
    async with typists_in(room, [rotate(servers, i % 3) for i in range(6)], "z") as typists:
        idle = [typist for typist in typists if typist.servers[0] is sleeper]
        busy = [typist for typist in typists if typist not in idle]
        await asyncio.gather(*(typist.type(3, seed) for seed, typist in enumerate(typists)))
        before = (await converge(live_cluster, room, typists)).version
        live_cluster.pause(sleeper)
        try:
            # Bursts until 100 versions are past it: edits that land in one batch make one version,
            # so how many bursts that takes depends on the machine's pace. Bounded by a deadline.
            head, burst, deadline = before, 0, time.monotonic() + CONVERGE_SECONDS
            while head - before < 100 and time.monotonic() < deadline:
                await asyncio.gather(*(typist.type(10, 10 * burst + seed) for seed, typist in enumerate(busy)))
                head = (await stored(live_cluster.database_url, room)).head or 0
                burst += 1

            async def busy_at_head() -> bool:
                nonlocal head
                head = (await stored(live_cluster.database_url, room)).head or 0
                return all(t.synced(head) for t in busy)

            await until(
                busy_at_head,
                CONVERGE_SECONDS,
                lambda: f"the others at {head}: " + "; ".join(t.describe() for t in busy),
            )
            oldest = await stream_start(live_cluster.env["REDIS_URL"], room)
        finally:
            live_cluster.resume(sleeper)
        resumed = time.monotonic()
        await until(lambda: all(t.synced(head) for t in idle), CONVERGE_SECONDS, "the stopped process's clients")
        clients_caught_up = time.monotonic() - resumed
        result = await converge(live_cluster, room, typists)
        catch_ups = await metric(sleeper, "collab_catch_ups_total")
    print(
        f"SIGSTOP at version {before}, {head - before} versions committed meanwhile (stream starts at "
        f"{oldest}), SIGCONT: its clients at the head {clients_caught_up:.2f} s later"
    )
    assert head - before >= 100
    # The stream no longer holds what the stopped process missed: it came from the database.
    assert oldest > before + 1
    assert catch_ups > 0
    assert result.version == head
    assert_nothing_lost(typists)


async def test_a_client_resuming_older_than_the_stream_on_another_process(live_cluster: LiveCluster) -> None:
    servers = await live_cluster.start(3, STREAM_MAX_LENGTH="10")
    room = new_room("c8")
    placement = [[servers[0]], [servers[1]], [servers[1]], [servers[2]]]
    async with typists_in(room, placement, "o") as typists:
        away, others = typists[0], typists[1:]
        await asyncio.gather(*(typist.type(2, seed) for seed, typist in enumerate(typists)))
        await converge(live_cluster, room, typists)
        # A push leaves, is committed, and the connection dies before its update is read.
        away.hold()
        rng = random.Random(8)
        sent = await away.type_token(rng)
        inflight = away.replica.inflight
        assert inflight is not None
        key = (away.replica.client_id, inflight.seq)
        await until(lambda: _has_row(live_cluster, room, key), CONVERGE_SECONDS, "the push committed", step=0.01)
        await away.go_offline()
        left_at = away.replica.version
        offline = await away.type_token(rng)  # typed while away: pending
        await asyncio.gather(*(typist.type(40, seed + 20) for seed, typist in enumerate(others)))
        await converge(live_cluster, room, others)
        oldest = await stream_start(live_cluster.env["REDIS_URL"], room)
        # Back, at its old version, on a process it never spoke to.
        away.go_online([servers[2]])
        result = await converge(live_cluster, room, typists)
    print(
        f"client back at version {left_at} (stream starts at {oldest}) on another process, "
        f"room at {result.version}: converged in {result.seconds:.2f} s"
    )
    assert oldest > left_at + 1
    assert 1 == result.text.count(sent)
    assert 1 == result.text.count(offline)
    assert_nothing_lost(typists)


async def _has_row(cluster: LiveCluster, room: str, key: tuple[str, int]) -> bool:
    records = (await stored(cluster.database_url, room)).records
    return key in {(record.client_id, record.seq) for record in records}
