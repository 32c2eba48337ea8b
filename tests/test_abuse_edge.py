"""Abuse of the HTTP edge and the rooms API, over real sockets against a live ``python app.py``:
each attack now fails cleanly (tests/test_api_rooms.py covers the API's ordinary answers)."""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from api import edge
from api import rooms as rooms_api
from api.health import router as health_router
from api.uvicorn_fast_path import http_protocol
from rooms.registry import RoomRegistry
from rooms.settings import Settings
from rooms.store.memory import MemoryStore
from tests.conftest import LiveServer, start_server

HEADER_TIMEOUT = 1.0
RESPONSE_BYTES = 20_000


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(
        tmp_path_factory.mktemp("abuse"),
        REQUEST_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        REQUEST_BODY_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        API_MAX_RESPONSE_BYTES=str(RESPONSE_BYTES),
        JOIN_TIMEOUT_SECONDS="120",  # held connections must outlive the test, not time out
        # The defaults of the limits under test (conftest raises them for every other test).
        MAX_CONNECTIONS_PER_ADDRESS="100",
        API_RATE_LIMIT_PER_SECOND="10",
        API_RATE_LIMIT_BURST="60",
    )
    yield server
    server.stop()


def client_from(address: str, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client whose connections leave from ``address`` (127.0.0.0/8 is all loopback)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=10, **kwargs)


async def write_room(live: LiveServer, room: str, inserts: list[str]) -> None:
    """A versioned client that commits one update per insert and leaves."""
    async with connect(live.ws(room), max_size=None, open_timeout=10) as socket_:
        await socket_.send(json.dumps({"type": "hello", "client_id": "writer", "username": "w", "version": None}))
        version = 0
        length = 0
        while True:
            message = json.loads(await asyncio.wait_for(socket_.recv(), 10))
            if message["type"] == "welcome":
                version = message["version"]
                break
        for seq, text in enumerate(inserts, start=1):
            changes: list[Any] = [length, [0, text]] if length else [[0, text]]
            await socket_.send(json.dumps({"type": "push", "version": version, "seq": seq, "changes": changes}))
            while True:
                message = json.loads(await asyncio.wait_for(socket_.recv(), 10))
                if message.get("type") == "error":
                    raise AssertionError(message)
                if "changes" in message and message.get("version") is not None:
                    version = message["version"]
                    break
            length += len(text)


