"""Differential test: the browser's client (ui/collab_client.js) against rooms/replica.py.

Seeded random conversations with a simulated room (the real `rooms.document.Document` as the
server) drive the Python reference client, step by step: local edits, other clients' updates,
the client's own updates coming back, acks, ``resync``, ``too_complex`` and other errors,
welcomes with a catch-up or a snapshot (of another epoch too), a refused ``client_id``, remote
cursors and members, pings, disconnects and page loads from an older saved state. The same steps
then go, in one batch, to ``tests/node/client_driver.mjs``, which runs the JavaScript module over
the real @codemirror/state; at every step both must say the same hello, send the same pushes
and cursors, ask for the same hellos and offers, report the same authors of the updates they
applied and the same notes and link changes, and hold the same text, version, batch in flight,
pending changes and remote cursors. The driver also checks that the editor changes the module
hands out keep the editor showing the module's text.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rooms.changes import ChangeSet, JsonPart, index_to_utf16, utf16_len
from rooms.document import ClientId, Document, Unchanged, Update
from rooms.errors import RoomError
from rooms.replica import Replica
from tests.test_changes_differential import node as node  # the fixture: node with @codemirror/state
from tests.test_changes_differential import run_node

NODE_DIR = Path(__file__).parent / "node"
DRIVER = NODE_DIR / "client_driver.mjs"
CASES = 400
SEED = 20240611
MAX_PARTS = 5  # small, so that batches are coarsened and refused as too complex
ME = "u-me"
OTHERS = ("u-ann", "u-bob")

PIECES = ["a", "b", "xy", " ", "\n", "\r", "漢", "😀", "e\u0301"]
# What the simulated room may answer at any moment (`Scenario.random_error`).
RANDOM_ERRORS = ("internal_error", "rate_limited", "version_too_old", "invalid_message", "resync", "too_complex")
RANDOM_ERRORS += ("forbidden", "read_only", "nope")


def _identities() -> Any:
    count = 0

    def new_identity() -> tuple[str, str]:
        nonlocal count
        count += 1
        return f"c-{count}", f"token-{count}-0123456789"

    return new_identity


def _random_text(rng: random.Random, most: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, most)))


def _random_changes(rng: random.Random, text: str, most: int = 3) -> ChangeSet:
    """Some replacements on code point boundaries (as an editor makes them), never empty."""
    while True:
        ends = sorted(index_to_utf16(text, rng.randint(0, len(text))) for _ in range(2 * rng.randint(1, most)))
        parts: list[JsonPart] = []
        pos = 0
        for start, end in zip(ends[::2], ends[1::2], strict=True):
            insert = _random_text(rng, 2)
            if start == end and not insert:
                continue
            if start > pos:
                parts.append(start - pos)
            parts.append([end - start, *insert.split("\n")] if insert else [end - start])
            pos = end
        if pos < utf16_len(text):
            parts.append(utf16_len(text) - pos)
        changes = ChangeSet.from_json(parts)
        if not changes.is_empty:
            return changes


# ---- the Python side: the same steps as client_driver.mjs ------------------------------------


def _state(replica: Replica) -> dict[str, Any]:
    inflight = replica.inflight
    return {
        "text": replica.text,
        "version": replica.synced_version,
        "client_id": replica.client_id,
        "next_seq": replica.next_seq,
        "inflight": None if inflight is None else [inflight.seq, inflight.changes.to_json()],
        "pending": None if replica.pending is None else replica.pending.to_json(),
        "live": replica.live,
        "cursors": {user_id: list(cursor) for user_id, cursor in replica.cursors.items()},
        "role": replica.role,
        "locked": replica.locked,
        "ended": replica.ended,
    }


@dataclass
class PythonClient:
    """Runs steps on a `Replica` as the driver runs them on the JavaScript client."""

    new_identity: Any = field(default_factory=_identities)
    replica: Replica = field(init=False)
    saved: Replica | None = None

    def __post_init__(self) -> None:
        client_id, token = self.new_identity()
        self.replica = Replica(client_id)
        self.replica.resume_token = token
        self.replica.new_identity = self.new_identity
        self.replica.live = False  # a page starts unwelcomed, with no version
        self.replica.needs_snapshot = True

    def step(self, step: dict[str, Any]) -> dict[str, Any]:
        replica = self.replica
        result: dict[str, Any] = {}
        op = step["op"]
        if op == "hello":
            result["hello"] = replica.hello("me")
        elif op == "edit":
            push = replica.edit(ChangeSet.from_json(step["changes"]))
            result["send"] = [] if push is None else [push]
        elif op == "frame":
            out = replica.receive(step["messages"])
            result["send"] = out.send
            result["outcome"] = {
                "hello": out.hello,
                "offer": None if out.offer is None else {"text": out.offer.text, "reason": out.offer.reason},
                "notice": out.notice,
                "error": None if out.error is None else out.error["code"],
                "language": out.language,
                "authors": out.authors,
                "notes": out.notes,
                "links": out.links,
                "denied": out.denied,
            }
        elif op == "resend":
            push = replica.resend()
            result["send"] = [] if push is None else [push]
        elif op == "cursor":
            result["cursor"] = replica.cursor(step["anchor"], step["head"])
        elif op == "disconnect":
            replica.live = False
        elif op == "save":
            self.saved = copy.copy(replica)
        elif op == "restore":
            assert self.saved is not None
            # What a page load keeps: the saved state only, not the conversation around it.
            replica = self.replica = copy.copy(self.saved)
            replica.live, replica.max_change_parts, replica.user_id, replica.cursors = False, None, None, {}
            replica.role, replica.locked, replica.ended = None, False, False
        else:
            raise AssertionError(f"unknown step {op}")
        result["state"] = _state(self.replica)
        return result


# ---- the room the conversations are held with ---------------------------------------------------


class Scenario:
    """One random conversation: a simulated room answers what the Python client says."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.client = PythonClient()
        self.doc = Document(_random_text(rng, 12), epoch="epoch-1", max_chars=100_000)
        self.epochs = 1
        self.up: deque[dict[str, Any]] = deque()  # what the client sent, not yet read by the room
        self.down: deque[dict[str, Any]] = deque()  # what the room sent, not yet read by the client
        self.connected = False  # the room holds a conversation with the client (since its hello)
        self.hello_due = True
        self.other_seq = 0
        self.members: set[str] = set()
        self.steps: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.saved = False

    def run(self, count: int) -> None:
        while len(self.steps) < count:
            self.act()

    def do(self, step: dict[str, Any]) -> dict[str, Any]:
        result = self.client.step(step)
        self.steps.append(step)
        self.results.append(result)
        if self.connected:
            self.up.extend(message for message in result.get("send", []) if message["type"] == "push")
        outcome = result.get("outcome")
        # A denied hello ends the page's conversation for good; here a new one may follow.
        if outcome and (
            outcome["hello"] or outcome["denied"] is not None or outcome["error"] not in (None, "rate_limited")
        ):
            self.hang_up()
        if "hello" in result:
            self.answer_hello(result["hello"])
        return result

    def hang_up(self) -> None:
        """The conversation is over (a new hello follows): what is on the way is ignored."""
        self.connected = False
        self.up.clear()
        self.down.clear()
        self.hello_due = True

    def act(self) -> None:
        rng = self.rng
        replica = self.client.replica
        choice = rng.random()
        if self.hello_due and choice < 0.5:
            self.hello_due = False
            self.do({"op": "hello"})
        elif choice < 0.25:
            self.do({"op": "edit", "changes": _random_changes(rng, replica.text).to_json()})
        elif choice < 0.40 and self.down:
            count = rng.randint(1, len(self.down))
            self.do({"op": "frame", "messages": [self.down.popleft() for _ in range(count)]})
        elif choice < 0.55 and self.up:
            self.serve(self.up.popleft())
        elif choice < 0.65:
            self.other_edit()
        elif choice < 0.70:
            units = utf16_len(replica.text)
            self.do({"op": "cursor", "anchor": rng.randint(0, units), "head": rng.randint(0, units)})
        elif choice < 0.75 and self.connected:
            user = rng.choice(OTHERS)
            units = self.doc.length
            anchor, head = rng.randint(0, units), rng.randint(0, units)
            self.send({"type": "cursor", "user_id": user, "anchor": anchor, "head": head, "version": self.doc.version})
        elif choice < 0.78 and self.connected:
            self.members_change()
        elif choice < 0.80 and self.connected:
            self.send({"type": rng.choice(["ping", "pong", "language"]), "language": "rust"})
        elif choice < 0.81 and self.connected:
            self.send(self.access_message())
        elif choice < 0.82:
            self.do({"op": "resend"})
        elif choice < 0.85 and self.connected:
            self.send(self.random_error())
        elif choice < 0.88:
            self.do({"op": "save"})
            self.saved = True
        elif choice < 0.90 and self.saved:
            self.do({"op": "restore"})
            self.hang_up()
        elif choice < 0.93:
            self.do({"op": "disconnect"})
            self.hang_up()
        elif choice < 0.94:
            self.restart_room()

    def send(self, message: dict[str, Any]) -> None:
        if self.connected:
            self.down.append(message)

    def other_edit(self) -> None:
        """Someone else's edit, committed at the room's current version."""
        self.other_seq += 1
        changes = _random_changes(self.rng, self.doc.text)
        user = self.rng.choice(OTHERS)
        update = self.doc.push(ClientId("other-" + user), self.other_seq, self.doc.version, changes, user)
        assert isinstance(update, Update)
        self.send(self.update_message(update))

    def update_message(self, update: Update) -> dict[str, Any]:
        message = {"type": "update", "version": update.version, "changes": update.changes.to_json()}
        message["user_id"] = update.user_id
        if update.client_id == self.client.replica.client_id:
            message.update(client_id=update.client_id, seq=update.seq)
        return message

    def members_change(self) -> None:
        user = self.rng.choice(OTHERS)
        if user in self.members:
            self.members.discard(user)
            self.send({"type": "member_left", "user_id": user})
        else:
            self.members.add(user)
            self.send({"type": "member_joined", "user_id": user, "username": user, "color": "#3cb44b"})

    def access_message(self) -> dict[str, Any]:
        """What a private room tells its members: the lock, the end, the interviewers' notes, a
        shared role's link (now and then of a shape no room sends: the clients ignore it alike)."""
        rng = self.rng
        kind = rng.choice(["locked", "ended", "notes", "link"])
        if kind == "locked":
            return {"type": "locked", "locked": rng.random() < 0.5, "user_id": OTHERS[0]}
        if kind == "ended":
            return {"type": "ended", "user_id": OTHERS[0]}
        if kind == "notes":
            return {"type": "notes", "text": _random_text(rng, 6)}
        link: dict[str, Any] = {"type": "link", "role": rng.choice(["candidate", "observer", "interviewer", 3])}
        token = rng.choice([None, "absent", "hX0f-_9", "Q2pA", 7])
        if token != "absent":
            link["token"] = token
        return link

    def random_error(self) -> dict[str, Any]:
        code = self.rng.choice(RANDOM_ERRORS)
        error: dict[str, Any] = {"type": "error", "code": code, "message": f"simulated {code}"}
        inflight = self.client.replica.inflight
        if code == "resync" and self.rng.random() < 0.7:
            # About the batch in flight, or a late answer about an earlier one.
            error["seq"] = inflight.seq if inflight is not None and self.rng.random() < 0.7 else 0
        if code == "too_complex":
            # A late answer about an earlier batch only. One about the batch in flight is the room's
            # own refusal (`serve`), which never applies that batch: a made-up one would let the
            # room apply the batch the client has just replaced with a coarser one.
            error["seq"] = 0
        if code == "rate_limited":
            error["retry_after"] = 0.2
        return error

    def serve(self, push: dict[str, Any]) -> None:
        """The room reads one push: applies it, or refuses it as the registry would."""
        client_id = ClientId(self.client.replica.client_id)
        seq = push["seq"]
        duplicate = self.doc.is_duplicate(client_id, seq)
        if not duplicate and len(push["changes"]) > MAX_PARTS:
            refusal = {"type": "error", "code": "too_complex", "message": "too many parts", "seq": seq}
            # Twice at times: the client had sent the same batch again before the answer came.
            for _ in range(self.rng.choice([1, 1, 2])):
                self.send(refusal)
            return
        if not duplicate and push["version"] < self.doc.version and self.rng.random() < 0.2:
            self.send({"type": "error", "code": "resync", "message": "too far behind", "seq": seq})
            return
        try:
            applied = self.doc.push(client_id, seq, push["version"], ChangeSet.from_json(push["changes"]), ME)
        except RoomError as exc:
            self.send({"type": "error", "code": exc.code, "message": str(exc), "seq": seq})
            return
        if isinstance(applied, Update):
            self.send(self.update_message(applied))
        elif isinstance(applied, Unchanged):
            self.send({"type": "ack", "seq": seq, "version": self.doc.version})

    def answer_hello(self, hello: dict[str, Any]) -> None:
        rng = self.rng
        self.up.clear()
        self.down.clear()
        self.connected = True
        if rng.random() < 0.04:
            # Another copy of this client holds its client_id.
            self.send({"type": "error", "code": "client_id_in_use", "message": "in use"})
            return
        if rng.random() < 0.03:
            # A private room's link was revoked, or the interview ended: no conversation follows.
            self.send({"type": "error", "code": "forbidden", "message": "this link was revoked"})
            self.connected = False
            return
        doc = self.doc
        client_id = ClientId(hello["client_id"])
        version = hello["version"]
        catch_up: list[Update] | None = None
        if version is not None and hello.get("epoch") == doc.epoch and rng.random() < 0.9:
            try:
                catch_up = doc.updates_since(version)
            except RoomError:
                catch_up = None
        welcome: dict[str, Any] = {
            "type": "welcome",
            "user_id": ME,
            "version": doc.version if catch_up is None else version,
            "members": [{"user_id": user, "username": user, "color": "#4363d8"} for user in sorted(self.members)],
            "language": "python",
            "epoch": doc.epoch,
            "max_change_parts": MAX_PARTS,
        }
        last_seq = doc.last_seq(client_id)
        if last_seq is not None:
            welcome["last_seq"] = last_seq
        role = rng.choice([None, None, "interviewer", "candidate", "observer"])
        if role is not None:  # a private room
            welcome.update(role=role, locked=rng.random() < 0.3, ended=rng.random() < 0.15)
        if catch_up is None:
            welcome["doc"] = doc.text
        self.send(welcome)
        for update in catch_up or []:
            self.send(self.update_message(update))

    def restart_room(self) -> None:
        """The room is made anew (another epoch), and every connection to it dropped."""
        self.epochs += 1
        self.doc = Document(_random_text(self.rng, 8), epoch=f"epoch-{self.epochs}", max_chars=100_000)
        self.members.clear()
        self.do({"op": "disconnect"})
        self.hang_up()


