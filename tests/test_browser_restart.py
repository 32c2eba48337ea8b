"""A page's unconfirmed edits outlive a server killed with SIGKILL and started again on its data.

The page keeps what the room has not confirmed in sessionStorage; NiceGUI reloads the page when
its socket comes back to a server that does not know it, and the reloaded editor resends. The
server is started again on the same port, so the page's address stays valid.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable

import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import LiveServer
from tests.test_browser import Pad, Socket, browser, open_pad, playwright  # noqa: F401 (fixtures)
from tests.test_durability import Servers, servers  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

# Starting the server again takes a few seconds, many more on a busy machine; then the page's
# socket.io client has to find it (it backs off between attempts) and reload.
AFTER_RESTART_SECONDS = 90


@pytest.fixture
def live(servers: Servers) -> LiveServer:  # noqa: F811 (the fixture `open_pad` opens pages on)
    """This test's own server, which it kills and starts again (on the same port)."""
    return servers.start()


def room_text(live: LiveServer, room: str) -> str:
    """The room's text, as a new client is welcomed to it."""
    with ws_connect(live.ws(room)) as probe:
        hello = {"type": "hello", "client_id": f"probe-{uuid.uuid4().hex[:8]}", "username": "probe", "version": None}
        probe.send(json.dumps(hello))
        welcome = json.loads(probe.recv(timeout=10))
        assert "welcome" == welcome["type"], welcome
        return str(welcome["doc"])


def wait_for_room_text(live: LiveServer, room: str, start: str, timeout: float = 30) -> None:
    """Until the room's text starts with ``start``."""
    deadline = time.monotonic() + timeout
    while not (text := room_text(live, room)).startswith(start):
        assert time.monotonic() < deadline, f"the room has {text!r}, which does not start with {start!r}"
        time.sleep(0.05)


def test_a_pages_unconfirmed_edits_outlive_a_kill_9_and_reach_another_page_exactly_once(
    open_pad: Callable[..., Pad],  # noqa: F811
    servers: Servers,  # noqa: F811
    live: LiveServer,
    room: str,
) -> None:
    socket = Socket()
    ann = open_pad("Ann", room, socket=socket)
    ann.page.locator(".cm-content").click()
    ann.page.keyboard.type("confirmed ")
    ann.wait_settled()
    # A batch the room applies and commits, but whose confirmation never reaches the page (the
    # rest of the word waits behind it)...
    socket.mute_current(down=True)
    ann.page.keyboard.type("applied ")
    wait_for_room_text(live, room, "confirmed a")
    # ...and edits that never leave it.
    socket.mute_current(up=True)
    ann.page.keyboard.type("held")
    assert ann.page.evaluate("window.collabEditor.inflight !== null && window.collabEditor.pending !== null")

    ann.page.evaluate("window.beforeTheRestart = true")  # gone once the page has reloaded
    live.process.send_signal(signal.SIGKILL)
    assert -signal.SIGKILL == live.process.wait(timeout=10)
    restarted = servers.start()
    assert live.port == restarted.port

    expected = "confirmed applied held"
    ann.wait_text("t === arg", expected, timeout=AFTER_RESTART_SECONDS)
    ann.wait_settled(timeout=AFTER_RESTART_SECONDS)
    # What the page resent came from sessionStorage, and nothing was offered back as lost.
    assert ann.page.evaluate("window.beforeTheRestart === undefined")
    assert 0 == ann.page.locator(".collab-lost").count()
    bob = open_pad("Bob", room, server=restarted)
    bob.wait_text("t === arg", expected)
    assert expected == bob.text() == ann.text() == room_text(restarted, room)