def sample(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def handshake_status(live: LiveServer, room: str, host: str) -> bytes:
    """The status line answering a WebSocket handshake sent with exactly this ``Host``."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(
            f"GET /ws/{room} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return sock.recv(4096).partition(b"\r\n")[0][: len("HTTP/1.1 403")]


# Finding 8: DNS rebinding. A page whose name resolves to 127.0.0.1 sends its own name as Host.


async def test_a_spoofed_host_gets_no_room_text_no_page_no_metrics_and_no_websocket(live: LiveServer) -> None:
    room = "rebinding-target"
    await write_room(live, room, ["top secret"])
    spoofed = {"Host": f"attacker.example:{live.port}"}
    async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
        for path in (f"/api/rooms/{room}", f"/room/{room}", "/metrics", "/"):
            refused = await http.get(path, headers=spoofed)
            assert 400 == refused.status_code, path
            assert "host_not_allowed" == refused.json()["error"]
            assert "top secret" not in refused.text
        for host in (f"localhost:{live.port}", f"127.0.0.1:{live.port}", f"[::1]:{live.port}", "localhost"):
            served = await http.get(f"/api/rooms/{room}", headers={"Host": host})
            assert (200, "top secret") == (served.status_code, served.json()["text"]), host
    assert b"HTTP/1.1 403" == handshake_status(live, room, f"attacker.example:{live.port}")
    # A second Host header, which a proxy in front might read instead, is no way round it.
    with pytest.raises(InvalidStatus) as refused:
        await connect(live.ws(room), additional_headers=spoofed, open_timeout=10)
    assert 403 == refused.value.response.status_code
    assert 2 <= sample(live.metrics(), 'collab_refused_connections_total{reason="host"}')


def test_hosts_match_by_name_port_brackets_and_wildcard() -> None:
    loopback = edge.allowed_hosts(Settings(host="127.0.0.1"))
    assert all(edge.host_allowed(host, loopback) for host in ("localhost:8080", "127.0.0.1", "[::1]:80", "LOCALHOST."))
    assert not any(edge.host_allowed(host, loopback) for host in ("evil.example", "127.0.0.1.evil.example", "", None))
    assert ["*"] == edge.allowed_hosts(Settings(host="0.0.0.0"))
    listed = edge.allowed_hosts(Settings(host="0.0.0.0", allowed_hosts="pad.example.com,*.corp.example"))
    assert edge.host_allowed("pad.example.com:443", listed) and edge.host_allowed("a.b.corp.example", listed)
    assert not edge.host_allowed("corp.example", listed) and not edge.host_allowed("evilcorp.example", listed)


# Finding 6: connections per client address.


async def open_ws(url: str, address: str) -> ClientConnection:
    return await connect(url, open_timeout=10, local_addr=(address, 0))


async def test_the_101st_websocket_from_one_address_is_refused_and_another_address_is_not(live: LiveServer) -> None:
    limit = 100  # MAX_CONNECTIONS_PER_ADDRESS's default
    url = live.ws("crowded")
    crowd = "127.0.0.5"  # an address of its own: other tests' connections come from 127.0.0.1
    held = [await open_ws(url, crowd) for _ in range(limit)]
    try:
        before = sample(live.metrics(), 'collab_refused_connections_total{reason="per_address"}')
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(url, crowd)
        assert 503 == refused.value.response.status_code
        assert "retry-after" in refused.value.response.headers
        # NiceGUI's socket.io WebSocket counts against the same limit.
        socketio = f"ws://127.0.0.1:{live.port}/_nicegui_ws/socket.io/?EIO=4&transport=websocket"
        with pytest.raises(InvalidStatus):
            await open_ws(socketio, crowd)
        assert before + 2 == sample(live.metrics(), 'collab_refused_connections_total{reason="per_address"}')
        other = await open_ws(url, "127.0.0.6")  # another address is unaffected
        await other.close()
        # A closed connection frees its place: the server counts it down when its call ends.
        await held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            try:
                held.append(await open_ws(url, crowd))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "a closed connection's place was never freed"
                await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(socket_.close() for socket_ in held))


# Finding 7: partial request heads (slowloris).


def closed_after(sock: socket.socket, trickle: bytes | None, limit: float) -> float:
    """Seconds until the server closes ``sock``, sending ``trickle`` every 0.5 s meanwhile."""
    start = time.monotonic()
    next_send = start + 0.5
    while time.monotonic() - start < limit:
        wait = max(0.0, (next_send if trickle else start + limit) - time.monotonic())
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
        elif trickle:
            try:
                sock.sendall(trickle)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            next_send += 0.5
    raise AssertionError(f"still open after {limit} s")


@pytest.mark.parametrize("trickle", [None, b"X-Trickle: 1\r\n"], ids=["idle", "one-line-every-half-second"])
def test_a_partial_request_head_is_closed_within_the_header_timeout(live: LiveServer, trickle: bytes | None) -> None:
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        elapsed = closed_after(sock, trickle, limit=HEADER_TIMEOUT + 5)
    assert HEADER_TIMEOUT * 0.9 <= elapsed <= HEADER_TIMEOUT + 5.0, elapsed


@pytest.mark.parametrize("trickle", [None, b"x"], ids=["idle", "one-byte-every-half-second"])
def test_a_request_whose_body_is_late_is_closed_within_the_body_timeout(
    live: LiveServer, trickle: bytes | None
) -> None:
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nstart")
        elapsed = closed_after(sock, trickle, limit=HEADER_TIMEOUT + 5)
    # Well before uvicorn's own 5 s keep-alive timeout, which closes an idle one after its answer.
    assert HEADER_TIMEOUT * 0.9 <= elapsed <= HEADER_TIMEOUT + 3.0, elapsed


def test_a_complete_request_and_a_kept_alive_connection_are_not_cut(live: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(10)
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):  # head and body may come apart
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
        # The second request's head, late: its deadline runs from its own first byte.
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert HEADER_TIMEOUT * 0.9 <= closed_after(sock, None, limit=HEADER_TIMEOUT + 10) <= HEADER_TIMEOUT + 5.0


async def test_a_websocket_outlives_the_header_timeout(live: LiveServer) -> None:
    async with connect(live.ws("long-lived"), open_timeout=10) as socket_:
        await asyncio.sleep(HEADER_TIMEOUT * 1.5)  # past the deadline its handshake disarmed
        await asyncio.wait_for(await socket_.ping(), 5)


def test_the_header_deadline_applies_only_to_the_uvicorn_it_was_tested_with() -> None:
    assert issubclass(http_protocol(1.0), HttpToolsProtocol)  # type: ignore[arg-type]
    assert "auto" == http_protocol(1.0, uvicorn_version="0.0.1")


# Finding 4: the rooms API's cost.


async def test_a_history_page_is_bounded_in_bytes_and_next_reads_on(live: LiveServer) -> None:
    room = "bulky-history"
    inserts = [f"{index:02d}" + "x" * 4_998 for index in range(12)] + ["y" * 30_000]
    await write_room(live, room, inserts)
    versions: list[int] = []
    since: int | None = 0
    pages = 0
    async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
        while since is not None:
            response = await http.get(f"/api/rooms/{room}/history", params={"since": since, "limit": 1000})
            page = response.json()
            assert page["updates"], "a page holds at least one update"
            if len(page["updates"]) > 1:
                assert len(response.content) <= RESPONSE_BYTES
            versions += [update["version"] for update in page["updates"]]
            since = page["next"]
            assert since is None or since == versions[-1]
            pages += 1
    assert list(range(1, len(inserts) + 1)) == versions
    assert pages >= 4  # 60 kB of updates in pages of 20 kB, and the 30 kB update alone


async def test_an_api_flood_from_one_address_gets_429_and_other_addresses_are_served(live: LiveServer) -> None:
    async with client_from("127.0.0.3", base_url=live.http) as flood:
        answers = [await flood.get("/api/rooms/no-such-room") for _ in range(100)]
    statuses = [answer.status_code for answer in answers]
    assert 404 == statuses[0] and 429 in statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert "rate_limited" == refused.json()["error"]
    assert 1 <= int(refused.headers["retry-after"])
    assert "no-store" == refused.headers["cache-control"]
    async with client_from("127.0.0.4", base_url=live.http) as other:
        assert 404 == (await other.get("/api/rooms/no-such-room")).status_code


class BlockingStore(MemoryStore):
    """A store whose reads wait until released, and whose check never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expected = 2

    async def access(self, room_id: str) -> Any:
        # The first read of every rooms-API request (whether the room is private).
        self.waiting += 1
        if self.waiting == self.expected:
            self.all_waiting.set()
        await self.release.wait()
        return await super().access(room_id)

    async def check(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def blocked(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, BlockingStore]]:
    store = BlockingStore()
    app = FastAPI()
    app.include_router(health_router)
    app.include_router(rooms_api.router)
    app.state.settings = Settings(data_dir=tmp_path, api_max_pending_reads=2)
    app.state.registry = RoomRegistry(app.state.settings, store=store)  # not started: nothing runs
    app.state.registry.accepting = True
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client, store


async def test_reads_beyond_the_pending_limit_get_503_and_readyz_does_not_wait(
    blocked: tuple[httpx.AsyncClient, BlockingStore],
) -> None:
    client, store = blocked
    waiting = [asyncio.ensure_future(client.get(f"/api/rooms/r{index}")) for index in range(2)]
    await asyncio.wait_for(store.all_waiting.wait(), 5)
    busy = await asyncio.wait_for(client.get("/api/rooms/r3"), 5)
    assert (503, "server_busy") == (busy.status_code, busy.json()["error"])
    assert "1" == busy.headers["retry-after"]
    ready = await asyncio.wait_for(client.get("/readyz"), 5)
    assert (503, "store: not answering") == (ready.status_code, ready.json()["reason"])
    store.release.set()
    assert [404, 404] == [response.status_code for response in await asyncio.gather(*waiting)]
    assert 404 == (await client.get("/api/rooms/r4")).status_code  # the places were given back


# Finding 9: security headers.


async def test_pages_api_answers_and_metrics_carry_the_security_headers(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
        for path in ("/", "/room/headers-check", "/api/rooms/headers-check", "/metrics", "/healthz"):
            headers = (await http.get(path)).headers
            policy = headers["content-security-policy"]
            for directive in ("frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"):
                assert directive in policy, (path, policy)
            assert ("no-referrer", "nosniff", "DENY") == (
                headers["referrer-policy"],
                headers["x-content-type-options"],
                headers["x-frame-options"],
            ), path


def test_the_data_directory_is_private(live: LiveServer) -> None:
    data = Path(live.log_path).parent / "data"
    assert 0o700 == data.stat().st_mode & 0o777
    assert 0o700 == (data / "nicegui").stat().st_mode & 0o777
