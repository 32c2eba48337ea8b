"""A stateful model of one room served by two processes at once, with no event loop: each
process holds its own sans-I/O `Room`; they share a database where the first commit of a version
wins, and each follows the other's commits with `Room.receive_committed`. Clients connect to
either process, type, lose their connection and come back to either, in any order hypothesis
finds; a process whose commit loses the race is reset and loaded again from the database. At the
end every replica has converged on the database's text, and every token typed is in it once.

The same model runs twice: with rooms that are reset when their commit loses (the fallback), and
with shared rooms that make the lost commit again over the winner's updates (`Room.rebase_over`,
what the committer does), where no client is ever disconnected by a lost race."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rooms.changes import ChangeSet, utf16_len
from rooms.lifecycle import room_from_stored
from rooms.protocol import Hello
from rooms.replica import Replica
from rooms.room import Room, UncommittedUpdates
from rooms.session import Left, Reset, Send, Session, Store
from rooms.settings import Settings
from rooms.store import Record, RoomInfo, RoomWrite, StoredRoom
from tests.test_registry_model import insert_token

ROOM = "shared"
TOKEN = re.compile(r"<\d+[^<>]+>")  # what `insert_token` types
EPOCH = "0123456789abcdef"
PROCESSES = 2
CLIENTS = 3
SETTINGS = Settings(rate_limit_burst=10**6, history_limit=10_000)


class Database:
    """One row per version of the room: a commit whose first version is taken fails whole."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.last_seq: dict[str, tuple[int, int]] = {}

    @property
    def version(self) -> int:
        return len(self.records)

    def commit(self, write: RoomWrite) -> bool:
        if write.records and write.records[0].version != self.version + 1:
            return False
        for record in write.records:
            self.records.append(record)
            self.last_seq[record.client_id] = (record.seq, record.version)
        return True

    def load(self) -> Room:
        info = RoomInfo(ROOM, EPOCH, SETTINGS.default_language, self.version, 0)
        stored = StoredRoom(info, 0, "", list(self.records), dict(self.last_seq))
        return room_from_stored(ROOM, stored, SETTINGS)

    def text(self, version: int | None = None) -> str:
        text = ""
        for record in self.records[:version]:
            text = record.change_set().apply(text)
        return text


class Process:
    """What a driver does for one process's room, by hand: carry out its actions."""

    def __init__(self, database: Database, rebase: bool = False) -> None:
        self.database = database
        self.rebase = rebase
        self.room = self.load()
        self.wires: dict[Session, list[dict[str, Any]]] = {}
        self.resets = 0
        self.rebases = 0

    def load(self) -> Room:
        room = self.database.load()
        if self.rebase:
            room.share()
        return room

    def carry_out(self) -> None:
        for action in self.room.take_actions():
            if isinstance(action, Send):
                wire = self.wires.get(action.session)
                if wire is not None:
                    frames = (action.message,) if isinstance(action.message, str) else action.message
                    wire.extend(json.loads(frame) for frame in frames)
            elif isinstance(action, Left):
                self.wires.pop(action.session, None)  # what it did not read is lost with it
            elif isinstance(action, Reset):
                raise AssertionError(f"unexpected reset: {action.reason}")
            else:
                assert isinstance(action, Store)

    def commit(self) -> None:
        write, count = self.room.take_write()
        if self.rebase and not self.database.commit(write):
            # What the committer does when its commit loses: the others' updates first, then
            # this room's made again over them, to commit again (at the next call: others may
            # commit in between, and it loses again).
            committed = write.records[0].version - 1
            self.room.rebase_over(committed, self.database.records[committed:])
            self.rebases += 1
            self.carry_out()
            return
        if self.rebase or self.database.commit(write):
            self.room.settle(write.head)
            self.room.committed(count)
            self.carry_out()
            return
        # Another process took the version first: what this room applied since its last commit
        # was shown to no one. Its clients reconnect and resend; it starts again from the database.
        self.room.fail()
        self.carry_out()
        self.room = self.load()
        self.resets += 1

    def follow(self) -> None:
        for _ in range(3):
            try:
                self.room.receive_committed(self.database.records[self.room.document.version :])
                break
            except UncommittedUpdates:
                # Its own commit decides: it lands first, or the room is reset, or (shared) its
                # updates are made again over the others' and the next commit lands.
                self.commit()
        else:
            raise AssertionError("the room's own commit never landed")
        self.carry_out()


