"""The rooms API (``/api/rooms/...``): live servers typed into by real WebSocket clients, and the
API's failure answers in-process with a store that fails."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from api import rooms as rooms_api
from rooms.changes import ChangeSet
from rooms.registry import RoomRegistry
from rooms.settings import Settings
from rooms.store import Record, RoomWrite, StoreError
from rooms.store.memory import MemoryStore
from tests.conftest import LiveServer
from tests.test_server_versioned import VersionedClient

MakeServer = Callable[..., LiveServer]
UNKNOWN = "no-such-room-0123456789"


async def get(server: LiveServer, path: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        return await http.get(path, params=params)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    """The status, code and message of an error answer, after checking its shape."""
    body = response.json()
    assert {"error", "message"} == set(body), body
    assert "no-store" == response.headers["cache-control"]
    return response.status_code, body["error"], body["message"]


class Observer(VersionedClient):
    """A member that never types: its replica's text after each update is the room's text at
    that update's version, as every member saw it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "observer", "observer")
        self.texts: dict[int, str] = {}
        apply = self.replica.update

        def update(message: dict[str, Any]) -> dict[str, Any] | None:
            out = apply(message)
            self.texts[self.replica.version] = self.replica.text
            return out

        self.replica.update = update

    async def open(self, *, resume: bool = False) -> None:
        await super().open(resume=resume)
        self.texts[self.replica.version] = self.replica.text


async def type_together(typists: Sequence[VersionedClient], observer: Observer, edits: int) -> int:
    """Every typist inserts ``edits`` tokens at the same time as the others; returns the version
    the room settles at.

    Each typist waits for its edit's confirmation before the next one, so that every edit is
    one version (edits typed while one is in flight would be sent as one), while the typists'
    edits still cross each other.
    """

    async def type_into(client: VersionedClient, index: int) -> None:
        for step in range(edits):
            text = client.replica.text
            await client.insert((step * 7 + index) % (len(text) + 1), f"<{client.username}{step}{'é😀漢'[step % 3]}>")
            await client.settled(0)

    await asyncio.gather(*(type_into(client, index) for index, client in enumerate(typists)))
    version = len(typists) * edits
    await observer.settled(version)
    assert version == max(client.replica.version for client in typists)
    return version


