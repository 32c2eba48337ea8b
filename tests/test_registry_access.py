"""Private rooms in the registry, with in-memory transports: making one, checking links (counted and
limited per address), keeping access and notes across an unload, and never logging a secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from rooms.access import Role
from rooms.errors import Forbidden, RateLimited, StorageUnavailable, UnknownRoom
from rooms.protocol import End, Hello, Lock, Notes, Push, Revoke
from rooms.registry import RoomRegistry
from rooms.session import CLOSE_REVOKED
from rooms.settings import Settings
from rooms.store import Store
from rooms.store.memory import MemoryStore
from rooms.store.sqlite import SqliteStore
from tests.test_registry import Clock, FakeTransport, until

ADDRESS = "203.0.113.5"
OTHER_ADDRESS = "203.0.113.77"


def redemptions(result: str) -> float:
    return REGISTRY.get_sample_value("collab_link_redemptions_total", {"result": result}) or 0.0


def link_hello(client_id: str, token: str | None) -> Hello:
    return Hello(type="hello", client_id=client_id, username=client_id, token=token)


def push(version: int, seq: int, changes: list[Any]) -> Push:
    return Push(type="push", version=version, seq=seq, changes=changes)


@pytest.fixture
async def make_registry(tmp_path: Path) -> AsyncIterator[Callable[..., RoomRegistry]]:
    """Registries with an injected clock, stopped after the test."""
    made: list[RoomRegistry] = []

    def make(store: Store | None = None, clock: Clock | None = None, **overrides: Any) -> RoomRegistry:
        registry = RoomRegistry(Settings(**overrides), clock=clock or Clock(), store=store)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        if registry.accepting:
            await registry.stop()


class GatedStore(MemoryStore):
    """A store whose access reads wait for the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def access(self, room_id: str) -> str | None:
        self.waiting += 1
        await self.gate.wait()
        return await super().access(room_id)


async def private(registry: RoomRegistry, room_id: str = "r") -> dict[Role, str]:
    """A new private room; the secret of each role's link."""
    return await registry.create_private(room_id)