class SharedRoomModel(RuleBasedStateMachine):
    REBASE = False

    def __init__(self) -> None:
        super().__init__()
        self.database = Database()
        self.processes = [Process(self.database, self.REBASE) for _ in range(PROCESSES)]
        self.replicas = [Replica(f"client-{i}") for i in range(CLIENTS)]
        self.connections: list[tuple[Process, Session] | None] = [None] * CLIENTS
        self.tokens: list[list[str]] = [[] for _ in range(CLIENTS)]
        self.erased: set[str] = set()
        self.typed = 0

    def _connected(self, index: int) -> tuple[Process, Session] | None:
        connection = self.connections[index]
        if connection is not None and (connection[1].closed or connection[1] not in connection[0].wires):
            self.connections[index] = connection = None  # its process dropped it
        return connection

    def _send(self, index: int, message: dict[str, Any] | None) -> None:
        connection = self._connected(index)
        if message is None or connection is None:
            return
        process, session = connection
        process.room.receive(session, json.dumps(message))
        process.carry_out()

    @rule(index=st.integers(0, CLIENTS - 1), to=st.integers(0, PROCESSES - 1))
    def connect(self, index: int, to: int) -> None:
        if self._connected(index) is not None:
            return
        process = self.processes[to]
        # A process serves a client only once it has what the client may have seen elsewhere.
        process.follow()
        hello = Hello.model_validate(self.replicas[index].hello(f"user{index}"))
        session = process.room.join_versioned(hello)
        process.wires[session] = []
        self.connections[index] = (process, session)
        process.carry_out()

    @rule(index=st.integers(0, CLIENTS - 1), at=st.integers(0, 10**6), char=st.sampled_from("a😀\n"))
    def type_token(self, index: int, at: int, char: str) -> None:
        replica = self.replicas[index]
        token, changes = insert_token(replica, self.typed, at, char)
        self.typed += 1
        self.tokens[index].append(token)
        self._send(index, replica.edit(changes))

    @rule(index=st.integers(0, CLIENTS - 1), count=st.integers(1, 5))
    def deliver(self, index: int, count: int) -> None:
        connection = self._connected(index)
        if connection is None:
            return
        wire = connection[0].wires[connection[1]]
        replica = self.replicas[index]
        for _ in range(min(count, len(wire))):
            message = wire.pop(0)
            match message["type"]:
                case "welcome":
                    self._send(index, replica.welcome(message))
                case "update":
                    self._send(index, replica.update(message))
                case "ack":
                    self._send(index, replica.ack(message))
                case "error":
                    raise AssertionError(f"client {index} got {message}")

    @rule(at=st.integers(0, PROCESSES - 1))
    def commit(self, at: int) -> None:
        process = self.processes[at]
        resets, rebases = process.resets, process.rebases
        process.commit()
        if process.resets > resets:
            event("a commit lost the race: reset")
        if process.rebases > rebases:
            event("a commit lost the race: made again")

    @rule(index=st.integers(0, CLIENTS - 1), pick=st.integers(0, 10**6))
    def erase_token(self, index: int, pick: int) -> None:
        """A client deletes a whole token it sees (two deleting the same one at once: the
        second push changes nothing, and is only acknowledged)."""
        replica = self.replicas[index]
        tokens = TOKEN.findall(replica.text)
        if not tokens:
            return
        token = tokens[pick % len(tokens)]
        start = utf16_len(replica.text[: replica.text.index(token)])
        self.erased.add(token)
        self._send(index, replica.edit(ChangeSet.of_replace(replica.length, start, start + utf16_len(token), "")))

    @rule(first=st.integers(0, PROCESSES - 1), pick=st.integers(0, 10**6))
    def race_to_erase(self, first: int, pick: int) -> None:
        """Every connected client deletes the same token, then every process commits."""
        for index in range(CLIENTS):
            self.erase_token(index, pick)
        for offset in range(PROCESSES):
            self.commit((first + offset) % PROCESSES)

    @rule(first=st.integers(0, PROCESSES - 1), at=st.integers(0, 10**6), char=st.sampled_from("b😀\n"))
    def race(self, first: int, at: int, char: str) -> None:
        """Every connected client types, then every process commits: a race for one version
        whenever clients are on both processes."""
        for index in range(CLIENTS):
            self.type_token(index, at, char)
        for offset in range(PROCESSES):
            self.commit((first + offset) % PROCESSES)

    @rule(at=st.integers(0, PROCESSES - 1))
    def follow(self, at: int) -> None:
        self.processes[at].follow()

    @rule(index=st.integers(0, CLIENTS - 1))
    def lose_connection(self, index: int) -> None:
        connection = self._connected(index)
        if connection is not None:
            process, session = connection
            process.room.leave(session)
            process.carry_out()
        self.connections[index] = None

    @invariant()
    def every_room_shows_the_one_history_of_the_database(self) -> None:
        versions = [record.version for record in self.database.records]
        assert list(range(1, len(versions) + 1)) == versions
        for process in self.processes:
            room = process.room
            if room.unsynced or not room.all_durable:
                continue  # updates of its own, shown to no one yet
            assert room.document.version <= self.database.version
            assert self.database.text(room.document.version) == room.document.text

    @rule()
    def everyone_converges(self) -> None:
        self.converge()
        if any(process.resets for process in self.processes):
            event("a process was reset and loaded again")

    def converge(self) -> None:
        """Commit, follow, reconnect and deliver until nothing moves, then check the texts."""
        for _ in range(100):
            for process in self.processes:
                process.commit()
                process.follow()
            for index in range(CLIENTS):
                if self._connected(index) is None:
                    self.connect(index, index % PROCESSES)
                self.deliver(index, 1_000)
            settled = all(
                not process.room.unsynced
                and process.room.all_durable
                and process.room.document.version == self.database.version
                and not any(process.wires.values())
                for process in self.processes
            )
            if settled and not any(replica.has_unconfirmed for replica in self.replicas):
                break
        text = self.database.text()
        for process in self.processes:
            assert text == process.room.document.text
        for index, replica in enumerate(self.replicas):
            assert not replica.has_unconfirmed, index
            assert text == replica.text, index
        for tokens in self.tokens:
            for token in tokens:
                assert (0 if token in self.erased else 1) == text.count(token), token