async def language_becomes(server: LiveServer, room: str, language: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while language != (await get(server, f"/api/rooms/{room}")).json()["language"]:
        assert time.monotonic() < deadline, f"the language never became {language}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def typed_room(server: LiveServer, room: str) -> AsyncIterator[tuple[Observer, list[VersionedClient], int]]:
    """A room two people typed into at once, watched by an observer; all still connected."""
    observer = Observer(server.ws(room))
    await observer.open()
    typists = [VersionedClient(server.ws(room), f"tab-{name}", name) for name in ("Ann", "Bob")]
    for client in typists:
        await client.open()
    version = await type_together(typists, observer, edits=12)
    yield observer, typists, version
    for client in [observer, *typists]:
        await client.close()


async def all_history(server: LiveServer, room: str, limit: int) -> list[dict[str, Any]]:
    """Every update, page after page, following ``next``."""
    updates: list[dict[str, Any]] = []
    since: int | None = 0
    while since is not None:
        page = (await get(server, f"/api/rooms/{room}/history", since=since, limit=limit)).json()
        assert len(page["updates"]) <= limit
        updates.extend(page["updates"])
        since = page["next"]
    return updates


# Reading a room


@pytest.mark.slow
async def test_room_info_shows_the_committed_text_version_language_and_members(
    server: LiveServer, room: str, typed_room: tuple[Observer, list[VersionedClient], int]
) -> None:
    observer, _, version = typed_room
    response = await get(server, f"/api/rooms/{room}")
    assert 200 == response.status_code
    assert "no-store" == response.headers["cache-control"]
    body = response.json()
    expected = {
        "room_id": room,
        "epoch": observer.replica.epoch,
        "version": version,
        "oldest": 0,
        "language": "python",
        "members": 3,
        "text": observer.replica.text,
    }
    assert expected == body


@pytest.mark.slow
async def test_the_text_at_every_version_is_what_members_saw_at_that_version(
    server: LiveServer, room: str, typed_room: tuple[Observer, list[VersionedClient], int]
) -> None:
    observer, typists, version = typed_room
    assert sum(client.rebased for client in typists) > 0  # the edits really were concurrent
    assert list(range(version + 1)) == sorted(observer.texts)
    for number, text in observer.texts.items():
        response = await get(server, f"/api/rooms/{room}/versions/{number}")
        assert 200 == response.status_code
        assert {"room_id": room, "epoch": observer.replica.epoch, "version": number, "text": text} == response.json()


@pytest.mark.slow
async def test_history_pages_replay_every_update_with_its_author(
    server: LiveServer, room: str, typed_room: tuple[Observer, list[VersionedClient], int]
) -> None:
    observer, typists, version = typed_room
    updates = await all_history(server, room, limit=5)
    assert list(range(1, version + 1)) == [update["version"] for update in updates]
    authors = {client.user_id: (client.username, client.replica.client_id) for client in typists}
    text = ""
    for update in updates:
        assert {"version", "user_id", "author", "color", "time", "unix_time", "changes"} == set(update)
        name, client_id = authors[update["user_id"]]
        assert name == update["author"]
        assert client_id not in json.dumps(update)  # a resume credential is never shown
        assert update["color"].startswith("#") and 7 == len(update["color"])
        assert abs(time.time() - update["unix_time"]) < 120
        assert update["unix_time"] == pytest.approx(datetime.fromisoformat(update["time"]).timestamp(), abs=0.001)
        assert update["time"].endswith("Z")
        text = ChangeSet.from_json(update["changes"]).apply(text)
        assert observer.texts[update["version"]] == text
    # Everyone typed: both authors are in the history.
    assert {"Ann", "Bob"} == {update["author"] for update in updates}


@pytest.mark.slow
async def test_a_history_page_says_where_the_next_one_starts(
    server: LiveServer, room: str, typed_room: tuple[Observer, list[VersionedClient], int]
) -> None:
    observer, _, version = typed_room
    page = (await get(server, f"/api/rooms/{room}/history", since=3, limit=4)).json()
    assert [4, 5, 6, 7] == [update["version"] for update in page["updates"]]
    assert (7, version, 0, room, observer.replica.epoch) == (
        page["next"],
        page["head"],
        page["oldest"],
        page["room_id"],
        page["epoch"],
    )
    last = (await get(server, f"/api/rooms/{room}/history", since=version - 2)).json()
    assert ([version - 1, version], None) == ([update["version"] for update in last["updates"]], last["next"])
    empty = (await get(server, f"/api/rooms/{room}/history", since=version)).json()
    assert ([], None) == (empty["updates"], empty["next"])
    assert version == len((await get(server, f"/api/rooms/{room}/history")).json()["updates"])  # default: 100


@pytest.mark.slow
async def test_a_room_that_has_committed_nothing_is_empty_at_version_zero(server: LiveServer, room: str) -> None:
    client = VersionedClient(server.ws(room), "tab-1", "Ann")
    await client.open()
    try:
        info = (await get(server, f"/api/rooms/{room}")).json()
        assert (0, 0, "", "python", 1) == (
            info["version"],
            info["oldest"],
            info["text"],
            info["language"],
            info["members"],
        )
        assert client.replica.epoch == info["epoch"]
        assert "" == (await get(server, f"/api/rooms/{room}/versions/0")).json()["text"]
        history = (await get(server, f"/api/rooms/{room}/history")).json()
        assert ([], 0, None) == (history["updates"], history["head"], history["next"])
        refused = await get(server, f"/api/rooms/{room}/versions/1")
        assert (400, "out_of_range", "version 1 is not kept: the kept versions are 0 to 0") == error_of(refused)
    finally:
        await client.close()


@pytest.mark.slow
async def test_a_language_change_shows_at_once(server: LiveServer, room: str) -> None:
    client = VersionedClient(server.ws(room), "tab-1", "Ann")
    await client.open()
    try:
        assert client.connection is not None
        await client.connection.send(json.dumps({"type": "language", "language": "rust"}))
        await language_becomes(server, room, "rust")
    finally:
        await client.close()


@pytest.mark.slow
async def test_history_and_texts_survive_a_restart(make_server: MakeServer, tmp_path: Path, room: str) -> None:
    data_dir = str(tmp_path / "kept-data")
    first = make_server(DATA_DIR=data_dir)
    observer = Observer(first.ws(room))
    await observer.open()
    typists = [VersionedClient(first.ws(room), f"tab-{name}", name) for name in ("Ann", "Bob")]
    for client in typists:
        await client.open()
    version = await type_together(typists, observer, edits=8)
    assert observer.connection is not None
    await observer.connection.send(json.dumps({"type": "language", "language": "go"}))
    await language_becomes(first, room, "go")
    before_info = (await get(first, f"/api/rooms/{room}")).json()
    before_history = await all_history(first, room, limit=3)
    before_texts = {n: (await get(first, f"/api/rooms/{room}/versions/{n}")).json() for n in range(version + 1)}
    for client in [observer, *typists]:
        await client.close()
    await asyncio.to_thread(first.stop)  # SIGTERM: the graceful stop

    second = await asyncio.to_thread(make_server, DATA_DIR=data_dir)
    after_info = (await get(second, f"/api/rooms/{room}")).json()
    assert 3 == before_info.pop("members") and 0 == after_info.pop("members")  # not loaded again
    assert before_info == after_info
    assert ("go", version) == (after_info["language"], after_info["version"])
    assert observer.replica.text == after_info["text"]
    assert before_history == await all_history(second, room, limit=3)
    assert before_texts == {
        n: (await get(second, f"/api/rooms/{room}/versions/{n}")).json() for n in range(version + 1)
    }
    assert observer.texts == {n: body["text"] for n, body in before_texts.items()}


@pytest.mark.slow
async def test_pruned_versions_are_refused_and_history_starts_at_the_oldest_kept(
    make_server: MakeServer, room: str
) -> None:
    live = make_server(HISTORY_LIMIT="5", HISTORY_KEEP_VERSIONS="5", SNAPSHOT_EVERY="5")
    observer = Observer(live.ws(room))
    await observer.open()
    typist = VersionedClient(live.ws(room), "tab-ann", "Ann")
    await typist.open()
    try:
        version = await type_together([typist], observer, edits=24)
        info = (await get(live, f"/api/rooms/{room}")).json()
        oldest = info["oldest"]
        assert 0 < oldest <= version - 5
        assert observer.texts[oldest] == (await get(live, f"/api/rooms/{room}/versions/{oldest}")).json()["text"]
        refused = await get(live, f"/api/rooms/{room}/versions/{oldest - 1}")
        message = f"version {oldest - 1} is not kept: the kept versions are {oldest} to {version}"
        assert (400, "out_of_range", message) == error_of(refused)
        updates = await all_history(live, room, limit=2)
        assert list(range(oldest + 1, version + 1)) == [update["version"] for update in updates]
    finally:
        await observer.close()
        await typist.close()


# Errors


@pytest.mark.slow
@pytest.mark.parametrize("path", ["", "/versions/0", "/history"])
async def test_an_unknown_room_is_not_found(server: LiveServer, path: str) -> None:
    response = await get(server, f"/api/rooms/{UNKNOWN}{path}")
    assert (404, "not_found", f"room '{UNKNOWN}' does not exist") == error_of(response)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["", "/versions/0", "/history"])
