"""What the cluster section runs on: a fresh PostgreSQL database, a flushed Redis database, app
processes sharing them, and HAProxy (Debian's package) with ``deploy/haproxy/haproxy.cfg`` in front.

Everything listens on loopback. PostgreSQL and Redis are the machine's own servers, named by
``BENCH_DATABASE_URL`` (a database to connect to for creating others, default the local server's
``postgres``) and ``BENCH_REDIS_URL`` (a database index of the bench's own, flushed before and
after each measurement). Every process started here is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a folder of scripts, not a package: its modules import each other as siblings.
import servers
from servers import Kind, Server

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The tests use Redis databases 12, 13 and 15; the bench keeps to one of its own.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
HAPROXY_CFG = servers.ROOT / "deploy" / "haproxy" / "haproxy.cfg"
SLOTS = ("APP1", "APP2", "APP3")  # the servers haproxy.cfg names
HAPROXY_BACKENDS = ("rooms", "pages")
HAPROXY_READY_S = 30.0  # health checks every 2 s, two that agree change a server's state
HAPROXY_LIFETIME_S = 1800  # `timeout` ends HAProxy even if the bench dies before stopping it


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return found if Path(found).exists() else None


def unavailable() -> str:
    """Why the cluster cannot be measured here, or ""."""
    if haproxy_binary() is None:
        return "haproxy is not installed (scripts/system-deps.sh installs Debian's package)"
    where = conninfo_to_dict(ADMIN_URL)
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.Error as error:
        host = f"{where.get('host', 'localhost')}:{where.get('port', 5432)}"
        return f"PostgreSQL at {host} (BENCH_DATABASE_URL) does not answer: {type(error).__name__}"
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3) as client:
            client.ping()
    except (redis.RedisError, OSError) as error:
        return f"Redis (BENCH_REDIS_URL) does not answer: {type(error).__name__}"
    return ""


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new database, dropped afterwards with every connection still open to it."""
    name = f"collab_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as db:
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(ADMIN_URL, dbname=name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as db:
            db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def flushed_redis() -> Iterator[str]:
    """The bench's Redis database, emptied before and after."""
    with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
        client.flushdb()
    try:
        yield REDIS_URL
    finally:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
            client.flushdb()


def cluster_env(database_url: str, redis_url: str | None) -> dict[str, str]:
    """The settings of a process of the cluster (every other one at its default)."""
    env = {"STORE": "postgres", "DATABASE_URL": database_url}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@contextlib.contextmanager
def app_processes(count: int, env: Mapping[str, str]) -> Iterator[list[Server]]:
    """``count`` processes of ours (``bench/servers.py``'s settings plus ``env``), started side by
    side and each stopped by its pid afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        homes = [Path(tmp) / f"process-{index}" for index in range(count)]
        for home in homes:
            home.mkdir()
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(servers.start, Kind.OURS, home, env) for home in homes]
        started = [future.result() for future in futures if future.exception() is None]
        try:
            for future in futures:
                if (error := future.exception()) is not None:
                    raise error
            yield started
        finally:
            for server in started:
                server.stop()


def scrape(port: int) -> str:
    """A process's /metrics ("" when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


@dataclass
class Balancer:
    """HAProxy with the shipped configuration: its frontend on ``port``."""

    port: int
    stats_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """HAProxy's own pid (the child of `timeout`), for its CPU time."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(children.read_text().split()[0])
        return self.process.pid

    def states(self) -> dict[tuple[str, str], str]:
        """Each server's state by (backend, server): "UP" once a health check passed, "DOWN"."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5) as response:
            text = response.read().decode()
        states = {}
        for row in csv.DictReader(io.StringIO(text.removeprefix("# "))):
            if row["pxname"] in HAPROXY_BACKENDS and row["svname"].startswith("app"):
                status = row["status"]
                if status == "UP" and row["check_status"] != "L7OK":
                    status = "UP unchecked"
                states[(row["pxname"], row["svname"])] = status
        return states

    def wait(self, wanted: Mapping[str, str]) -> None:
        deadline = time.monotonic() + HAPROXY_READY_S
        states: dict[tuple[str, str], str] = {}
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                states = self.states()
                if all(
                    states.get((backend, name)) == state
                    for name, state in wanted.items()
                    for backend in HAPROXY_BACKENDS
                ):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy's servers are {states}, not {dict(wanted)} after {HAPROXY_READY_S:.0f} s")
            time.sleep(0.1)

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        servers.stop_process(self.process)


@contextlib.contextmanager
def balancer(app_ports: Sequence[int], workdir: Path) -> Iterator[Balancer]:
    """HAProxy in front of one to three app ports. haproxy.cfg names three servers: a slot without
    a process points at a closed loopback port, and the load waits until its health checks mark
    it DOWN (as a deployment of fewer processes would list fewer servers)."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("haproxy is not installed")
    closed = [servers.free_port() for _ in range(len(SLOTS) - len(app_ports))]
    addresses = [f"127.0.0.1:{port}" for port in [*app_ports, *closed]]
    port, stats_port = servers.free_port(), servers.free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LISTEN": f"127.0.0.1:{port}",
        "STATS_LISTEN": f"127.0.0.1:{stats_port}",
        **dict(zip(SLOTS, addresses, strict=True)),
    }
    log_path = workdir / f"haproxy-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["timeout", str(HAPROXY_LIFETIME_S), binary, "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    proxy = Balancer(port, stats_port, process, log_path)
    try:
        proxy.wait({f"app{index + 1}": "UP" if index < len(app_ports) else "DOWN" for index in range(len(SLOTS))})
        yield proxy
    finally:
        proxy.stop()