SharedRoomModel.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
test_shared_room_model = SharedRoomModel.TestCase


class RebasingRoomModel(SharedRoomModel):
    REBASE = True

    @invariant()
    def no_process_is_reset(self) -> None:
        assert not any(process.resets for process in self.processes)


RebasingRoomModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_rebasing_room_model = RebasingRoomModel.TestCase


def test_a_race_for_one_version_resets_the_loser_and_loses_nothing() -> None:
    """Two processes apply a push at the same version; the second commit fails, its room is
    loaded again, and its client's resend lands after the winner's update."""
    model = SharedRoomModel()
    model.connect(0, 0)
    model.connect(1, 1)
    model.deliver(0, 10)
    model.deliver(1, 10)
    model.type_token(0, 0, "a")
    model.type_token(1, 0, "a")
    model.processes[0].commit()
    model.processes[1].commit()
    assert (0, 1) == (model.processes[0].resets, model.processes[1].resets)
    model.converge()
    assert "<0a><1a>" == model.database.text()


def test_a_race_for_one_version_makes_the_losers_update_again_after_the_winners() -> None:
    """The same race with shared rooms: the loser takes its update back, applies the winner's,
    makes its own again over it and commits; nobody is disconnected."""
    model = RebasingRoomModel()
    model.connect(0, 0)
    model.connect(1, 1)
    model.deliver(0, 10)
    model.deliver(1, 10)
    model.type_token(0, 0, "a")
    model.type_token(1, 0, "a")
    model.processes[0].commit()
    model.processes[1].commit()  # loses: made again
    model.processes[1].commit()
    assert (0, 1) == (model.processes[0].rebases, model.processes[1].rebases)
    assert [record.client_id for record in model.database.records] == ["client-0", "client-1"]
    model.converge()
    assert "<0a><1a>" == model.database.text()
    assert all(model._connected(index) is not None for index in range(CLIENTS))