@pytest.mark.parametrize("room_id", ["x" * 65, "a.b", "caf%C3%A9", "a%20b"])
async def test_an_invalid_room_id_is_refused(server: LiveServer, room_id: str, path: str) -> None:
    response = await get(server, f"/api/rooms/{room_id}{path}")
    assert (400, "invalid_room_id", "room id must be 1 to 64 letters, digits, '-' or '_'") == error_of(response)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/versions/abc", {}, (400, "invalid_parameter", "version must be a whole number, got 'abc'")),
        ("/versions/1.5", {}, (400, "invalid_parameter", "version must be a whole number, got '1.5'")),
        ("/versions/+1", {}, (400, "invalid_parameter", "version must be a whole number, got '+1'")),
        ("/versions/-1", {}, (400, "invalid_parameter", "version must be 0 or more, got -1")),
        # More digits than int() converts.
        (
            "/versions/" + "9" * 5000,
            {},
            (400, "invalid_parameter", "version must be a whole number, got '" + "9" * 40 + "'"),
        ),
        ("/history", {"since": "-3"}, (400, "invalid_parameter", "since must be 0 or more, got -3")),
        ("/history", {"since": "x"}, (400, "invalid_parameter", "since must be a whole number, got 'x'")),
        ("/history", {"limit": "0"}, (400, "invalid_parameter", "limit must be 1 to 1000, got 0")),
        ("/history", {"limit": "1001"}, (400, "invalid_parameter", "limit must be 1 to 1000, got 1001")),
        ("/history", {"limit": "ten"}, (400, "invalid_parameter", "limit must be a whole number, got 'ten'")),
        ("/history", {"limit": ""}, (400, "invalid_parameter", "limit must be a whole number, got ''")),
    ],
)
async def test_a_bad_parameter_is_refused_before_the_room_is_looked_up(
    server: LiveServer, path: str, params: dict[str, str], expected: tuple[int, str, str]
) -> None:
    assert expected == error_of(await get(server, f"/api/rooms/{UNKNOWN}{path}", **params))


