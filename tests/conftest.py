"""Shared fixtures: a live server on a loopback port, and WebSocket clients that talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

ROOT = Path(__file__).resolve().parent.parent
# Tests that import the app in-process must not write into the checkout's data directory.
os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="collab-pad-test-data-"))

# The `registry` and `users` fixtures of the NiceGUI user-simulation tests.
pytest_plugins = ["tests.ui_simulation"]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """``python app.py`` in a subprocess, on a free loopback port."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        return httpx.get(f"{self.http}/metrics", timeout=10).text

    def stop(self) -> None:
        stop_process(self.process)


def start_server(tmp: Path, *, argv: Sequence[str] = (), **env: str) -> LiveServer:
    """Start the app; ``PORT`` in ``env`` pins the port (a restart on the address clients know).

    ``argv`` replaces ``python app.py`` (another way to start it). The test process's environment
    passes through: ``FAST_PATH=false pytest -m live_server`` runs these servers without it."""
    port = int(env["PORT"]) if "PORT" in env else free_port()
    log_path = tmp / f"server-{port}.log"
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(tmp / "data"),
        "LOG_FORMAT": "json",
        # Every test client comes from 127.0.0.1: the per-address limits would count the whole
        # suite as one client. The tests of those limits set their own values.
        "ROOMS_PER_ADDRESS_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_ADDRESS_PER_SECOND": "100000",
        "RATE_LIMIT_PER_ADDRESS_BURST": "100000",
        "MAX_CONNECTIONS_PER_ADDRESS": "100000",
        "API_RATE_LIMIT_PER_SECOND": "100000",
        "API_RATE_LIMIT_BURST": "100000",
        **env,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            list(argv) or [sys.executable, str(ROOT / "app.py")],
            cwd=ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(port, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.http}/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live_server: starts the app in a process of its own (set by conftest)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that may start the app: it uses a fixture that does (`server`,
    `make_server`, test_durability's `servers`), or its module calls `start_server`.
    ``make pytest`` runs these a second time with ``FAST_PATH=false``."""
    for item in items:
        module = getattr(item, "module", None)
        fixtures = set(getattr(item, "fixturenames", ()))
        if {"server", "make_server", "servers"} & fixtures or getattr(module, "start_server", None) is start_server:
            item.add_marker(pytest.mark.live_server)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the tests that need only defaults (each uses its own room)."""
    live = start_server(tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """A server with its own settings, e.g. ``make_server(OUTBOUND_QUEUE_SIZE="8")``."""
    started: list[LiveServer] = []

    def make(**env: str) -> LiveServer:
        live = start_server(tmp_path, **env)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture
def room() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def begun(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start ``coroutine`` as a task; return once it has run up to the first point where it
    waits (a gate, a lock, a load), so the test knows it is blocked there."""
    started = asyncio.Event()

    async def run() -> T:
        started.set()  # the task goes on at once, up to its first wait, before the test resumes
        return await coroutine

    task = asyncio.create_task(run())
    await started.wait()
    return task


class LoopTime:
    """The running event loop's clock, moved forward by hand: its timers (``call_later``,
    ``asyncio.sleep``) fire as if that much time had passed, without the wait. For what the
    code times on the loop rather than on an injected clock (grace periods, periodic tasks).

    Keep each step short: every timer of the loop moves too, ``asyncio.timeout`` included."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.offset = 0.0
        self._real = loop.time

    def __call__(self) -> float:
        return self._real() + self.offset

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on; return once every timer due by then has run."""
        self.offset += seconds
        reached = asyncio.Event()
        # The loop runs due timers in the order of their deadlines: this one, due now, runs
        # after every timer due earlier.
        self.loop.call_at(self(), reached.set)
        await reached.wait()


@pytest.fixture
async def loop_time(monkeypatch: pytest.MonkeyPatch) -> LoopTime:
    """The clock of the test's event loop, advanced by hand (see `LoopTime`)."""
    clock = LoopTime(asyncio.get_running_loop())
    monkeypatch.setattr(clock.loop, "time", clock)
    return clock


def stalled_socket(port: int, room: str, hello: dict[str, Any]) -> socket.socket:
    """A client that completes the handshake, says hello, and then never reads again.

    A blocking socket driven by the sans-I/O protocol: asyncio clients keep reading into their
    own buffers, which would hide the stall from the server.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws/{room}"))
    protocol.send_request(protocol.connect())
    for data in protocol.data_to_send():
        sock.sendall(data)
    while protocol.state is State.CONNECTING:
        protocol.receive_data(sock.recv(4096))
    protocol.send_text(json.dumps(hello).encode())
    for data in protocol.data_to_send():
        sock.sendall(data)
    return sock


@dataclass
class Client:
    """A raw WebSocket client that reads JSON messages, skipping the server's pings."""

    connection: ClientConnection
    inbox: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.connection.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(self.connection.recv(), timeout)
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") != "ping":
                return message

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of this type; others received meanwhile are kept in ``inbox``."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message.get("type") == kind:
                return message
            self.inbox.append(message)

    async def send_until(self, message: dict[str, Any], kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send ``message`` again and again until the server answers it with a message of type
        ``kind``, and return that answer: for a client waiting for its rate limit to let it
        through, which the server shows only by answering. ``message`` must be safe to repeat."""
        deadline = time.monotonic() + timeout
        while True:
            await self.send(message)
            try:
                return await self.recv_type(kind, timeout=min(0.25, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {kind!r} answer to {message} within {timeout} s") from None

    async def expect_silence(self, duration: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            message = await self.recv(duration)
            raise AssertionError(f"expected no message, got {message}")

    async def close(self) -> None:
        await self.connection.close()


@pytest.fixture
async def connect_client() -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def open_client(url: str, **kwargs: Any) -> Client:
        connection = await connect(url, max_size=None, open_timeout=10, **kwargs)
        client = Client(connection)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this code started: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
