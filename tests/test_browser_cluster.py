"""Browser pages behind HAProxy (deploy/haproxy/haproxy.cfg) in front of three app processes that
share rooms through PostgreSQL and Redis: the deployment of deploy/compose.scale.yaml, on loopback.

Each page is a browser context of its own (its own cookie jar), so HAProxy gives it a server in
turn and pins it there with its cookie; the tests check through each process's /metrics where a
page landed. Pages on different processes edit one room together; a page whose process is killed
comes back through HAProxy on another one, with what it had not sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.cluster import LiveCluster, flush_redis, fresh_database, redis_url, services_unavailable, stored
from tests.conftest import LiveServer
from tests.haproxy import COOKIE, SERVERS, Balancer, require_haproxy, start_haproxy
from tests.test_browser import Pad, Socket, browser, playwright  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

T = TypeVar("T")

# Flushed by these tests, so a database no one else uses: bench uses 10, tests/cluster.py 13
# (flushed too), test_shared_presence.py 12 and test_streams.py 15 (each test its own prefix).
REDIS_DB = 11
# New visitors are given servers in turn: two in a row land on the same one only if another
# visitor came between them. Bounded retries with fresh browser contexts.
PLACEMENT_ATTEMPTS = 6
# After a kill -9 HAProxy needs a failed connection or two health checks (2 s apart) to send
# the page elsewhere; the page's socket.io backs off between attempts, then reloads.
AFTER_KILL_SECONDS = 90


def in_a_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result, run in a thread of its own: Playwright's sync API keeps an event
    loop running in this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module", autouse=True)
def services() -> None:
    """Skips the module (with the reason) where PostgreSQL, Redis or haproxy is missing."""
    if reason := services_unavailable():
        pytest.skip(reason, allow_module_level=True)
    require_haproxy()


@pytest.fixture
def scaled(tmp_path: Path) -> Iterator[tuple[LiveCluster, Balancer]]:
    """Three processes on a fresh database and Redis database, HAProxy in front of them."""
    url = redis_url(db=REDIS_DB)
    flush_redis(url)
    with fresh_database() as database_url:
        # The processes believe X-Forwarded-For from HAProxy (here: loopback), as in compose.
        cluster = LiveCluster(tmp_path, database_url, url, FORWARDED_ALLOW_IPS="127.0.0.1")
        try:
            servers = in_a_thread(cluster.start(3))
            balancer = start_haproxy(tmp_path, [server.port for server in servers])
            try:
                yield cluster, balancer
            finally:
                balancer.stop()
        finally:
            cluster.stop()
            flush_redis(url)


@pytest.fixture
def open_page(browser: Browser, scaled: tuple[LiveCluster, Balancer]) -> Iterator[Callable[..., Pad]]:  # noqa: F811
    """A new browser context on the room's page, through HAProxy, joined under ``name``."""
    _, balancer = scaled
    pads: list[Pad] = []

    def open_page(name: str, room: str, *, socket: Socket | None = None) -> Pad:
        context = browser.new_context(viewport={"width": 1100, "height": 620})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: print(name, "console", m.type, m.text[:300]))  # shown when a test fails
        if socket is not None:
            socket.route(page)
        page.goto(f"{balancer.http}/room/{room}")
        page.locator(".collab-name-input input").fill(name)
        page.locator(".collab-save-name").click()
        pad = Pad(page, context, name, socket)
        pads.append(pad)
        pad.wait_live()
        assert not errors, errors
        return pad

    yield open_page
    for pad in pads:
        pad.close()


def server_of(pad: Pad, cluster: LiveCluster) -> LiveServer:
    """The process HAProxy pins this page's browser to (its cookie names app1, app2 or app3)."""
    (name,) = [cookie["value"] for cookie in pad.context.cookies() if cookie["name"] == COOKIE]
    return cluster.servers[SERVERS.index(name)]


def connections(server: LiveServer, transport: str = "browser") -> float:
    """Connections of a transport that joined a room on this process: room pages (``browser``)
    or raw room WebSockets (``websocket``), from ``collab_connections``."""
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("collab_connections{") and f'transport="{transport}"' in line
    )


def sample(server: LiveServer, series: str) -> float:
    """One sample of the process's /metrics, by its exact series name."""
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    (value,) = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.split(" ", 1)[0] == series]
    return float(value)


def wait_connections(
    cluster: LiveCluster, wanted: dict[int, float], transport: str = "browser", timeout: float = 30
) -> None:
    """Until each process (by port) in ``wanted`` reports that many connections."""
    deadline = time.monotonic() + timeout
    while True:
        found = {server.port: connections(server, transport) for server in cluster.running}
        if all(found.get(port) == count for port, count in wanted.items()):
            return
        assert time.monotonic() < deadline, f"{transport} connections per process {found}, wanted {wanted}"
        time.sleep(0.1)


def open_elsewhere(
    open_page: Callable[..., Pad], name: str, room: str, cluster: LiveCluster, taken: set[int], **kwargs: object
) -> Pad:
    """A page that landed on a process other than those in ``taken`` (ports)."""
    for _ in range(PLACEMENT_ATTEMPTS):
        pad = open_page(name, room, **kwargs)
        if server_of(pad, cluster).port not in taken:
            return pad
        pad.close()
    raise AssertionError(f"{PLACEMENT_ATTEMPTS} new visitors all landed on {taken}")


def stored_text(cluster: LiveCluster, room: str) -> str:
    return in_a_thread(stored(cluster.database_url, room)).text