@pytest.mark.slow
async def test_versions_and_since_past_the_head_are_out_of_range(
    server: LiveServer, room: str, typed_room: tuple[Observer, list[VersionedClient], int]
) -> None:
    _, _, version = typed_room
    beyond = await get(server, f"/api/rooms/{room}/versions/{version + 1}")
    message = f"version {version + 1} is not kept: the kept versions are 0 to {version}"
    assert (400, "out_of_range", message) == error_of(beyond)
    huge = await get(server, f"/api/rooms/{room}/versions/{10**30}")
    assert (400, "out_of_range") == error_of(huge)[:2]
    since = await get(server, f"/api/rooms/{room}/history", since=version + 1)
    message = f"since {version + 1} is past the last version: since must be 0 to {version}"
    assert (400, "out_of_range", message) == error_of(since)


@pytest.mark.slow
def test_other_paths_and_methods_under_the_api_answer_in_the_same_shape(server: LiveServer) -> None:
    for path in ["/api/rooms", "/api/rooms/", f"/api/rooms/{UNKNOWN}/nothing", f"/api/rooms/{UNKNOWN}/versions/"]:
        status, code, message = error_of(httpx.get(f"{server.http}{path}", timeout=10))
        assert (404, "not_found") == (status, code), path
        assert "/api/rooms/{room_id}/history" in message
    posted = httpx.post(f"{server.http}/api/rooms/{UNKNOWN}", timeout=10)
    assert (405, "method_not_allowed") == error_of(posted)[:2]
    assert "GET" == posted.headers["allow"]
    # The rest of the application keeps its own answers.
    assert {"status": "ok"} == httpx.get(f"{server.http}/healthz", timeout=10).json()


@pytest.mark.slow
def test_pages_of_other_sites_are_refused_like_on_ws(server: LiveServer) -> None:
    path = f"{server.http}/api/rooms/{UNKNOWN}"
    refused = httpx.get(path, headers={"Origin": "http://evil.example"}, timeout=10)
    status, code, message = error_of(refused)
    assert (403, "origin_not_allowed") == (status, code)
    assert "'http://evil.example'" in message and "ALLOWED_ORIGINS" in message
    assert 404 == httpx.get(path, headers={"Origin": server.http}, timeout=10).status_code


