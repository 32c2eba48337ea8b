"""The browser editor and the limits on what one message may cost: an edit of more parts than the
server takes is sent coarsened, and a batch that changed nothing is confirmed by `ack`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from rooms.changes import ChangeSet
from rooms.replica import Replica
from tests import test_browser
from tests.conftest import LiveServer, start_server
from tests.test_browser import Pad, Socket

# The browser, the default server and the page opener of the browser tests, as fixtures here too.
playwright = test_browser.playwright
browser = test_browser.browser
live = test_browser.live
open_pad = test_browser.open_pad

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def few_parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("few-parts"), MAX_CHANGE_PARTS="5")
    yield server
    server.stop()


def server_text(server: LiveServer, room: str) -> str:
    with ws_connect(server.ws(room)) as raw:
        raw.send(json.dumps({"type": "hello", "client_id": "reader", "version": None}))
        welcome = json.loads(raw.recv(timeout=10))
        return str(welcome["doc"])


def joined_replica(raw: ClientConnection) -> Replica:
    """A reference client, welcomed into the room over ``raw``."""
    replica = Replica("raw")
    raw.send(json.dumps(replica.hello("Raw", resume=False)))
    replica.welcome(json.loads(raw.recv(timeout=10)))
    return replica


def test_an_edit_of_more_parts_than_the_server_takes_is_sent_as_one_replacement(
    open_pad: Callable[..., Pad], few_parts: LiveServer, room: str
) -> None:
    ann = open_pad("Ann", room, server=few_parts)
    warnings: list[str] = []
    ann.page.on("console", lambda m: warnings.append(m.text) if "too_complex" in m.text else None)
    ann.type_in_page("abcdefghij", 0, 0)
    ann.wait_typed()
    ann.wait_settled()
    # One transaction of six insertions apart: thirteen parts, the server takes five.
    ann.page.evaluate(
        """() => {
            const view = window.collabEditor.view;
            view.dispatch({changes: [0, 2, 4, 6, 8, 10].map((at) => ({from: at, insert: "_"})),
                           userEvent: "input.type"});
        }"""
    )
    ann.wait_settled(timeout=20)
    expected = "_ab_cd_ef_gh_ij_"
    assert expected == ann.text()
    assert expected == server_text(few_parts, room)
    assert [] == warnings


def test_a_batch_that_changed_nothing_is_confirmed_by_ack(
    open_pad: Callable[..., Pad], live: LiveServer, room: str
) -> None:
    socket = Socket()
    ann = open_pad("Ann", room, socket=socket)
    ann.type_in_page("hello", 0, 0)
    ann.wait_typed()
    ann.wait_settled()
    with ws_connect(live.ws(room)) as raw:
        replica = joined_replica(raw)
        # Ann deletes the "h" while nothing she sends arrives; the raw client deletes it too.
        socket.mute_current(up=True)
        ann.page.evaluate('() => window.collabEditor.view.dispatch({changes: {from: 0, to: 1}, userEvent: "delete"})')
        ann.wait_text("t === arg", "ello")
        raw.send(json.dumps(replica.edit(ChangeSet.of_replace(5, 0, 1, ""))))
        # Her batch, rebased over the raw client's update, now changes nothing: her resend of it
        # (every 3 s) gets an ack, which confirms it.
        socket.mute_up = None
        ann.wait_settled(timeout=20)
    assert "ello" == ann.text()
    assert "ello" == server_text(live, room)


def test_a_batch_that_grew_past_the_part_limit_while_rebased_is_sent_again_as_one_replacement(
    open_pad: Callable[..., Pad], few_parts: LiveServer, room: str
) -> None:
    socket = Socket()
    ann = open_pad("Ann", room, server=few_parts, socket=socket)
    ann.type_in_page("abcdefghij", 0, 0)
    ann.wait_typed()
    ann.wait_settled()
    with ws_connect(few_parts.ws(room)) as raw:
        replica = joined_replica(raw)
        # Ann deletes "bcdefghi" (three parts) while nothing she sends arrives...
        socket.mute_current(up=True)
        ann.page.evaluate('() => window.collabEditor.view.dispatch({changes: {from: 1, to: 9}, userEvent: "delete"})')
        ann.wait_text("t === arg", "aj")
        # ...and the raw client inserts twice inside that range (five parts). Rebased over it,
        # her deletion is split around both insertions: seven parts, more than the server takes.
        raw.send(
            json.dumps({"type": "push", "version": replica.version, "seq": 1, "changes": [3, [0, "1"], 3, [0, "2"], 4]})
        )
        ann.wait_text("t === arg", "a12j")
        socket.mute_up = None
        # Her resend is refused as too complex; it was not applied, so the page sends it again
        # as one replacement, and nothing is offered as lost.
        ann.wait_settled(timeout=30)
    assert "a12j" == ann.text() == server_text(few_parts, room)
    assert 0 == ann.page.locator(".collab-lost").count()
