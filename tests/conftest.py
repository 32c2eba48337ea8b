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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(tmp: Path, **env: str) -> LiveServer:
    """Start the app; ``PORT`` in ``env`` pins the port (a restart on the address clients know)."""
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
            [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=environment, stdout=log_file, stderr=subprocess.STDOUT
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