# Failures, in-process: a registry over a store that can be made to fail


class FailingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def info(self, room_id: str) -> Any:
        if self.failing:
            raise StoreError("rooms.sqlite3: disk I/O error")
        return await super().info(room_id)

    async def text_at(self, room_id: str, version: int) -> str:
        if self.failing:
            raise StoreError("rooms.sqlite3: disk I/O error")
        return await super().text_at(room_id, version)


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, FailingStore]]:
    store = FailingStore()
    await store.commit(
        [
            RoomWrite(
                "kept",
                "e1",
                "python",
                [Record(1, "tab-1", 1, json.dumps([[0, "secret text"]]), "u1", "Ann", "#3cb44b", 1_700_000_000.25)],
                head=1,
            )
        ]
    )
    app = FastAPI()
    app.include_router(rooms_api.router)
    app.state.settings = Settings(data_dir=tmp_path)
    app.state.registry = RoomRegistry(app.state.settings, store=store)  # not started: nothing runs
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client, app, store


async def test_an_entry_has_its_time_in_utc_and_no_client_id(
    in_process: tuple[httpx.AsyncClient, FastAPI, FailingStore],
) -> None:
    client, _, _ = in_process
    page = (await client.get("/api/rooms/kept/history")).json()
    entry = {
        "version": 1,
        "user_id": "u1",
        "author": "Ann",
        "color": "#3cb44b",
        "time": "2023-11-14T22:13:20.250Z",
        "unix_time": 1_700_000_000.25,
        "changes": [[0, "secret text"]],
    }
    assert {"room_id": "kept", "epoch": "e1", "head": 1, "oldest": 0, "updates": [entry], "next": None} == page


@pytest.mark.parametrize("path", ["/api/rooms/kept", "/api/rooms/kept/versions/1", "/api/rooms/kept/history"])
async def test_a_failing_store_is_a_503_and_is_logged_without_the_text(
    in_process: tuple[httpx.AsyncClient, FastAPI, FailingStore], path: str
) -> None:
    client, _, store = in_process
    assert 200 == (await client.get(path)).status_code
    store.failing = True
    with capture_logs() as logs:
        response = await client.get(path)
    assert (503, "storage_unavailable", "storage unavailable; try again in a moment") == error_of(response)
    assert ["api_store_failed"] == [entry["event"] for entry in logs]
    assert "kept" == logs[0]["room_id"]
    assert "secret" not in repr(logs)


@pytest.mark.parametrize("state", ["missing", "stopping"])
async def test_a_registry_that_is_not_running_is_a_503(
    in_process: tuple[httpx.AsyncClient, FastAPI, FailingStore], state: str
) -> None:
    client, app, _ = in_process
    if state == "missing":
        del app.state.registry
    else:
        app.state.registry.accepting = False
    response = await client.get("/api/rooms/kept")
    expected = (503, "server_unavailable", "the server is starting or stopping; try again in a moment")
    assert expected == error_of(response)


@pytest.mark.parametrize("changes", ["not json", "[NaN]", "[Infinity, 1]"])
async def test_an_unexpected_failure_is_a_500_in_the_same_shape(
    in_process: tuple[httpx.AsyncClient, FastAPI, FailingStore], changes: str
) -> None:
    client, _, store = in_process
    await store.commit([RoomWrite("damaged", "e1", "python", [Record(1, "tab-1", 1, changes)], head=1)])
    with capture_logs() as logs:
        response = await client.get("/api/rooms/damaged/history")
    assert (500, "internal_error", "internal error; the server has logged it") == error_of(response)
    assert [("api_request_failed", "/api/rooms/damaged/history")] == [(e["event"], e["path"]) for e in logs]