def test_two_pages_on_different_processes_edit_one_room_together(
    open_page: Callable[..., Pad], scaled: tuple[LiveCluster, Balancer]
) -> None:
    cluster, _ = scaled
    room = f"scale-{uuid.uuid4().hex[:12]}"
    ann = open_page("Ann", room)
    ann_server = server_of(ann, cluster)
    bob = open_elsewhere(open_page, "Bob", room, cluster, {ann_server.port})
    bob_server = server_of(bob, cluster)
    # Each process serves the page it rendered, and only that one (the metric, not the cookie).
    wait_connections(cluster, {ann_server.port: 1, bob_server.port: 1})
    # Both socket.io connections run over WebSockets through HAProxy.
    for pad in (ann, bob):
        assert pad.page.evaluate("window.socket.io.engine.transport.name") == "websocket"

    ann.page.locator(".cm-content").click()
    ann.page.keyboard.type("# ---\n|\n# ===")
    bob.wait_text("t === arg", "# ---\n|\n# ===")
    # Both at once, at the same place: their pushes cross between the processes.
    ann_typed, bob_typed = "abcdefghijklm" * 2, "NOPQRSTUVWXYZ" * 2
    ann.type_in_page(ann_typed, "|", 7)
    bob.type_in_page(bob_typed, "|", 7)
    ann.wait_typed()
    bob.wait_typed()
    for pad in (ann, bob):
        pad.wait_settled()
    length = len("# ---\n|\n# ===") + len(ann_typed) + len(bob_typed)
    for pad in (ann, bob):
        pad.wait_text("t.length === arg", length)
    text = ann.text()
    assert text == bob.text() == stored_text(cluster, room)
    for typed in (ann_typed, bob_typed):
        assert typed == "".join(char for char in text if char in set(typed))
    # The edits crossed between the processes through the streams: the dashboard's lag panel
    # (collab_stream_lag_seconds) has samples on both sides.
    for server in (ann_server, bob_server):
        assert sample(server, "collab_stream_lag_seconds_count") > 0, server.port


def test_a_page_whose_process_is_killed_comes_back_on_another_with_what_it_had_not_sent(
    open_page: Callable[..., Pad], scaled: tuple[LiveCluster, Balancer]
) -> None:
    cluster, balancer = scaled
    room = f"scale-{uuid.uuid4().hex[:12]}"
    socket = Socket()
    ann = open_page("Ann", room, socket=socket)
    ann_server = server_of(ann, cluster)
    bob = open_elsewhere(open_page, "Bob", room, cluster, {ann_server.port})
    ann.page.locator(".cm-content").click()
    ann.page.keyboard.type("confirmed ")
    ann.wait_settled()
    bob.wait_text("t === arg", "confirmed ")
    # Edits that never leave the page before its process dies.
    socket.mute_current(up=True)
    ann.page.keyboard.type("held")
    assert ann.page.evaluate("window.collabEditor.pending !== null || window.collabEditor.inflight !== null")

    ann.page.evaluate("window.beforeTheKill = true")  # gone once the page has reloaded
    started = time.monotonic()
    cluster.kill(ann_server)
    # The page reloads from the process HAProxy sends it to. That process may not know the
    # browser's name (NiceGUI keeps it per process): then the page asks again, as it would anyone.
    ann.page.wait_for_function(
        "window.beforeTheKill === undefined && (document.querySelector('.collab-name-input input')"
        " || (window.collabEditor && window.collabEditor.live))",
        timeout=AFTER_KILL_SECONDS * 1000,
    )
    if ann.page.locator(".collab-name-input input").count():
        print("the page asked for the name again on the process it was moved to")
        ann.page.locator(".collab-name-input input").fill("Ann")
        ann.page.locator(".collab-save-name").click()
    ann.wait_text("t === arg", "confirmed held", timeout=AFTER_KILL_SECONDS)
    ann.wait_settled(timeout=AFTER_KILL_SECONDS)
    print(f"the page was back on another process, its edit resent, {time.monotonic() - started:.1f} s after kill -9")
    # It reloaded on a living process, with what it kept in sessionStorage, and lost nothing.
    assert ann.page.evaluate("window.beforeTheKill === undefined")
    assert server_of(ann, cluster).process.poll() is None
    assert 0 == ann.page.locator(".collab-lost").count()
    balancer.wait_states({SERVERS[cluster.servers.index(ann_server)]: "DOWN"})
    bob.wait_text("t === arg", "confirmed held")
    bob.page.locator(".cm-content").click()
    bob.page.keyboard.press("Control+End")
    bob.page.keyboard.type("!")
    ann.wait_text("t === arg", "confirmed held!")
    assert "confirmed held!" == bob.text() == stored_text(cluster, room)


def welcomed(connection: ClientConnection, client_id: str) -> dict[str, Any]:
    connection.send(json.dumps({"type": "hello", "client_id": client_id, "username": client_id, "version": None}))
    while (message := json.loads(connection.recv(timeout=10)))["type"] != "welcome":
        pass
    found: dict[str, Any] = message
    return found


def test_the_websockets_of_one_room_meet_on_one_process_through_haproxy(
    scaled: tuple[LiveCluster, Balancer],
) -> None:
    cluster, balancer = scaled
    room = f"scale-{uuid.uuid4().hex[:12]}"
    with ws_connect(balancer.ws(room)) as ann, ws_connect(balancer.ws(f"{room}?resume=1")) as bob:
        welcomed(ann, "ann")
        welcomed(bob, "bob")
        ann.send(json.dumps({"type": "push", "version": 0, "seq": 1, "changes": [[0, "hi"]]}))
        while (message := json.loads(bob.recv(timeout=10)))["type"] != "update":
            pass
        assert (1, [[0, "hi"]]) == (message["version"], message["changes"])
        # The path names the room (the query does not count): both on one process, none elsewhere.
        held = {server.port: connections(server, "websocket") for server in cluster.running}
        assert [0, 0, 2] == sorted(held.values()), held
    assert "hi" == stored_text(cluster, room)
