"""HAProxy (Debian's package) with the shipped deploy/haproxy/haproxy.cfg, on loopback, in front of
three given app ports: the load balancer of deploy/compose.scale.yaml, as the tests run it.

The config reads its addresses from the environment; here the frontend and the statistics page
listen on free loopback ports and the servers app1, app2, app3 are ``127.0.0.1:<port>``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, stop_process

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
SERVERS = ("app1", "app2", "app3")
BACKENDS = ("rooms", "pages")
COOKIE = "COLLAB_SERVER"
# HAProxy checks every 2 s and changes a server's state after two checks that agree.
STATE_DEADLINE_SECONDS = 30
# `timeout` bounds HAProxy's life even if the test process dies before its cleanup.
LIFETIME_SECONDS = 1800


def haproxy_binary() -> str | None:
    """The haproxy executable (Debian installs it in /usr/sbin), or None."""
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return found if Path(found).exists() else None


def require_haproxy() -> str:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed: run scripts/system-deps.sh (Debian package haproxy)")
    return binary


def haproxy_environment(listen: str, stats_listen: str, servers: Sequence[str]) -> dict[str, str]:
    """What haproxy.cfg reads: the two listening addresses and APP1..APP3."""
    if len(servers) != len(SERVERS):
        raise ValueError(f"haproxy.cfg names {len(SERVERS)} servers, got {len(servers)} addresses")
    return {
        "LISTEN": listen,
        "STATS_LISTEN": stats_listen,
        **{name.upper(): address for name, address in zip(SERVERS, servers, strict=True)},
    }


@dataclass
class Balancer:
    """A running HAProxy: its frontend on ``port``, its statistics on ``stats_port``."""

    port: int
    stats_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def states(self) -> dict[tuple[str, str], str]:
        """Each server's state by (backend, server) as HAProxy sees it: "UP" (its last health
        check passed), "DOWN", or a state in between ("UP 1/2": going down, "DOWN 1/2": going
        up, "UP unchecked": HAProxy starts every server UP, before its first check)."""
        response = httpx.get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5)
        response.raise_for_status()
        states = {}
        for row in csv.DictReader(io.StringIO(response.text.removeprefix("# "))):
            if row["pxname"] in BACKENDS and row["svname"] in SERVERS:
                status = row["status"]
                if status == "UP" and row["check_status"] != "L7OK":
                    status = "UP unchecked"
                states[(row["pxname"], row["svname"])] = status
        return states

    def wait_states(self, wanted: dict[str, str], timeout: float = STATE_DEADLINE_SECONDS) -> None:
        """Until every server named in ``wanted`` has that state in both backends."""
        deadline = time.monotonic() + timeout
        states: dict[tuple[str, str], str] = {}
        while True:
            assert self.process.poll() is None, f"haproxy exited:\n{self.log()}"
            with contextlib.suppress(httpx.HTTPError):
                states = self.states()
                if all(states.get((backend, name)) == state for name, state in wanted.items() for backend in BACKENDS):
                    return
            assert time.monotonic() < deadline, f"haproxy servers {states}, wanted {wanted}:\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)


def start_haproxy(tmp: Path, app_ports: Sequence[int], *, wait_up: bool = True) -> Balancer:
    """HAProxy with the shipped config in front of ``app_ports`` (three of them), started in the
    foreground; with ``wait_up``, returns once every server passed its health checks."""
    binary = require_haproxy()
    port, stats_port = free_port(), free_port()
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **haproxy_environment(
            f"127.0.0.1:{port}", f"127.0.0.1:{stats_port}", [f"127.0.0.1:{app}" for app in app_ports]
        ),
    }
    log_path = tmp / f"haproxy-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["timeout", str(LIFETIME_SECONDS), binary, "-db", "-f", str(HAPROXY_CFG)],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    balancer = Balancer(port, stats_port, process, log_path)
    try:
        if wait_up:
            balancer.wait_states(dict.fromkeys(SERVERS, "UP"))
        else:
            balancer.wait_states({})
    except BaseException:
        balancer.stop()
        raise
    return balancer


@pytest.fixture
def make_haproxy(tmp_path: Path) -> Iterator[Callable[..., Balancer]]:
    """``make_haproxy([port1, port2, port3])``: a `Balancer`, stopped at the end of the test."""
    started: list[Balancer] = []

    def make(app_ports: Sequence[int], *, wait_up: bool = True) -> Balancer:
        balancer = start_haproxy(tmp_path, app_ports, wait_up=wait_up)
        started.append(balancer)
        return balancer

    yield make
    for balancer in started:
        balancer.stop()