# ---- running and comparing ------------------------------------------------------------------------


def _scenarios() -> list[Scenario]:
    rng = random.Random(SEED)
    scenarios = []
    for _ in range(CASES):
        scenario = Scenario(rng)
        scenario.run(rng.randint(20, 70))
        scenarios.append(scenario)
    return scenarios


def _run_driver(node: str, cases: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return run_node(node, DRIVER, [{"steps": steps} for steps in cases], "client driver")


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """What both clients must agree on (the JavaScript hello also asks for batched frames)."""
    result = copy.deepcopy(result)
    if "hello" in result:
        hello = result["hello"]
        result["hello"] = {key: hello.get(key) for key in ("client_id", "version", "epoch", "resume_token")}
    result.get("state", {}).pop("shown", None)
    if "outcome" in result:
        result["outcome"].pop("failure", None)
    return result


def _first_mismatch(scenario: Scenario, js: dict[str, Any]) -> str | None:
    for index, (step, ours, theirs) in enumerate(zip(scenario.steps, scenario.results, js["results"], strict=False)):
        if theirs["state"]["shown"] != theirs["state"]["text"]:
            return f"step {index} ({step['op']}): the editor shows {theirs['state']['shown']!r}, not the client's text"
        if theirs.get("outcome", {}).get("failure"):
            return f"step {index} ({step['op']}): a message failed in JavaScript: {theirs['outcome']['failure']}"
        if _comparable(ours) != _comparable(theirs):
            history = "\n".join(
                json.dumps(s, ensure_ascii=False) for s in scenario.steps[max(0, index - 8) : index + 1]
            )
            return (
                f"step {index} ({step['op']}):\n  python:     {json.dumps(_comparable(ours), ensure_ascii=False)}\n"
                f"  javascript: {json.dumps(_comparable(theirs), ensure_ascii=False)}\n  last steps:\n{history}"
            )
    if "error" in js:
        return f"step {js.get('step')}: the JavaScript client threw: {js['error']}"
    assert len(scenario.steps) == len(js["results"]), "the driver answered a different number of steps"
    return None


def test_browser_client_matches_the_reference_replica_on_random_conversations(node: str) -> None:
    scenarios = _scenarios()

    results = _run_driver(node, [scenario.steps for scenario in scenarios])

    mismatches = [(i, m) for i, s in enumerate(scenarios) if (m := _first_mismatch(s, results[i])) is not None]
    steps = sum(len(s.steps) for s in scenarios)
    if mismatches:
        index, first = mismatches[0]
        pytest.fail(f"{len(mismatches)} of {CASES} conversations ({steps} steps) differ; case {index}, {first}")


def test_random_conversations_reach_every_path_of_the_algorithm() -> None:
    """The generator keeps exercising what the differential test is for."""
    seen: Counter[str] = Counter()
    for scenario in _scenarios():
        for step, result in zip(scenario.steps, scenario.results, strict=True):
            seen[step["op"]] += 1
            outcome = result.get("outcome") or {}
            if outcome.get("offer"):
                seen["offer:" + outcome["offer"]["reason"]] += 1
            if outcome.get("denied") is not None:
                seen["denied"] += 1
            for token in (outcome.get("links") or {}).values():
                seen["link:" + ("none" if token is None else "token")] += 1
            if step["op"] == "cursor" and result["cursor"] is None and result["state"]["live"]:
                seen["cursor withheld"] += 1
            codes = set()
            for message in step.get("messages", []):
                kind = message["type"]
                codes.add(message.get("code"))
                seen[
                    f"error:{message.get('code')}" if kind == "error" else kind + (":doc" if "doc" in message else "")
                ] += 1
                if kind == "update" and "client_id" in message:
                    seen["own update"] += 1
            for message in result.get("send", []):
                if message["type"] == "push" and step["op"] == "frame":
                    seen["coarse resend" if "too_complex" in codes else "push after frame"] += 1
            if result["state"]["cursors"]:
                seen["remote cursors"] += 1
    wanted = [
        "edit", "frame", "hello", "resend", "cursor", "save", "restore", "disconnect",
        "welcome", "welcome:doc", "update", "own update", "ack", "cursor", "member_left", "ping",
        "error:too_complex", "error:resync", "error:client_id_in_use", "error:internal_error",
        "error:rate_limited", "error:version_too_old", "error:invalid_message",
        "offer:history", "offer:stale", "offer:reset", "offer:duplicate", "remote cursors", "push after frame",
        "coarse resend", "error:forbidden", "error:read_only", "denied", "locked", "ended", "notes",
        "cursor withheld", "link", "link:none", "link:token",
    ]  # fmt: skip
    assert [] == [name for name in wanted if seen[name] < 5], seen
