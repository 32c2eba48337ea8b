"""A stateful model of one room: clients connect, type, lose their connection, reconnect and
take over their own stale connections, in any order hypothesis finds. After every step the
registry's bookkeeping is consistent; at the end every connected replica has converged on the
server's text and every token typed by a client that never lost unsent work is in it once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rooms.changes import ChangeSet, utf16_len
from rooms.protocol import Hello
from rooms.registry import RoomRegistry
from rooms.replica import Replica
from rooms.session import DropReason, Session
from rooms.settings import Settings

CLIENTS = 3


def insert_token(replica: Replica, number: int, at: int, char: str) -> tuple[str, ChangeSet]:
    """The token ``<number char>`` and the change that inserts it between two tokens already in
    the replica's text (``at`` picks where): tokens land whole, so counting them in the final
    text finds any edit lost or applied twice."""
    token = f"<{number}{char}>"
    boundaries = [0] + [i + 1 for i, c in enumerate(replica.text) if c == ">"]
    position = utf16_len(replica.text[: boundaries[at % len(boundaries)]])
    return token, ChangeSet.of_replace(replica.length, position, position, token)


class Wire:
    """A transport whose frames wait until the model delivers them."""

    name = "model"

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, message: str) -> None:
        self.frames.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


class RoomModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.registry = RoomRegistry(Settings(rate_limit_burst=10**6, history_limit=10_000))
        self.replicas = [Replica(f"client-{i}") for i in range(CLIENTS)]
        self.sessions: list[Session | None] = [None] * CLIENTS
        self.wires: list[Wire | None] = [None] * CLIENTS
        self.tokens: list[list[str]] = [[] for _ in range(CLIENTS)]
        self.typed = 0

    def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.loop.run_until_complete(coroutine)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call a registry method inside the event loop, as a transport would."""

        async def inside() -> Any:
            return function(*args)

        return self.loop.run_until_complete(inside())

    def teardown(self) -> None:
        async def stop() -> None:
            await self.registry.stop()

        self.run(stop())
        self.loop.close()

    def _send(self, index: int, message: dict[str, Any] | None) -> None:
        session = self.sessions[index]
        if message is not None and session is not None and not session.closed:
            self.call(self.registry.receive, session, json.dumps(message))

    @rule(index=st.integers(0, CLIENTS - 1), takeover=st.booleans())
    def connect(self, index: int, takeover: bool) -> None:
        session = self.sessions[index]
        if session is not None and not session.closed and not takeover:
            return
        replica = self.replicas[index]
        wire = Wire()

        async def join() -> None:
            hello = Hello.model_validate(replica.hello(f"user{index}"))
            self.sessions[index] = await self.registry.join_versioned("room", wire, hello)

        self.run(join())
        self.wires[index] = wire
        self.run(self.registry.settled())
        welcome = json.loads(wire.frames.pop(0))
        assert "welcome" == welcome["type"]
        self._send(index, replica.welcome(welcome))

    @rule(index=st.integers(0, CLIENTS - 1), at=st.integers(0, 10**6), char=st.sampled_from("a😀\n"))
    def type_token(self, index: int, at: int, char: str) -> None:
        replica = self.replicas[index]
        token, changes = insert_token(replica, self.typed, at, char)
        self.typed += 1
        self.tokens[index].append(token)
        self._send(index, replica.edit(changes))

    @rule(index=st.integers(0, CLIENTS - 1), count=st.integers(1, 5))
    def deliver(self, index: int, count: int) -> None:
        self.run(self.registry.settled())
        wire = self.wires[index]
        if wire is None:
            return
        for _ in range(min(count, len(wire.frames))):
            message = json.loads(wire.frames.pop(0))
            if message["type"] == "update":
                self._send(index, self.replicas[index].update(message))
            elif message["type"] == "error":
                raise AssertionError(f"client {index} got {message}")

    @rule(index=st.integers(0, CLIENTS - 1))
    def lose_connection(self, index: int) -> None:
        # The frames not yet delivered are lost with the connection.
        session = self.sessions[index]
        if session is not None:
            self.call(self.registry.leave, session)
        self.wires[index] = None

    @rule(index=st.integers(0, CLIENTS - 1))
    def drop_as_slow(self, index: int) -> None:
        session = self.sessions[index]
        if session is not None:
            self.call(self.registry.drop, session, DropReason.QUEUE_OVERFLOW)
        self.wires[index] = None

    @invariant()
    def bookkeeping_is_consistent(self) -> None:
        room = self.registry.rooms.get("room")
        if room is None:
            return
        assert set(room.presence.members) == set(room.sessions)
        for client_id, session in room.clients.items():
            assert session.client_id == client_id
            assert room.sessions.get(session.user_id) is session
            assert not session.closed
        for session in room.sessions.values():
            assert not session.closed

    @precondition(lambda self: self.typed > 0)
    @rule()
    def everyone_reconnects_and_converges(self) -> None:
        for index in range(CLIENTS):
            session = self.sessions[index]
            if session is None or session.closed or self.wires[index] is None:
                self.connect(index, takeover=False)
        for _ in range(200):
            self.run(self.registry.settled())
            if not any(wire is not None and wire.frames for wire in self.wires):
                break
            for index in range(CLIENTS):
                self.deliver(index, 100)
        document = self.registry.rooms["room"].document
        for replica in self.replicas:
            assert not replica.has_unconfirmed
            assert document.text == replica.text
        for tokens in self.tokens:
            for token in tokens:
                assert 1 == document.text.count(token), token


RoomModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_room_model = RoomModel.TestCase