async def test_create_private_gives_a_secret_for_every_role(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    tokens = await private(registry)
    assert {role: role for role in Role} == {role: await registry.role_for("r", tokens[role]) for role in Role}
    assert 3 == len(set(tokens.values()))


async def test_a_link_is_checked_against_the_store_when_the_room_is_not_loaded(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    registry = make_registry()
    tokens = await private(registry)
    await registry.settled()
    registry.loaded.evict("r")
    assert "r" not in registry.rooms
    assert Role.OBSERVER is await registry.role_for("r", tokens[Role.OBSERVER])
    assert "r" not in registry.rooms  # checking a link loads nothing


async def test_a_room_id_taken_already_cannot_be_made_private(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    await registry.join_versioned("open", FakeTransport(), link_hello("c", None))
    await private(registry, "secret-room")
    for room_id in ("open", "secret-room"):
        with pytest.raises(Forbidden):
            await registry.create_private(room_id)
    assert not registry.rooms["open"].access.private


async def test_a_stored_room_not_in_memory_cannot_be_made_private(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    session = await registry.join_versioned("open", FakeTransport(), link_hello("c", None))
    registry.handle(session, push(0, 1, [[0, "kept"]]))
    registry.leave(session)
    await registry.settled()
    registry.loaded.evict("open")
    with pytest.raises(Forbidden):
        await registry.create_private("open")
    stored = await registry.store.load("open", 10)
    assert stored is not None
    assert ("", "kept") == (stored.access, stored.text())


async def test_an_unknown_secret_is_forbidden_and_counted(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    await private(registry)
    before = redemptions("unknown")
    with pytest.raises(Forbidden) as refused:
        await registry.role_for("r", "a" * 43)
    assert ("forbidden", before + 1) == (refused.value.code, redemptions("unknown"))


async def test_a_secret_for_a_room_that_does_not_exist_is_counted_unknown(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    registry = make_registry()
    before = redemptions("unknown")
    with pytest.raises(UnknownRoom):
        await registry.role_for("nowhere", "a" * 43)
    assert (before + 1, None) == (redemptions("unknown"), await registry.store.info("nowhere"))


async def test_a_revoked_secret_is_forbidden_and_counted_revoked(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    tokens = await private(registry)
    interviewer = await registry.join_versioned("r", FakeTransport(), link_hello("ivy", tokens[Role.INTERVIEWER]))
    registry.handle(interviewer, Revoke(type="revoke", role="candidate", renew=True))
    before = redemptions("revoked"), redemptions("ok")
    with pytest.raises(Forbidden, match="revoked"):
        await registry.role_for("r", tokens[Role.CANDIDATE])
    renewed = registry.rooms["r"].secret_of(Role.CANDIDATE)
    assert Role.CANDIDATE is await registry.role_for("r", renewed)
    assert (before[0] + 1, before[1] + 1) == (redemptions("revoked"), redemptions("ok"))


async def test_a_hello_with_a_token_is_admitted_with_its_role_and_counted(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    registry = make_registry()
    tokens = await private(registry)
    before = redemptions("ok"), redemptions("unknown")
    transport = FakeTransport()
    session = await registry.join_versioned("r", transport, link_hello("cam", tokens[Role.CANDIDATE]))
    with pytest.raises(Forbidden):
        await registry.join_versioned("r", FakeTransport(), link_hello("eve", "b" * 43))
    with pytest.raises(Forbidden):
        await registry.join_versioned("r", FakeTransport(), link_hello("nobody", None))
    await registry.settled()
    assert (Role.CANDIDATE, "candidate") == (session.role, transport.of_type("welcome")[0]["role"])
    assert (before[0] + 1, before[1] + 1) == (redemptions("ok"), redemptions("unknown"))
    assert [session] == list(registry.rooms["r"].sessions.values())


async def test_too_many_bad_links_from_one_address_refuse_even_a_good_one_for_a_minute(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    clock = Clock()
    registry = make_registry(clock=clock, link_failures_per_address_per_minute=3)
    tokens = await private(registry)
    for attempt in range(3):
        with pytest.raises(Forbidden):
            await registry.role_for("r", f"guess-{attempt}", ADDRESS)
    before = redemptions("rate_limited")
    with pytest.raises(RateLimited) as limited:
        await registry.role_for("r", tokens[Role.CANDIDATE], ADDRESS)
    with pytest.raises(RateLimited):
        await registry.join_versioned("r", FakeTransport(), link_hello("cam", tokens[Role.CANDIDATE]), address=ADDRESS)
    assert ("rate_limited", before + 2) == (limited.value.code, redemptions("rate_limited"))
    assert 0 < limited.value.retry_after <= 60
    # Another address is not held to this one's failures.
    assert Role.CANDIDATE is await registry.role_for("r", tokens[Role.CANDIDATE], OTHER_ADDRESS)
    clock.now += 59
    with pytest.raises(RateLimited):
        await registry.role_for("r", tokens[Role.CANDIDATE], ADDRESS)
    clock.now += 1.5
    assert Role.CANDIDATE is await registry.role_for("r", tokens[Role.CANDIDATE], ADDRESS)


async def test_links_presented_at_once_cannot_all_pass_the_check_before_one_failed(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    store = GatedStore()
    registry = make_registry(store=store, link_failures_per_address_per_minute=5)
    await private(registry)
    registry.loaded.evict("r", force=True)  # checked against the store, with a wait in between
    guesses = [asyncio.ensure_future(registry.role_for("r", f"guess-{n}", ADDRESS)) for n in range(30)]
    await until(lambda: store.waiting == 5)
    store.gate.set()
    outcomes = await asyncio.gather(*guesses, return_exceptions=True)
    assert (5, 25) == (
        sum(type(outcome) is Forbidden for outcome in outcomes),
        sum(isinstance(outcome, RateLimited) for outcome in outcomes),
    )


async def test_a_link_never_makes_a_room(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    with pytest.raises(UnknownRoom):
        await registry.role_for("gone", "a-secret-of-a-purged-room", ADDRESS, create=True)
    assert (None, None) == (registry.rooms.get("gone"), await registry.store.info("gone"))


async def test_a_good_link_is_not_a_failure(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry(link_failures_per_address_per_minute=2)
    tokens = await private(registry)
    for _ in range(5):
        assert Role.OBSERVER is await registry.role_for("r", tokens[Role.OBSERVER], ADDRESS)


async def test_without_open_rooms_a_join_to_an_unknown_id_is_forbidden_and_makes_no_room(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    registry = make_registry(open_rooms=False)
    with pytest.raises(Forbidden):
        await registry.join_versioned("unknown", FakeTransport(), link_hello("c", None))
    with pytest.raises(Forbidden):
        await registry.join_full_text("unknown", FakeTransport(), "sam")
    with pytest.raises(UnknownRoom):
        await registry.role_for("unknown", None)
    await registry.settled()
    assert (None, {}) == (await registry.store.info("unknown"), registry.rooms)


async def test_without_open_rooms_private_rooms_are_still_made(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry(open_rooms=False)
    tokens = await private(registry)
    session = await registry.join_versioned("r", FakeTransport(), link_hello("ivy", tokens[Role.INTERVIEWER]))
    assert Role.INTERVIEWER is session.role


async def test_revoke_closes_the_candidates_connection_with_4003(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    tokens = await private(registry)
    interviewer = await registry.join_versioned("r", FakeTransport(), link_hello("ivy", tokens[Role.INTERVIEWER]))
    candidate = FakeTransport()
    await registry.join_versioned("r", candidate, link_hello("cam", tokens[Role.CANDIDATE]))
    registry.handle(interviewer, Revoke(type="revoke", role="candidate"))
    await registry.settled()
    assert (CLOSE_REVOKED, "link revoked") == candidate.closed


# Unloaded and loaded again


StoreOpener = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """The store of each backend, opened again after a registry stopped (and closed it): the
    same memory store, or the same SQLite file."""
    memory = MemoryStore()

    async def open_store() -> Store:
        if request.param == "memory":
            return memory
        sqlite = SqliteStore(tmp_path / "rooms.sqlite3", synchronous="normal")
        await sqlite.open()
        return sqlite

    return open_store


async def interviewed(registry: RoomRegistry, tokens: dict[Role, str]) -> None:
    """In room "r", the candidate typed, the interviewer wrote notes and locked the room; both
    left, and everything is committed."""
    interviewer = await registry.join_versioned("r", FakeTransport(), link_hello("ivy", tokens[Role.INTERVIEWER]))
    candidate = await registry.join_versioned("r", FakeTransport(), link_hello("cam", tokens[Role.CANDIDATE]))
    registry.handle(candidate, push(0, 1, [[0, "def solve(): ..."]]))
    registry.handle(interviewer, Notes(type="notes", text="solid \x00 start"))
    registry.handle(interviewer, Lock(type="lock", locked=True))
    await registry.settled()
    registry.leave(interviewer)
    registry.leave(candidate)
    await registry.settled()


async def rejoined(registry: RoomRegistry, tokens: dict[Role, str]) -> tuple[FakeTransport, FakeTransport]:
    """An interviewer and a candidate back in room "r"; the candidate tried to type."""
    interviewer, candidate = FakeTransport(), FakeTransport()
    await registry.join_versioned("r", interviewer, link_hello("ivy-2", tokens[Role.INTERVIEWER]))
    session = await registry.join_versioned("r", candidate, link_hello("cam-2", tokens[Role.CANDIDATE]))
    registry.receive(session, push(1, 1, [16, [0, "!"]]))  # answered, not raised
    await registry.settled()
    return interviewer, candidate


async def test_a_private_room_keeps_its_access_and_notes_when_unloaded_and_loaded_again(
    make_registry: Callable[..., RoomRegistry], open_store: StoreOpener
) -> None:
    registry = make_registry(store=await open_store())
    tokens = await private(registry)
    await interviewed(registry, tokens)
    registry.loaded.evict("r")
    assert "r" not in registry.rooms
    interviewer, candidate = await rejoined(registry, tokens)
    welcome, notes, *_ = interviewer.sent
    assert ("interviewer", True, False, "def solve(): ...") == (
        welcome["role"],
        welcome["locked"],
        welcome["ended"],
        welcome["doc"],
    )
    assert ("notes", "solid \x00 start") == (notes["type"], notes["text"])
    assert ["read_only"] == [m["code"] for m in candidate.of_type("error")]
    assert "def solve(): ..." == registry.rooms["r"].document.text


async def test_a_private_room_and_its_links_survive_a_restart(
    make_registry: Callable[..., RoomRegistry], open_store: StoreOpener
) -> None:
    registry = make_registry(store=await open_store())
    tokens = await private(registry)
    await interviewed(registry, tokens)
    interviewer = await registry.join_versioned("r", FakeTransport(), link_hello("ivy-3", tokens[Role.INTERVIEWER]))
    registry.handle(interviewer, End(type="end"))
    await registry.stop()
    again = make_registry(store=await open_store())
    with pytest.raises(Forbidden, match="revoked"):
        await again.role_for("r", tokens[Role.CANDIDATE])
    transport = FakeTransport()
    await again.join_versioned("r", transport, link_hello("obi", tokens[Role.OBSERVER]))
    await again.settled()
    welcome = transport.sent[0]
    assert ("observer", True, True, "def solve(): ...") == (
        welcome["role"],
        welcome["locked"],
        welcome["ended"],
        welcome["doc"],
    )


async def test_after_a_restart_no_link_is_shown_again_and_every_handed_out_one_still_admits(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    store = MemoryStore()
    registry = make_registry(store=store)
    tokens = await private(registry)
    await registry.stop()
    again = make_registry(store=store)
    transport = FakeTransport()
    await again.join_versioned("r", transport, link_hello("ivy", tokens[Role.INTERVIEWER]))
    await again.settled()
    # Only hashes are stored: the secrets cannot be shown again (the interviewer renews them) ...
    assert {"candidate": None, "observer": None} == transport.sent[0]["links"]
    # ... and every link handed out before still admits.
    assert Role.CANDIDATE is await again.role_for("r", tokens[Role.CANDIDATE])


# Logs


async def test_no_secret_reaches_a_log_line(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    with capture_logs() as logs:
        tokens = await private(registry)
        secrets = set(tokens.values())
        interviewer = await registry.join_versioned("r", FakeTransport(), link_hello("ivy", tokens[Role.INTERVIEWER]))
        for role in Role:
            await registry.role_for("r", tokens[role], ADDRESS)
        await registry.join_versioned("r", FakeTransport(), link_hello("cam", tokens[Role.CANDIDATE]))
        registry.handle(interviewer, Revoke(type="revoke", role="candidate", renew=True))
        registry.handle(interviewer, Revoke(type="revoke", role="observer", renew=True))
        room = registry.rooms["r"]
        secrets |= {room.secret_of(role) or "" for role in Role}
        with pytest.raises(Forbidden):
            await registry.role_for("r", tokens[Role.CANDIDATE], ADDRESS)
        with pytest.raises(Forbidden):
            await registry.join_versioned("r", FakeTransport(), link_hello("old", tokens[Role.OBSERVER]))
        await registry.settled()
    lines = [repr(entry) for entry in logs]
    assert {"private_room_created", "link_revoked"} <= {entry["event"] for entry in logs}
    assert [] == [line for line in lines for secret in secrets - {""} if secret in line]


async def test_a_refused_link_does_not_keep_its_room_loaded(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry(room_grace_seconds=0)
    await private(registry)
    with pytest.raises(Forbidden):
        await registry.join_versioned("r", FakeTransport(), link_hello("eve", "b" * 43))
    await until(lambda: "r" not in registry.rooms)  # evicted once the current step is done


async def test_a_hello_with_a_link_never_makes_a_room(make_registry: Callable[..., RoomRegistry]) -> None:
    registry = make_registry()
    before = redemptions("unknown")
    with pytest.raises(UnknownRoom):
        await registry.join_versioned("gone", FakeTransport(), link_hello("cam", "a-secret"), address=ADDRESS)
    assert (None, None, before + 1) == (
        registry.rooms.get("gone"),
        await registry.store.info("gone"),
        redemptions("unknown"),
    )


class FailingStore(MemoryStore):
    """A store whose commits fail once ``failing`` is set."""

    failing = False

    async def commit(self, writes: Any) -> None:
        if self.failing:
            raise OSError("disk gone")
        await super().commit(writes)


async def test_a_private_room_whose_first_commit_fails_hands_out_no_link(
    make_registry: Callable[..., RoomRegistry],
) -> None:
    store = FailingStore()
    store.failing = True
    registry = make_registry(store=store)
    with pytest.raises(StorageUnavailable):
        await registry.create_private("r")
    assert None is await store.access("r")


async def test_durable_says_whether_a_rooms_changes_were_stored(make_registry: Callable[..., RoomRegistry]) -> None:
    store = FailingStore()
    registry = make_registry(store=store)
    tokens = await private(registry)
    interviewer = await registry.join_versioned("r", FakeTransport(), link_hello("ivy", tokens[Role.INTERVIEWER]))
    registry.handle(interviewer, Notes(type="notes", text="kept"))
    assert await registry.durable("r")
    store.failing = True
    registry.handle(interviewer, Notes(type="notes", text="lost"))
    assert not await registry.durable("r")  # the commit failed: the room was reset
    assert not await registry.durable("never-loaded")
