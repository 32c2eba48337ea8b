"""Running code and the room's question in the sans-I/O `Room`, driven by hand: who may run, what
each run costs and may keep, how test runs are judged and who sees the answers, what is stored,
and that nothing is shown before it is stored."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.access import Access, Role, allowed
from rooms.access import Act as AccessAct
from rooms.errors import InvalidMessage
from rooms.questions import Case, Question, Questions
from rooms.room import Room
from rooms.room_runs import QUESTION_CLIENT, RUN_START_GRACE_SECONDS
from rooms.run_protocol import MAX_RESULT_CHARS
from rooms.session import Action, Send, Session, Store
from rooms.store import RunRecord
from tests.test_room import IMPURE, ROOT, Clock, commit, hello, make_room, sent, types
from tests.test_room_access import frame, interview, join, settle

ADD = Question(
    id="add",
    title="Add",
    statement="Add two numbers.",
    starters={"python": "def add(a, b):\n    pass\n", "javascript": "function add(a, b) {}\n"},
    functions={"python": "add", "javascript": "add"},
    compare="exact",
    cases=(Case("small", (1, 2), 3), Case("negative", (-1, -1), -2)),
)
ESSAY = Question("essay", "Essay", "Write about code.", {"python": "# write here\n"}, {}, "exact", ())
CATALOG = Questions({question.id: question for question in (ADD, ESSAY)})


def open_room(**overrides: Any) -> tuple[Room, Clock]:
    room, clock = make_room(**overrides)
    room.questions = CATALOG
    return room, clock


def members_of(**overrides: Any) -> tuple[Room, dict[Role, Session]]:
    room, members = interview(**overrides)
    room.questions = CATALOG
    return room, members


def joined(room: Room, *names: str) -> list[Session]:
    """Members of an open room, every welcome taken."""
    sessions = [room.join_versioned(hello(name)) for name in names]
    settle(room)
    return sessions


def start(room: Room, session: Session, run_id: str = "r1", kind: str = "code", **fields: Any) -> None:
    message = {"run_id": run_id, "language": "python", "version": room.document.version, "kind": kind, **fields}
    room.receive(session, json.dumps({"type": "run_start", **message}))


def output(room: Room, session: Session, text: str, run_id: str = "r1", stream: str = "stdout") -> None:
    room.receive(session, frame("run_output", run_id=run_id, stream=stream, text=text))


def end(room: Room, session: Session, run_id: str = "r1", status: str = "ok", **fields: Any) -> None:
    room.receive(session, frame("run_end", run_id=run_id, status=status, duration_ms=12, **fields))


def run_errors(actions: list[Action], session: Session) -> list[tuple[str, str | None]]:
    return [(m["code"], m.get("run_id")) for m in sent(actions, session) if m["type"] == "error"]


def of_type(actions: list[Action], session: Session, kind: str) -> list[dict[str, Any]]:
    return [m for m in sent(actions, session) if m["type"] == kind]


def stored_runs(room: Room) -> list[RunRecord]:
    write, count = room.take_write()
    room.committed(count)
    return list(write.runs)


def test_runs_and_their_messages_are_core_code_with_no_event_loop_server_or_metrics() -> None:
    for module in ("rooms/room_runs.py", "rooms/run_protocol.py"):
        tree = ast.parse((ROOT / module).read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert [] == [name for name in imported if name.split(".")[0] in IMPURE or name.startswith(IMPURE)], module


# Who may run


ROLES = [None, *Role]


def _run_cases() -> list[Any]:
    cases = []
    for role in ROLES:
        for runs_allowed in (True, False):
            for ended in (False, True):
                if role is not None and role is Role.CANDIDATE and ended:
                    continue  # the end closes every candidate: there is no one left to ask
                if role is None and (ended or not runs_allowed):
                    continue  # an open room cannot be ended, nor have runs turned off
                runs = "runs" if runs_allowed else "no_runs"
                name = f"{role.value if role else 'open'}-{runs}-{'ended' if ended else 'on'}"
                cases.append(pytest.param(role, runs_allowed, ended, id=name))
    return cases


@pytest.mark.parametrize(("role", "runs_allowed", "ended"), _run_cases())
def test_a_run_starts_exactly_when_the_table_allows_it(role: Role | None, runs_allowed: bool, ended: bool) -> None:
    if role is None:
        room, _ = open_room()
        session, other = joined(room, "ann", "bob")
    else:
        room, members = members_of()
        interviewer = members[Role.INTERVIEWER]
        room.receive(interviewer, frame("allow_runs", allowed=runs_allowed))
        if ended:
            room.receive(interviewer, frame("end"))
        settle(room)
        session = members[role]
        other = members[Role.OBSERVER if role is not Role.OBSERVER else Role.INTERVIEWER]
    before = room.access.to_json()
    start(room, session)
    actions = settle(room)
    expected = allowed(role, AccessAct.RUN, ended=ended, runs_allowed=runs_allowed)
    if expected:
        assert ([], ["r1"], ["r1"]) == (
            run_errors(actions, session),
            [m["run_id"] for m in of_type(actions, session, "run_started")],
            [m["run_id"] for m in of_type(actions, other, "run_started")],
        )
    else:
        assert ([("forbidden", "r1")], [], {}) == (run_errors(actions, session), types(actions, other), room.runs)
        assert "running code is not allowed" in of_type(actions, session, "error")[0]["message"]
    assert before == room.access.to_json()


def test_run_started_names_the_runner_and_reaches_every_versioned_member_but_no_full_text_client() -> None:
    room, _ = open_room()
    ann, bob = joined(room, "ann", "bob")
    sam = room.join_full_text("sam")
    settle(room)
    start(room, ann, version=0)
    actions = settle(room)
    started = {
        "type": "run_started",
        "run_id": "r1",
        "user_id": ann.user_id,
        "username": "ann",
        "color": room.presence.get(ann.user_id).color,  # type: ignore[union-attr]
        "language": "python",
        "version": 0,
        "kind": "code",
        "role": None,  # an open room has no roles
    }
    assert ([started], [started], []) == (sent(actions, ann), sent(actions, bob), sent(actions, sam))


def test_a_full_text_client_may_not_send_run_messages() -> None:
    room, _ = open_room()
    sam = room.join_full_text("sam")
    settle(room)
    start(room, sam)
    actions = settle(room)
    assert (["error"], {}) == (types(actions, sam), room.runs)
    assert "not a message of the full-text protocol" in sent(actions, sam)[0]["message"]


def test_a_candidate_is_refused_after_runs_are_turned_off_but_a_run_going_goes_on() -> None:
    room, members = members_of()
    interviewer, candidate, observer = (members[role] for role in Role)
    start(room, candidate, "going")
    room.receive(interviewer, frame("allow_runs", allowed=False))
    actions = settle(room)
    assert [{"type": "runs_allowed", "allowed": False, "user_id": interviewer.user_id}] == of_type(
        actions, observer, "runs_allowed"
    )
    output(room, candidate, "still printing", "going")
    end(room, candidate, "going")
    start(room, candidate, "next")
    actions = settle(room)
    assert [("forbidden", "next")] == run_errors(actions, candidate)
    assert ["run_output", "run_ended"] == types(actions, observer)
    start(room, interviewer, "mine")  # interviewers always may
    assert [] == run_errors(settle(room), interviewer)


def test_allow_runs_is_stored_before_anyone_is_told_and_joiners_are_welcomed_with_it() -> None:
    room, members = members_of()
    room.receive(members[Role.INTERVIEWER], frame("allow_runs", allowed=False))
    held = room.take_actions()
    assert ([Store()], []) == ([a for a in held if isinstance(a, Store)], [a for a in held if isinstance(a, Send)])
    write, count = room.take_write()
    assert False is json.loads(write.access or "{}")["runs_allowed"]
    room.committed(count)
    shown = room.take_actions()
    assert [["runs_allowed"]] * 3 == [types(shown, members[role]) for role in Role]
    late = join(room, Role.OBSERVER, "late")
    welcome = sent(room.take_actions(), late)[0]
    assert (False, 10.0, 20_000) == (
        welcome["runs_allowed"],
        welcome["run_timeout_seconds"],
        welcome["max_run_output_chars"],
    )


def test_allowing_runs_as_they_are_stores_and_shows_nothing() -> None:
    room, members = members_of()
    room.receive(members[Role.INTERVIEWER], frame("allow_runs", allowed=True))
    assert [] == room.take_actions()


@pytest.mark.parametrize("role", [None, Role.CANDIDATE, Role.OBSERVER])
def test_only_interviewers_turn_runs_on_or_off(role: Role | None) -> None:
    if role is None:
        room, _ = open_room()
        (session,) = joined(room, "ann")
    else:
        room, members = members_of()
        session = members[role]
    room.receive(session, frame("allow_runs", allowed=False))
    assert ([("forbidden", None)], True) == (run_errors(room.take_actions(), session), room.access.runs_allowed)


# What a run may cost


def test_a_member_has_one_run_going_at_a_time() -> None:
    room, _ = open_room()
    (ann,) = joined(room, "ann")
    start(room, ann, "first")
    start(room, ann, "second")
    actions = settle(room)
    assert [("run_refused", "second")] == run_errors(actions, ann)
    assert "run first of yours is still going" in of_type(actions, ann, "error")[0]["message"]
    end(room, ann, "first")
    start(room, ann, "third")
    assert [] == run_errors(settle(room), ann)


def test_a_room_has_at_most_max_active_runs_going() -> None:
    room, _ = open_room(max_active_runs_per_room=2)
    ann, bob, cy = joined(room, "ann", "bob", "cy")
    start(room, ann, "a")
    start(room, bob, "b")
    start(room, cy, "c")
    actions = settle(room)
    assert [("run_refused", "c")] == run_errors(actions, cy)
    assert "the room has 2 runs going" in of_type(actions, cy, "error")[0]["message"]
    assert ["a", "b"] == list(room.runs)


def test_run_starts_are_rate_limited_per_member() -> None:
    room, clock = open_room(runs_per_minute=2)
    ann, bob = joined(room, "ann", "bob")
    for number in range(3):
        start(room, ann, f"r{number}")
        end(room, ann, f"r{number}")
    actions = settle(room)
    assert [("rate_limited", "r2"), ("run_refused", "r2")] == run_errors(actions, ann)  # not started, so not ended
    assert ["r0", "r1"] == [m["run_id"] for m in of_type(actions, bob, "run_started")]
    start(room, bob, "bobs")  # another member's bucket is its own
    assert [] == run_errors(settle(room), bob)
    clock.now += 30  # one token back at 2 a minute
    start(room, ann, "r3")
    assert [] == run_errors(settle(room), ann)


def test_reconnecting_through_the_same_link_does_not_refill_the_run_bucket() -> None:
    room, members = members_of(runs_per_minute=5)
    candidate = members[Role.CANDIDATE]
    for number in range(6):
        start(room, candidate, f"first{number}")
        end(room, candidate, f"first{number}")
    assert ("rate_limited", "first5") == run_errors(settle(room), candidate)[0]
    room.leave(candidate)
    again = join(room, Role.CANDIDATE, "a-new-client-id")  # a new client, the same link
    settle(room)
    start(room, again, "second")
    assert [("rate_limited", "second")] == run_errors(settle(room), again)
    start(room, members[Role.INTERVIEWER], "theirs")  # another link's bucket is its own
    assert [] == run_errors(settle(room), members[Role.INTERVIEWER])


def test_an_open_rooms_run_bucket_is_its_members_address_across_connections() -> None:
    room, _ = open_room(runs_per_minute=2)
    ann, bob, cy = joined(room, "ann", "bob", "cy")
    ann.address = bob.address = "203.0.113.7"  # as the registry sets it; cy's is unknown
    for session, run_id in ((ann, "a"), (bob, "b"), (ann, "c"), (cy, "d")):
        start(room, session, run_id)
        end(room, session, run_id)
    actions = settle(room)
    assert ([("rate_limited", "c"), ("run_refused", "c")], []) == (run_errors(actions, ann), run_errors(actions, cy))


def test_a_run_bucket_is_kept_until_it_is_full_again_then_forgotten_on_tick() -> None:
    room, clock = open_room(runs_per_minute=2)
    (ann,) = joined(room, "ann")
    start(room, ann)
    end(room, ann)
    room.leave(ann)
    settle(room)
    clock.now += 29  # not quite one token back at 2 a minute
    room.tick()
    assert 1 == len(room.run_buckets)
    clock.now += 1
    room.tick()
    assert {} == room.run_buckets


@pytest.mark.parametrize(
    ("run_id", "why"),
    [
        pytest.param("going", "exists already", id="active"),
        pytest.param("done", "exists already", id="ended"),
    ],
)
def test_a_run_id_is_never_used_twice(run_id: str, why: str) -> None:
    room, _ = open_room()
    ann, bob = joined(room, "ann", "bob")
    start(room, ann, "done")
    end(room, ann, "done")
    start(room, ann, "going")
    start(room, bob, run_id)
    actions = settle(room)
    assert [("run_refused", run_id)] == run_errors(actions, bob)
    assert why in of_type(actions, bob, "error")[0]["message"]


def test_a_run_of_a_version_the_document_has_not_reached_is_invalid() -> None:
    room, _ = open_room()
    (ann,) = joined(room, "ann")
    start(room, ann, version=5)
    assert ([("invalid_message", "r1")], {}) == (run_errors(settle(room), ann), room.runs)


def test_output_is_relayed_to_the_others_and_never_back_to_its_runner() -> None:
    room, _ = open_room()
    ann, bob = joined(room, "ann", "bob")
    sam = room.join_full_text("sam")
    start(room, ann)
    output(room, ann, "hello\n")
    output(room, ann, "oops\n", stream="stderr")
    actions = settle(room)
    relayed = [(m["stream"], m["text"]) for m in of_type(actions, bob, "run_output")]
    assert ([("stdout", "hello\n"), ("stderr", "oops\n")], [], []) == (
        relayed,
        of_type(actions, ann, "run_output"),
        sent(actions, sam),
    )


def test_output_beyond_the_cap_is_cut_relayed_no_more_and_the_run_is_marked_truncated() -> None:
    room, _ = open_room(max_run_output_chars=10)
    ann, bob = joined(room, "ann", "bob")
    start(room, ann)
    output(room, ann, "abcdef")
    output(room, ann, "ghijkl")
    output(room, ann, "mn")
    end(room, ann)
    write, count = room.take_write()
    room.committed(count)
    actions = room.take_actions()
    assert ["abcdef", "ghij"] == [m["text"] for m in of_type(actions, bob, "run_output")]
    assert [True] == [m["truncated"] for m in of_type(actions, bob, "run_ended")]
    assert ([["stdout", "abcdefghij"]], True) == (json.loads(write.runs[0].output), write.runs[0].truncated)
    assert [] == run_errors(actions, ann)


@pytest.mark.parametrize("kind", ["run_output", "run_end"])
def test_only_its_runner_speaks_for_a_run(kind: str) -> None:
    room, _ = open_room()
    ann, bob = joined(room, "ann", "bob")
    start(room, ann)
    settle(room)
    for run_id in ("r1", "never-started"):
        if kind == "run_output":
            output(room, bob, "spoofed", run_id)
        else:
            end(room, bob, run_id)
    actions = settle(room)
    assert [("run_refused", "r1"), ("run_refused", "never-started")] == run_errors(actions, bob)
    assert ([], ["r1"]) == (sent(actions, ann), list(room.runs))


# How a run ends


def test_run_ended_waits_for_the_commit_that_stores_the_run() -> None:
    room, _ = open_room()
    ann, bob = joined(room, "ann", "bob")
    start(room, ann)
    output(room, ann, "42\n")
    settle(room)
    end(room, ann, status="error")
    held = room.take_actions()
    assert ([Store()], []) == ([a for a in held if isinstance(a, Store)], [a for a in held if isinstance(a, Send)])
    write, count = room.take_write()
    record = write.runs[0]
    assert ("r1", 0, ann.user_id, "ann", "python", "code", 1_700_000_000.0, 12, "error", False, "") == (
        record.run_id,
        record.version,
        record.user_id,
        record.author,
        record.language,
        record.kind,
        record.started,
        record.duration_ms,
        record.status,
        record.truncated,
        record.tests,
    )
    assert [["stdout", "42\n"]] == json.loads(record.output)
    room.committed(count)
    shown = room.take_actions()
    ended = {
        "type": "run_ended",
        "run_id": "r1",
        "role": None,
        "status": "error",
        "duration_ms": 12,
        "truncated": False,
        "passed": None,
        "total": None,
        "tests": None,
    }
    assert ([ended], [ended]) == (sent(shown, ann), sent(shown, bob))
    assert ([], {}) == (room.finished_runs, room.runs)


def test_a_runner_that_leaves_loses_its_run_and_the_others_are_told() -> None:
    room, clock = open_room()
    ann, bob = joined(room, "ann", "bob")
    start(room, ann)
    settle(room)
    clock.now += 2.5
    room.leave(ann)
    runs = stored_runs(room)
    actions = room.take_actions()
    assert [("lost", 2500)] == [(m["status"], m["duration_ms"]) for m in of_type(actions, bob, "run_ended")]
    assert (["lost"], {}) == ([r.status for r in runs], room.runs)


def test_a_run_not_ended_by_its_deadline_is_lost_on_the_next_tick() -> None:
    room, clock = open_room(run_timeout_seconds=5)
    ann, bob = joined(room, "ann", "bob")
    start(room, ann)
    settle(room)
    clock.now += 5 + RUN_START_GRACE_SECONDS - 1
    room.tick()
    assert ["r1"] == list(room.runs)
    clock.now += 2
    room.tick()
    actions = settle(room)
    assert ["lost"] == [m["status"] for m in of_type(actions, bob, "run_ended")]
    end(room, ann)  # too late: the room ended it
    assert [("run_refused", "r1")] == run_errors(settle(room), ann)


# Test runs, judged here


def question_room() -> tuple[Room, dict[Role, Session]]:
    room, members = members_of()
    room.receive(members[Role.INTERVIEWER], frame("question", question_id="add"))
    settle(room)
    return room, members


def test_a_tests_run_needs_a_question_with_tests_in_its_language() -> None:
    room, members = members_of()
    interviewer = members[Role.INTERVIEWER]
    start(room, interviewer, "none", kind="tests")
    room.receive(interviewer, frame("question", question_id="essay"))
    start(room, interviewer, "essay", kind="tests")
    actions = settle(room)
    assert [("run_refused", "none"), ("run_refused", "essay")] == run_errors(actions, interviewer)
    assert "has no tests in python" in of_type(actions, interviewer, "error")[0]["message"]


def test_the_runner_alone_gets_the_cases_and_only_their_inputs() -> None:
    room, members = question_room()
    candidate = members[Role.CANDIDATE]
    start(room, candidate, kind="tests", language="javascript")
    actions = settle(room)
    cases = {
        "type": "run_cases",
        "run_id": "r1",
        "function": "add",
        "cases": [{"name": "small", "args": [1, 2]}, {"name": "negative", "args": [-1, -1]}],
    }
    assert ["run_started", "run_cases"] == types(actions, candidate)
    assert cases == sent(actions, candidate)[1]
    assert ["run_started"] == types(actions, members[Role.OBSERVER]) == types(actions, members[Role.INTERVIEWER])


def test_results_are_judged_here_and_only_interviewers_see_the_expected_values() -> None:
    room, members = question_room()
    candidate = members[Role.CANDIDATE]
    start(room, candidate, kind="tests")
    end(room, candidate, results=[{"actual": 3}, {"error": "TypeError: bad operand"}])
    write, count = room.take_write()
    room.committed(count)
    actions = room.take_actions()
    brief = [
        {"name": "small", "passed": True, "error": None},
        {"name": "negative", "passed": False, "error": "TypeError: bad operand"},
    ]
    full = [
        {**brief[0], "args": [1, 2], "expected": 3, "actual": 3},
        {**brief[1], "args": [-1, -1], "expected": -2, "actual": None},
    ]
    ended = {role: of_type(actions, members[role], "run_ended")[0] for role in Role}
    assert (1, 2) == (ended[Role.CANDIDATE]["passed"], ended[Role.CANDIDATE]["total"])
    assert (full, brief, brief) == tuple(ended[role]["tests"] for role in Role)
    assert full == json.loads(write.runs[0].tests)
    frames = [a.message for a in actions if isinstance(a, Send) and a.session is not members[Role.INTERVIEWER]]
    assert [] == [text for text in frames if '"expected"' in text]


def test_a_candidates_run_is_labelled_with_its_role_for_everyone() -> None:
    room, members = question_room()
    candidate = members[Role.CANDIDATE]
    start(room, candidate, kind="tests")
    end(room, candidate, results=[{"actual": 3}, {"actual": -2}])
    actions = settle(room)
    for role in Role:
        messages = of_type(actions, members[role], "run_started") + of_type(actions, members[role], "run_ended")
        assert ["candidate", "candidate"] == [m["role"] for m in messages], role


def test_a_returned_value_too_large_is_invalid_and_nothing_is_stored_or_shown() -> None:
    room, members = question_room()
    candidate = members[Role.CANDIDATE]
    start(room, candidate, kind="tests")
    settle(room)
    room.receive(
        candidate,
        frame(
            "run_end",
            run_id="r1",
            status="ok",
            duration_ms=5,
            results=[
                {"actual": 3},
                {"actual": "x" * MAX_RESULT_CHARS},
            ],
        ),
    )
    actions = room.take_actions()
    assert ([("invalid_message", "r1")], ["r1"], []) == (
        run_errors(actions, candidate),
        list(room.runs),
        [a for a in actions if isinstance(a, Store)],
    )


def test_everyone_in_an_open_room_sees_the_expected_values() -> None:
    room, _ = open_room()
    ann, bob = joined(room, "ann", "bob")
    room.receive(ann, frame("question", question_id="add"))
    start(room, ann, kind="tests")
    end(room, ann, results=[{"actual": 3}, {"actual": -2}])
    actions = settle(room)
    tests = of_type(actions, bob, "run_ended")[0]["tests"]
    assert ([3, -2], 2) == ([t["expected"] for t in tests], of_type(actions, bob, "run_ended")[0]["passed"])
    assert 2 == len(of_type(actions, bob, "question")[0]["cases"])


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"results": [{"actual": 3}]}, id="too_few"),
        pytest.param({"results": [{"actual": 3}] * 3}, id="too_many"),
        pytest.param({}, id="ok_without_results"),
    ],
)
def test_results_that_do_not_fit_the_cases_are_invalid_and_the_run_goes_on(fields: dict[str, Any]) -> None:
    room, members = question_room()
    candidate = members[Role.CANDIDATE]
    start(room, candidate, kind="tests")
    settle(room)
    end(room, candidate, **fields)
    actions = room.take_actions()
    assert ([("invalid_message", "r1")], ["r1"], []) == (
        run_errors(actions, candidate),
        list(room.runs),
        [a for a in actions if isinstance(a, Store)],
    )
    end(room, candidate, status="timeout")  # a tests run that never finished has no results
    assert [None] == [m["passed"] for m in of_type(settle(room), candidate, "run_ended")]


def test_results_for_a_code_run_are_invalid() -> None:
    room, _ = open_room()
    (ann,) = joined(room, "ann")
    start(room, ann)
    end(room, ann, results=[{"actual": 1}])
    assert [("invalid_message", "r1")] == run_errors(settle(room), ann)


def test_the_question_a_run_started_with_is_the_one_it_is_judged_by() -> None:
    room, members = question_room()
    interviewer = members[Role.INTERVIEWER]
    start(room, interviewer, kind="tests")
    room.receive(interviewer, frame("question", question_id="essay"))
    end(room, interviewer, results=[{"actual": 3}, {"actual": -2}])
    assert [2] == [m["passed"] for m in of_type(settle(room), interviewer, "run_ended")]


# The question


def test_a_picked_question_is_stored_then_shown_with_the_cases_to_interviewers_only() -> None:
    room, members = members_of()
    room.receive(members[Role.CANDIDATE], append_text(room, "def add(a, b): return a + b"))
    settle(room)
    interviewer = members[Role.INTERVIEWER]
    room.receive(interviewer, frame("question", question_id="add"))
    assert [] == [a for a in room.take_actions() if isinstance(a, Send)]
    write, count = room.take_write()
    assert "add" == json.loads(write.access or "{}")["question"]
    room.committed(count)
    actions = room.take_actions()
    brief = {
        **ADD.brief(),
        "type": "question",
        "test_languages": ["javascript", "python"],
        "user_id": interviewer.user_id,
    }
    assert [{**brief, "cases": ADD.hidden()}] == of_type(actions, interviewer, "question")
    assert (
        [brief]
        == of_type(actions, members[Role.CANDIDATE], "question")
        == of_type(actions, members[Role.OBSERVER], "question")
    )
    assert "def add(a, b): return a + b" == room.document.text  # a document with code keeps it


@pytest.mark.parametrize("role", [Role.CANDIDATE, Role.OBSERVER])
def test_only_interviewers_pick_the_question(role: Role) -> None:
    room, members = members_of()
    room.receive(members[role], frame("question", question_id="add"))
    actions = room.take_actions()
    assert ([("forbidden", None)], None) == (run_errors(actions, members[role]), room.access.question)
    assert [] == [a for a in actions if isinstance(a, Store)]


def test_an_unknown_question_is_invalid_and_changes_nothing() -> None:
    room, members = members_of()
    before = room.access.to_json()
    room.receive(members[Role.INTERVIEWER], frame("question", question_id="no-such-question"))
    actions = room.take_actions()
    assert [("invalid_message", None)] == run_errors(actions, members[Role.INTERVIEWER])
    assert (before, "", []) == (room.access.to_json(), room.document.text, [a for a in actions if isinstance(a, Store)])


def test_the_starter_code_fills_an_empty_document_as_an_update_of_the_picker() -> None:
    room, members = members_of()
    interviewer = members[Role.INTERVIEWER]
    room.receive(interviewer, frame("question", question_id="add"))
    records = commit(room)
    actions = room.take_actions()
    assert ADD.starters["python"] == room.document.text
    assert [(1, QUESTION_CLIENT, interviewer.user_id)] == [(r.version, r.client_id, r.user_id) for r in records]
    assert ["question", "update"] == types(actions, members[Role.CANDIDATE])


def test_a_room_in_a_language_the_question_lacks_switches_to_python_first() -> None:
    room, members = members_of()
    interviewer = members[Role.INTERVIEWER]
    room.receive(interviewer, frame("language", language="rust"))
    room.receive(members[Role.CANDIDATE], append_text(room, "   \n"))  # blank: still empty
    settle(room)
    room.receive(interviewer, frame("question", question_id="add"))
    actions = settle(room)
    assert ("python", ADD.starters["python"]) == (room.language, room.document.text)
    assert ["question", "language", "update"] == types(actions, members[Role.OBSERVER])


def test_a_room_in_javascript_gets_the_javascript_starter() -> None:
    room, _ = open_room()
    (ann,) = joined(room, "ann")
    room.receive(ann, frame("language", language="javascript"))
    room.receive(ann, frame("question", question_id="add"))
    settle(room)
    assert ("javascript", ADD.starters["javascript"]) == (room.language, room.document.text)


def test_a_question_can_be_cleared() -> None:
    room, members = question_room()
    room.receive(members[Role.INTERVIEWER], frame("question", question_id=None))
    actions = settle(room)
    assert None is room.access.question
    expected = {
        "type": "question",
        "question_id": None,
        "test_languages": [],
        "user_id": members[Role.INTERVIEWER].user_id,
    }
    assert [expected] == of_type(actions, members[Role.CANDIDATE], "question")


PY_ONLY = Question(
    "py-only",
    "Python only",
    "Add, in Python.",
    {"python": "def add(a, b): ...\n", "javascript": "// none\n"},
    {"python": "add"},
    "exact",
    (Case("one", (1, 1), 2),),
)


@pytest.mark.parametrize(
    ("question_id", "languages"), [("add", ["javascript", "python"]), ("py-only", ["python"]), ("essay", [])]
)
def test_the_question_names_the_languages_it_has_tests_in(question_id: str, languages: list[str]) -> None:
    room, members = members_of()
    room.questions = Questions({q.id: q for q in (ADD, ESSAY, PY_ONLY)})
    room.receive(members[Role.INTERVIEWER], frame("question", question_id=question_id))
    actions = settle(room)
    late = join(room, Role.CANDIDATE, "late")
    welcomed = of_type(settle(room), late, "question")
    for role in Role:
        assert [languages] == [m["test_languages"] for m in of_type(actions, members[role], "question")]
    assert [languages] == [m["test_languages"] for m in welcomed]


def test_a_joiner_gets_the_question_after_its_welcome() -> None:
    room, _ = question_room()
    for role in (Role.INTERVIEWER, Role.CANDIDATE):
        session = join(room, role, f"{role.value}-late")
        messages = sent(settle(room), session)
        question = messages[-1]
        assert ("question", None, "add") == (question["type"], question["user_id"], question["question_id"])
        assert (role is Role.INTERVIEWER) == ("cases" in question)


# Joining while runs go


def test_a_joiner_sees_each_run_going_and_what_it_printed_so_far_after_the_question() -> None:
    room, members = question_room()
    interviewer, candidate = members[Role.INTERVIEWER], members[Role.CANDIDATE]
    start(room, candidate, "quiet")
    start(room, interviewer, "loud")
    output(room, interviewer, "hello\n", "loud")
    output(room, interviewer, "again\n", "loud")
    output(room, interviewer, "oops\n", "loud", stream="stderr")
    settle(room)
    late = join(room, Role.OBSERVER, "late")
    actions = settle(room)
    assert ["welcome", "question", "run_started", "run_started", "run_output", "run_output"] == types(actions, late)
    started = of_type(actions, late, "run_started")
    assert [("quiet", candidate.user_id), ("loud", interviewer.user_id)] == [
        (m["run_id"], m["user_id"]) for m in started
    ]
    assert ("python", "code", 1) == (started[1]["language"], started[1]["kind"], started[1]["version"])
    relayed = [(m["run_id"], m["stream"], m["text"]) for m in of_type(actions, late, "run_output")]
    assert [("loud", "stdout", "hello\nagain\n"), ("loud", "stderr", "oops\n")] == relayed
    (burst,) = [a for a in actions if isinstance(a, Send) and a.session is late]
    assert {"update": 0, "cursor": 0, "question": 1, "run_started": 2, "run_output": 2} == dict(burst.extra)
    # Then the run goes on for the joiner as for everyone.
    output(room, interviewer, "more\n", "loud")
    end(room, interviewer, "loud")
    assert ["run_output", "run_ended"] == types(settle(room), late)


def test_a_joiner_gets_only_the_output_kept_and_no_run_that_ended() -> None:
    room, _ = open_room(max_run_output_chars=4)
    ann, bob = joined(room, "ann", "bob")
    start(room, ann)
    output(room, ann, "abcdef")
    start(room, bob, "done")
    end(room, bob, "done")
    settle(room)
    cy = room.join_versioned(hello("cy"))
    actions = settle(room)
    assert ["welcome", "run_started", "run_output"] == types(actions, cy)
    assert ["abcd"] == [m["text"] for m in of_type(actions, cy, "run_output")]


def test_a_full_text_joiner_hears_of_no_run() -> None:
    room, _ = open_room()
    (ann,) = joined(room, "ann")
    start(room, ann)
    output(room, ann, "hello\n")
    settle(room)
    sam = room.join_full_text("sam")
    assert [] == sent(settle(room), sam)


def test_an_open_room_stores_its_question_and_stays_open() -> None:
    room, _ = open_room()
    (ann,) = joined(room, "ann")
    room.receive(ann, frame("question", question_id="essay"))
    write, _ = room.take_write()
    stored = Access.from_json(write.access or "")
    assert (False, "essay") == (stored.private, stored.question)


def test_no_client_may_take_the_question_client_id() -> None:
    room, _ = open_room()
    with pytest.raises(InvalidMessage):
        room.join_versioned(hello(QUESTION_CLIENT))


# Rooms apart


def test_a_runs_messages_never_reach_another_room() -> None:
    here, _ = open_room()
    there, _ = open_room()
    ann, _ = joined(here, "ann", "bob")
    (cy,) = joined(there, "cy")
    start(here, ann)
    output(here, ann, "secret")
    end(here, ann)
    settle(here)
    assert [] == settle(there)
    output(there, cy, "x", "r1")  # the run id of another room is no run here
    assert [("run_refused", "r1")] == run_errors(settle(there), cy)


def append_text(room: Room, text: str) -> str:
    length = room.document.length
    changes = [length, [0, text]] if length else [[0, text]]
    return frame("push", version=room.document.version, seq=room.document.version + 1, changes=changes)


# The property: whatever members send, every run that started ends once, stored as shown


steps = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["start", "output", "end", "leave", "tick"]),
        st.integers(0, 3),
        st.text(min_size=1, max_size=8),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_every_started_run_ends_once_is_stored_and_its_output_stays_within_the_cap(
    script: list[tuple[int, str, int, str]],
) -> None:
    """And a member who joins midway sees every run it hears of whole: started, all its kept
    output (what the welcome burst gave it, then what was relayed), ended."""
    room, clock = open_room(
        max_run_output_chars=12, max_active_runs_per_room=2, runs_per_minute=3, heartbeat_timeout_seconds=1e9
    )
    actions: list[Action] = []
    records: list[RunRecord] = []

    def drain() -> None:
        actions.extend(room.take_actions())
        write, count = room.take_write()
        records.extend(write.runs)
        room.committed(count)
        actions.extend(room.take_actions())

    sessions = [room.join_versioned(hello(f"m{member}")) for member in range(3)]
    watcher = room.join_versioned(hello("watcher"))
    late: Session | None = None
    drain()
    for index, (member, step, number, text) in enumerate(script):
        if index == len(script) // 2:
            late = room.join_versioned(hello("late"))
            drain()
        session = sessions[member]
        run_id = f"run-{member}-{number}"
        match step:
            case "start":
                start(room, session, run_id)
            case "output":
                output(room, session, text, run_id)
            case "end":
                end(room, session, run_id)
            case "leave":
                room.leave(session)
                sessions[member] = room.join_versioned(hello(f"m{member}-{index}"))
            case "tick":
                clock.now += 20
                room.tick()
        assert len(room.runs) <= 2
        assert len({run.session for run in room.runs.values()}) == len(room.runs)
        drain()
    for session in sessions:
        room.leave(session)
    drain()
    started = [m["run_id"] for m in of_type(actions, watcher, "run_started")]
    ended = [m["run_id"] for m in of_type(actions, watcher, "run_ended")]
    assert sorted(started) == sorted(ended) == sorted(record.run_id for record in records)
    for record in records:
        relayed = "".join(m["text"] for m in of_type(actions, watcher, "run_output") if m["run_id"] == record.run_id)
        kept = "".join(text for _, text in json.loads(record.output))
        assert relayed == kept
        assert len(kept) <= 12
    if late is not None:
        kept_by_run = {record.run_id: "".join(text for _, text in json.loads(record.output)) for record in records}
        seen = [m["run_id"] for m in of_type(actions, late, "run_started")]
        assert sorted(seen) == sorted(m["run_id"] for m in of_type(actions, late, "run_ended"))
        for run_id in seen:
            relayed = "".join(m["text"] for m in of_type(actions, late, "run_output") if m["run_id"] == run_id)
            assert kept_by_run[run_id] == relayed
