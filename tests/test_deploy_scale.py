"""deploy/compose.scale.yaml and the files it mounts fit together, and the shipped HAProxy config
routes as documented.

The compose file is validated by Debian's ``docker-compose`` (1.29: its ``config`` checks the file
against the Compose schema and resolves anchors and variables without a Docker daemon; it
predates the top-level ``name``, which is removed from the copy it reads). The resolved file is
then checked for what must agree: the app's settings, the services' addresses and ports, the
health checks that ``depends_on`` waits for, the mounts. The HAProxy config runs for real (the
Debian package) in front of three small loopback HTTP servers that say who answered; the browser
test (test_browser_cluster.py) runs it in front of real app processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from rooms.settings import Settings
from tests.conftest import ROOT, free_port
from tests.haproxy import (
    COOKIE,
    HAPROXY_CFG,
    SERVERS,
    Balancer,
    haproxy_environment,
    make_haproxy,
    require_haproxy,
)
from tests.test_deploy_docker import parse_dockerfile

__all__ = ["make_haproxy"]  # the fixture, used by name

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.scale.yaml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.scale.yml"
APPS = ("app1", "app2", "app3")
DOCKERFILE = parse_dockerfile((ROOT / "Dockerfile").read_text())
PORT = DOCKERFILE.env["PORT"]
DATA_DIR = DOCKERFILE.env["DATA_DIR"]
HAPROXY_CFG_TARGET = "/usr/local/etc/haproxy/haproxy.cfg"  # where the haproxy image reads it
ROOMS = [f"room-{index}" for index in range(60)]


# The compose file, as docker-compose resolves it


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose not found: scripts/system-deps.sh installs the Debian package docker-compose")
    return binary


def run_compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` over the shipped file (without its top-level ``name``), in an
    environment that has only ``env`` besides PATH and HOME: the file's defaults apply."""
    raw = COMPOSE.read_text()
    assert re.search(r"^name: \S+\n", raw, re.MULTILINE), "the project is named"
    copy = tmp_path / "compose.scale.yaml"
    copy.write_text(re.sub(r"^name: \S+\n", "", raw, count=1, flags=re.MULTILINE))
    return subprocess.run(
        [docker_compose(), "--project-directory", str(DEPLOY), "-f", str(copy), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env},
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = run_compose_config(tmp_path_factory.mktemp("compose"), STORAGE_SECRET="a-shared-secret")
    assert 0 == done.returncode, f"docker-compose config:\n{done.stderr}"
    loaded: dict[str, Any] = yaml.safe_load(done.stdout)
    return loaded


def published_ports(service: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(host address or "", published port, container port) of each port the service publishes,
    from either form docker-compose prints."""
    found = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.add((port.get("host_ip", ""), str(port["published"]), str(port["target"])))
        else:
            host, published, target = ["", *str(port).removesuffix("/tcp").split(":")][-3:]
            found.add((host, published, target))
    return found


def mounts_of(volumes: list[str]) -> set[tuple[str, str, str]]:
    """(source, target, mode) of each mount; a path source resolved against deploy/."""
    found = set()
    for spec in volumes:
        source, target, mode = [*spec.split(":"), "rw"][:3]
        if source.startswith((".", "/")):
            source = str((DEPLOY / source).resolve())
        found.add((source, target, mode))
    return found


def test_docker_compose_validates_the_scale_file(tmp_path: Path) -> None:
    assert 0 == run_compose_config(tmp_path, STORAGE_SECRET="x").returncode
    # The validation is real: a misspelt option is refused.
    bad = tmp_path / "bad"
    bad.mkdir()
    done = subprocess.run(
        [docker_compose(), "--project-directory", str(DEPLOY), "-f", "-", "config"],
        input=COMPOSE.read_text().replace("name: collab-pad-scale\n", "").replace("stop_grace_period", "stop_grace"),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(bad), "STORAGE_SECRET": "x"},
        check=False,
    )
    assert 0 != done.returncode and "stop_grace" in done.stderr


def test_the_app_processes_refuse_to_start_without_one_shared_storage_secret(tmp_path: Path) -> None:
    done = run_compose_config(tmp_path)
    assert 0 != done.returncode
    assert "set STORAGE_SECRET to one random value shared by every app process" in done.stderr


def test_the_three_app_processes_share_one_definition_and_settings_that_validate(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    apps = [services[name] for name in APPS]
    single = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["app"]
    for app in apps:
        assert ROOT == Path(app["build"]["context"]).resolve()
        assert single["build"]["dockerfile"] == app["build"]["dockerfile"] and single["image"] == app["image"]
        assert apps[0]["environment"] == app["environment"]
        assert int(app["stop_grace_period"].removesuffix("s")) > 10  # longer than the server's own stop
    environment = apps[0]["environment"]
    assert {"HOST": "0.0.0.0", "PORT": PORT, "STORE": "postgres", "STORAGE_SECRET": "a-shared-secret"}.items() <= (
        environment.items()
    )
    # The settings the processes will read: valid as a whole (REDIS_URL needs STORE=postgres, ...).
    settings = Settings(**{name.lower(): value for name, value in environment.items()})
    assert settings.redis_url and settings.forwarded_allow_ips
    # Each keeps its own DATA_DIR (NiceGUI's per-browser files) in a volume of its own.
    volumes = [app["volumes"][0] for app in apps]
    assert [f"{name}-data:{DATA_DIR}:rw" for name in APPS] == volumes
    assert {name.partition(":")[0] for name in volumes} <= set(resolved["volumes"])


def test_the_apps_reach_postgres_and_redis_as_those_services_are_configured(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    environment = services["app1"]["environment"]
    database = urlsplit(environment["DATABASE_URL"])
    postgres = services["postgres"]
    assert "postgres:16" == postgres["image"]
    assert (database.hostname, database.port) == ("postgres", 5432)
    # The password's default applies when POSTGRES_PASSWORD is not set; both sides read it.
    credentials = postgres["environment"]
    assert (database.username, database.password, database.path) == (
        credentials["POSTGRES_USER"],
        credentials["POSTGRES_PASSWORD"],
        "/" + credentials["POSTGRES_DB"],
    )
    assert "collab" == database.password
    (volume,) = postgres["volumes"]
    assert volume.partition(":")[0] in resolved["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    cache = urlsplit(environment["REDIS_URL"])
    redis = services["redis"]
    assert "redis:7" == redis["image"]
    assert (cache.scheme, cache.hostname, cache.port) == ("redis", "redis", 6379)
    # Nothing on disk: Redis keeps nothing the database lacks; and a bounded memory, whose
    # overflow drops whole keys (streams of idle rooms first), never refuses an append.
    assert ["redis-server", "--save", "", "--appendonly", "no"] == redis["command"][:5]
    options = dict(zip(redis["command"][5::2], redis["command"][6::2], strict=True))
    assert {"--maxmemory": "512mb", "--maxmemory-policy": "allkeys-lru"} == options
    assert "volumes" not in redis
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_every_service_waited_for_has_a_health_check(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    waited = set()
    for service in services.values():
        for name, condition in service.get("depends_on", {}).items():
            assert name in services
            if condition["condition"] == "service_healthy":
                waited.add(name)
    assert {"postgres", "redis", *APPS} == waited
    for name in waited:
        # The app image has its own HEALTHCHECK (liveness, /healthz).
        assert "healthcheck" in services[name] or (name in APPS and "HEALTHCHECK" in (ROOT / "Dockerfile").read_text())


def test_haproxy_gets_its_config_and_the_address_the_apps_trust(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    haproxy = services["haproxy"]
    assert "haproxy:2.6" == haproxy["image"]
    (mount,) = haproxy["volumes"]
    source, target, mode = mount.split(":")
    assert (Path(source), target, mode) == (HAPROXY_CFG, HAPROXY_CFG_TARGET, "ro")
    environment = haproxy["environment"]
    assert {f"APP{i}": f"app{i}:{PORT}" for i in (1, 2, 3)}.items() <= environment.items()
    # Every variable the config reads is set.
    read = {
        name
        for line in HAPROXY_CFG.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for name in re.findall(r"\$\{(\w+)\}", line)
    }
    assert {"LISTEN", "STATS_LISTEN", "APP1", "APP2", "APP3"} == read
    assert read <= set(environment)
    listen_port = environment["LISTEN"].rpartition(":")[2]
    published = published_ports(haproxy)
    assert ("", listen_port, listen_port) in published
    stats_port = environment["STATS_LISTEN"].rpartition(":")[2]
    assert ("127.0.0.1", stats_port, stats_port) in published  # statistics on the host's loopback only
    for name in APPS:
        assert "ports" not in services[name]  # only through HAProxy
    # The apps believe X-Forwarded-For from HAProxy's fixed address, in the network's subnet.
    address = haproxy["networks"]["default"]["ipv4_address"]
    (subnet,) = resolved["networks"]["default"]["ipam"]["config"]
    assert ip_address(address) in ip_network(subnet["subnet"])
    assert address == services["app1"]["environment"]["FORWARDED_ALLOW_IPS"]


def test_prometheus_scrapes_every_app_process_and_grafana_is_provisioned_as_in_compose_yaml(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    prometheus = services["prometheus"]
    mounts = {spec.split(":")[1]: Path(spec.split(":")[0]) for spec in prometheus["volumes"]}
    config_file = Path(next(arg for arg in prometheus["command"] if arg.startswith("--config.file=")).split("=")[1])
    assert PROMETHEUS_YML == mounts[str(config_file.parent)] / config_file.name
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert [f"{name}:{PORT}" for name in APPS] == jobs["collab-pad"]["static_configs"][0]["targets"]
    stats_port = services["haproxy"]["environment"]["STATS_LISTEN"].rpartition(":")[2]
    assert [f"haproxy:{stats_port}"] == jobs["haproxy"]["static_configs"][0]["targets"]
    assert ["alerts.yml"] == config["rule_files"]
    single = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["grafana"]
    grafana = services["grafana"]
    assert (single["image"], set(single["environment"])) == (grafana["image"], set(grafana["environment"]))
    assert mounts_of(single["volumes"]) == mounts_of(grafana["volumes"])


def test_prometheus_scale_config_passes_promtool() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool not found: scripts/system-deps.sh installs the Debian package prometheus")
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    "servers",
    [[f"127.0.0.1:{port}" for port in (8081, 8082, 8083)], [f"app{i}:{PORT}" for i in (1, 2, 3)]],
    ids=["tests", "compose"],
)
def test_haproxy_config_is_valid(tmp_path: Path, servers: list[str]) -> None:
    binary = require_haproxy()
    environment = haproxy_environment(":8080", "127.0.0.1:8404", servers)
    done = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment},
        cwd=tmp_path,
        check=False,
    )
    # With compose's names unresolvable here, servers start without an address (init-addr none).
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr


# HAProxy in front of three servers that say who answered


@dataclass
class Stub:
    """A loopback HTTP server standing for one app process."""

    name: str
    ready: bool = True
    seen: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])


def serve(stub: Stub) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            stub.seen.append({"path": self.path, "headers": headers})
            ready = self.path != "/readyz" or stub.ready
            body = json.dumps({"server": stub.name, "path": self.path, "headers": headers}).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.path.startswith("/static/"):
                self.send_header("Cache-Control", "public, max-age=3600")
            self.end_headers()
            # HAProxy's health checks may close the connection as soon as they read the status.
            with contextlib.suppress(ConnectionError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"stub-{stub.name}", daemon=True).start()
    return server


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    started = [Stub(name) for name in SERVERS]
    for stub in started:
        stub.server = serve(stub)
    yield started
    for stub in started:
        assert stub.server is not None
        stub.server.shutdown()
        stub.server.server_close()


@pytest.fixture
def balancer(stubs: list[Stub], make_haproxy: Callable[..., Balancer]) -> Balancer:
    return make_haproxy([stub.port for stub in stubs])


def answered(client: httpx.Client, url: str, **kwargs: Any) -> dict[str, Any]:
    response = client.get(url, **kwargs)
    assert 200 == response.status_code, response.text
    found: dict[str, Any] = response.json()
    return found


def room_servers(balancer: Balancer) -> dict[str, str]:
    with httpx.Client(timeout=5) as client:
        return {room: answered(client, f"{balancer.http}/ws/{room}")["server"] for room in ROOMS}


def test_health_checks_ask_readyz_with_a_host_the_app_answers_to(balancer: Balancer, stubs: list[Stub]) -> None:
    for stub in stubs:
        checks = [request for request in stub.seen if request["path"] == "/readyz"]
        assert checks, stub.name
        assert {"localhost"} == {check["headers"].get("host") for check in checks}


def test_a_room_path_always_reaches_one_server_and_rooms_spread_over_all(balancer: Balancer) -> None:
    first = room_servers(balancer)
    assert set(SERVERS) == set(first.values())
    assert first == room_servers(balancer)
    with httpx.Client(timeout=5) as client:
        # The query string (a resume token, a link) does not move the room.
        for room in ROOMS[:10]:
            assert first[room] == answered(client, f"{balancer.http}/ws/{room}?v={uuid.uuid4().hex}")["server"]


def test_a_server_that_is_not_ready_loses_only_its_own_rooms_and_gets_them_back(
    balancer: Balancer, stubs: list[Stub]
) -> None:
    before = room_servers(balancer)
    stubs[1].ready = False
    balancer.wait_states({"app2": "DOWN"})
    during = room_servers(balancer)
    assert "app2" not in during.values()
    # Consistent hashing: the rooms of the other servers stay where they were.
    assert {room: name for room, name in before.items() if name != "app2"} == {
        room: name for room, name in during.items() if before[room] != "app2"
    }
    stubs[1].ready = True
    balancer.wait_states({"app2": "UP"})
    assert before == room_servers(balancer)


def test_a_new_visitor_gets_a_server_in_turn_and_a_cookie_that_keeps_it(balancer: Balancer) -> None:
    landed = []
    for _ in range(6):
        with httpx.Client(timeout=5) as visitor:
            # The first request may be for a file a cache could keep: it must not keep the cookie.
            response = visitor.get(f"{balancer.http}/static/app.js")
            header = response.headers["set-cookie"]
            assert header.startswith(f"{COOKIE}=")
            attributes = {part.strip().lower() for part in header.split(";")[1:]}
            assert {"path=/", "httponly", "samesite=lax"} <= attributes
            assert "private" in response.headers["cache-control"]
            server = response.json()["server"]
            landed.append(server)
            # Every later request of this visitor (socket.io, API, files) goes to that server, and
            # the server never sees the cookie.
            for path in ("/room/x", "/_nicegui_ws/socket.io/?EIO=4&transport=polling", "/api/rooms/x", "/runner/x.js"):
                answer = answered(visitor, f"{balancer.http}{path}")
                assert server == answer["server"], path
                assert COOKIE not in answer["headers"].get("cookie", "")
    assert set(SERVERS) == set(landed)  # round robin over new visitors


def test_a_visitor_whose_server_goes_down_is_moved_to_another(balancer: Balancer, stubs: list[Stub]) -> None:
    with httpx.Client(timeout=5) as visitor:
        first = answered(visitor, f"{balancer.http}/")["server"]
        stub = next(stub for stub in stubs if stub.name == first)
        stub.ready = False
        balancer.wait_states({first: "DOWN"})
        response = visitor.get(f"{balancer.http}/")
        moved = response.json()["server"]
        assert moved != first
        assert response.headers["set-cookie"].startswith(f"{COOKIE}={moved};")
        assert moved == answered(visitor, f"{balancer.http}/")["server"]


def test_forwarded_headers_come_from_the_proxy_never_from_the_client(balancer: Balancer) -> None:
    forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Forwarded": "for=203.0.113.7"}
    with httpx.Client(timeout=5) as client:
        for path in ("/", "/ws/some-room"):
            headers = answered(client, f"{balancer.http}{path}", headers=forged)["headers"]
            assert "127.0.0.1" == headers["x-forwarded-for"]
            assert "http" == headers["x-forwarded-proto"]
            assert "forwarded" not in headers
            # The Host the browser used reaches the app (origin checks, the workers' CSP).
            assert f"127.0.0.1:{balancer.port}" == headers["host"]


def test_the_statistics_page_and_haproxys_metrics_answer(balancer: Balancer) -> None:
    assert {("pages", name) for name in SERVERS} <= set(balancer.states())
    metrics = httpx.get(f"http://127.0.0.1:{balancer.stats_port}/metrics", timeout=5)
    assert 200 == metrics.status_code
    assert 'haproxy_server_status{proxy="rooms",server="app1",state="UP"} 1' in metrics.text


def test_the_fixture_refuses_a_count_of_servers_the_config_does_not_name() -> None:
    with pytest.raises(ValueError, match="names 3 servers, got 2"):
        haproxy_environment(":1", ":2", ["127.0.0.1:1", f"127.0.0.1:{free_port()}"])


def test_the_proxy_log_holds_no_path_and_the_apps_metrics_are_not_public(balancer: Balancer) -> None:
    """Paths hold room ids and link secrets (/join/<room>/<secret>): never logged, by the proxy
    either; /metrics is for Prometheus, which scrapes each process directly."""
    secret = "s3cr3t-link-secret-value"
    with httpx.Client(timeout=5) as client:
        client.get(f"{balancer.http}/join/room-1234/{secret}")
        client.get(f"{balancer.http}/ws/room-1234")
        assert 404 == client.get(f"{balancer.http}/metrics").status_code
    deadline = time.monotonic() + 10
    while "/join" not in balancer.log() and time.monotonic() < deadline:
        time.sleep(0.05)  # haproxy writes its log asynchronously: there is no event to wait on
    log = balancer.log()
    assert "/join" in log and "/ws" in log
    assert secret not in log and "room-1234" not in log
