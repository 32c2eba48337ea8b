"""Private rooms in the sans-I/O `Room`, driven by hand: admission by link, roles checked on every
message, interviewers' control messages and notes, and what is stored and shown when."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.access import SHARED_ROLES, Access, Act, Role, allowed
from rooms.errors import Forbidden
from rooms.protocol import Hello
from rooms.room import Room
from rooms.room_access import ACTS
from rooms.session import CLOSE_REVOKED, Action, Left, Refused, Send, Session, Store
from rooms.store import RoomWrite
from tests.test_room import commit, make_room, sent, types

State = tuple[str, int, str, str, str]


def private_room(room_id: str = "r", **overrides: Any) -> Room:
    """A new room made private, its first write committed and its actions taken."""
    room, _ = make_room(room_id, **overrides)
    room.make_private()
    commit(room)
    room.take_actions()
    return room


def link_hello(client_id: str, token: str | None) -> Hello:
    return Hello(type="hello", client_id=client_id, username=client_id, token=token)


def join(room: Room, role: Role, client_id: str | None = None) -> Session:
    """A member joined through the live link of ``role``."""
    return room.join_versioned(link_hello(client_id or role.value, room.secret_of(role)))


def interview(**overrides: Any) -> tuple[Room, dict[Role, Session]]:
    """A private room with one member of each role, every welcome taken."""
    room = private_room(**overrides)
    members = {role: join(room, role) for role in Role}
    commit(room)
    room.take_actions()
    return room, members


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def append(room: Room, seq: int, text: str = "x") -> str:
    """A push appending ``text`` at the room's current version."""
    length = room.document.length
    return frame("push", version=room.document.version, seq=seq, changes=[length, [0, text]] if length else [[0, text]])


def state(room: Room) -> State:
    """Everything a refused message must leave as it was."""
    return room.document.text, room.document.version, room.language, room.access.to_json(), room.notes


def errors(actions: list[Action], session: Session) -> list[tuple[str, int | None]]:
    return [(m["code"], m.get("seq")) for m in sent(actions, session) if m["type"] == "error"]


def settle(room: Room) -> list[Action]:
    """Every action so far, with what was held for the changes made released by their commit."""
    actions = room.take_actions()
    commit(room)
    return actions + room.take_actions()


def secrets_of(room: Room) -> set[str]:
    return {secret for role in Role if (secret := room.secret_of(role)) is not None}


# Joining


def test_a_live_link_admits_with_its_role_and_members_carry_roles() -> None:
    room, members = interview()
    assert {role: role for role in Role} == {role: session.role for role, session in members.items()}
    late = join(room, Role.OBSERVER, "late")
    welcome = sent(room.take_actions(), late)[0]
    assert ("observer", False, False) == (welcome["role"], welcome["locked"], welcome["ended"])
    assert ["interviewer", "candidate", "observer", "observer"] == [m["role"] for m in welcome["members"]]


def test_only_an_interviewers_welcome_holds_the_links() -> None:
    room = private_room()
    sessions = [join(room, role) for role in Role]
    commit(room)  # the first member through a link is welcomed once its catch-up floor is stored
    actions = room.take_actions()
    welcomes = {s.role: next(m for m in sent(actions, s) if m["type"] == "welcome") for s in sessions}
    expected = {role.value: room.secret_of(role) for role in SHARED_ROLES}
    assert expected == welcomes[Role.INTERVIEWER]["links"]
    assert [None, None] == [welcomes[role].get("links") for role in SHARED_ROLES]


def test_an_interviewer_gets_the_notes_after_its_welcome_and_no_one_else_does() -> None:
    room, members = interview()
    room.receive(members[Role.INTERVIEWER], frame("notes", text="strong on recursion"))
    settle(room)
    welcomed = {}
    for role in Role:
        joined = join(room, role, f"{role.value}-2")
        welcomed[role] = sent(room.take_actions(), joined)
    assert ["welcome", "notes"] == [m["type"] for m in welcomed[Role.INTERVIEWER]]
    assert "strong on recursion" == welcomed[Role.INTERVIEWER][1]["text"]
    assert [["welcome"], ["welcome"]] == [[m["type"] for m in welcomed[role]] for role in SHARED_ROLES]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: None, id="no_token"),
        pytest.param(lambda: "not-a-link-of-this-room", id="unknown"),
        pytest.param(lambda: private_room("elsewhere").secret_of(Role.INTERVIEWER), id="another_rooms"),
        pytest.param(lambda: private_room(key=b"q" * 32).secret_of(Role.INTERVIEWER), id="another_servers"),
    ],
)
def test_a_private_room_refuses_a_hello_without_a_live_link_of_its_own(token: Callable[[], str | None]) -> None:
    room = private_room()
    with pytest.raises(Forbidden) as refused:
        room.join_versioned(link_hello("c", token()))
    assert ("forbidden", {}) == (refused.value.code, room.sessions)


def test_a_full_text_join_to_a_private_room_is_refused() -> None:
    room = private_room()
    with pytest.raises(Forbidden) as refused:
        room.join_full_text("sam")
    assert ("forbidden", {}) == (refused.value.code, room.sessions)


def test_an_open_room_admits_without_a_link_and_with_no_role() -> None:
    room, _ = make_room()
    session = room.join_versioned(link_hello("c", None))
    welcome = sent(room.take_actions(), session)[0]
    assert (None, None, None) == (session.role, welcome.get("role"), welcome.get("links"))


def test_a_server_without_open_rooms_admits_no_one_to_an_open_room() -> None:
    room, _ = make_room(open_rooms=False)
    with pytest.raises(Forbidden):
        room.join_versioned(link_hello("c", None))


@pytest.mark.parametrize("kind", ["notes", "lock", "end"])
def test_an_open_room_has_no_notes_and_no_control(kind: str) -> None:
    room, _ = make_room()
    session = room.join_versioned(link_hello("c", None))
    room.take_actions()
    room.receive(session, frame(kind, text="n") if kind == "notes" else frame(kind, locked=True))
    assert [("forbidden", None)] == errors(room.take_actions(), session)
    assert (Access(), "") == (room.access, room.notes)


def test_only_a_new_room_can_be_made_private() -> None:
    room, _ = make_room()
    room.join_versioned(link_hello("c", None))
    with pytest.raises(Forbidden):
        room.make_private()
    assert not room.access.private


# Every refusal: nothing changes, the member is told, the connection stays


MESSAGE_KINDS = ["push", "language", "cursor", "restore", "notes", "lock", "remove", "revoke", "end"]


def _forbidden_cases() -> list[Any]:
    """Every kind of message each role may not send, in a room unlocked and locked."""
    cases = []
    for locked, role, kind in itertools.product((False, True), SHARED_ROLES, MESSAGE_KINDS):
        act = Act.RESTORE if kind == "restore" else ACTS[kind]
        if not allowed(role, act, locked=locked):
            cases.append(pytest.param(locked, role, kind, id=f"{'locked-' if locked else ''}{role.value}-{kind}"))
    return cases


def message_of(kind: str, room: Room, members: dict[Role, Session], seq: int = 1) -> str:
    """A well-formed message of each kind, one that an interviewer could send as it is."""
    match kind:
        case "push":
            return append(room, seq)
        case "language":
            return frame("language", language="rust" if room.language != "rust" else "go")
        case "cursor":
            return frame("cursor", version=room.document.version, anchor=0, head=room.document.length)
        case "notes":
            return frame("notes", text=f"the candidate cannot see this {seq}")
        case "lock":
            return frame("lock", locked=not room.access.locked)
        case "remove":
            return frame("remove", user_id=members[Role.OBSERVER].user_id)
        case "revoke":
            return frame("revoke", role="candidate", renew=True)
    return frame(kind)


@pytest.mark.parametrize(("locked", "role", "kind"), _forbidden_cases())
def test_a_forbidden_message_changes_nothing_and_is_answered_with_an_error(locked: bool, role: Role, kind: str) -> None:
    room, members = interview()
    interviewer = members[Role.INTERVIEWER]
    room.receive(interviewer, append(room, 1, "def f(): pass"))
    room.receive(interviewer, frame("notes", text="private notes"))
    room.receive(interviewer, frame("lock", locked=locked))
    settle(room)
    session = members[role]
    before = state(room)
    if kind == "restore":
        with pytest.raises(Forbidden) as refused:
            room.revert(session, 0, "")
        replies = [(refused.value.code, None)]
        actions = room.take_actions()
    else:
        room.receive(session, message_of(kind, room, members, seq=7))
        actions = room.take_actions()
        replies = errors(actions, session)
        assert [Refused, Send] == [type(a) for a in actions]
    expected_code = "read_only" if kind == "push" else "forbidden"
    assert [(expected_code, 7 if kind == "push" else None)] == replies
    assert before == state(room)
    assert [] == [a for a in actions if isinstance(a, (Store, Left))]
    assert [] == [a for a in actions if isinstance(a, Send) and a.session is not session]
    assert not session.closed and all(not s.closed for s in members.values())


def test_an_interviewer_may_send_every_message_kind() -> None:
    room, members = interview()
    interviewer = members[Role.INTERVIEWER]
    for seq, kind in enumerate(MESSAGE_KINDS, start=1):
        if kind == "restore":
            assert room.revert(interviewer, 0, "") is not None
        else:
            room.receive(interviewer, message_of(kind, room, members, seq))
        assert [] == errors(settle(room), interviewer), kind


def test_an_interviewer_cannot_be_removed() -> None:
    room, members = interview()
    second = join(room, Role.INTERVIEWER, "ian")
    room.take_actions()
    room.receive(members[Role.INTERVIEWER], frame("remove", user_id=second.user_id))
    assert [("forbidden", None)] == errors(room.take_actions(), members[Role.INTERVIEWER])
    assert not second.closed


# Lock


def test_a_lock_reaches_everyone_once_committed_and_makes_the_candidates_next_push_read_only() -> None:
    room, members = interview()
    interviewer, candidate = members[Role.INTERVIEWER], members[Role.CANDIDATE]
    room.receive(candidate, append(room, 1, "a"))
    settle(room)
    room.receive(interviewer, frame("lock", locked=True))
    held = room.take_actions()
    assert ([Store()], []) == ([a for a in held if not isinstance(a, Send)], [a for a in held if isinstance(a, Send)])
    write, count = room.take_write()
    assert True is json.loads(write.access or "{}")["locked"]
    room.committed(count)
    shown = room.take_actions()
    locked = {"type": "locked", "locked": True, "user_id": interviewer.user_id}
    assert [[locked]] * 3 == [sent(shown, members[role]) for role in Role]
    room.receive(candidate, append(room, 2, "b"))
    assert [("read_only", 2)] == errors(room.take_actions(), candidate)
    assert "a" == room.document.text


def test_an_unlock_lets_the_candidates_next_push_through() -> None:
    room, members = interview()
    interviewer, candidate = members[Role.INTERVIEWER], members[Role.CANDIDATE]
    room.receive(interviewer, frame("lock", locked=True))
    settle(room)
    room.receive(candidate, append(room, 1, "refused"))
    room.receive(interviewer, frame("lock", locked=False))
    room.receive(candidate, append(room, 1, "typed"))  # the same seq: the refused one was not applied
    actions = settle(room)
    assert [("read_only", 1)] == errors(actions, candidate)
    assert ("typed", False) == (room.document.text, room.access.locked)
    assert ["locked", "update"] == [t for t in types(actions, candidate) if t != "error"]


def test_locking_a_locked_room_stores_and_shows_nothing() -> None:
    room, members = interview()
    room.receive(members[Role.INTERVIEWER], frame("lock", locked=True))
    settle(room)
    room.receive(members[Role.INTERVIEWER], frame("lock", locked=True))
    assert [] == room.take_actions()


# Remove, revoke, renew


def test_remove_closes_the_member_with_4003_and_its_link_stops_admitting() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    token = room.secret_of(Role.CANDIDATE)
    room.receive(interviewer, frame("remove", user_id=candidate.user_id))
    actions = settle(room)
    assert [Left(candidate)] == [a for a in actions if isinstance(a, Left)]
    assert (CLOSE_REVOKED, "removed from the room") == (candidate.close_code, candidate.close_reason)
    assert {"type": "link", "role": "candidate"} in sent(actions, interviewer)
    assert ["member_left"] == types(actions, members[Role.OBSERVER])
    with pytest.raises(Forbidden, match="revoked"):
        room.join_versioned(link_hello("cam-again", token))


def test_a_removed_member_is_refused_at_once_and_closed_only_once_the_removal_is_stored() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    room.receive(interviewer, frame("remove", user_id=candidate.user_id))
    room.receive(candidate, append(room, 1))  # sent before it learns: refused, not applied
    before_commit = room.take_actions()
    assert [] == [a for a in before_commit if isinstance(a, Left)]
    assert ("", False) == (room.document.text, candidate.closed)
    commit(room)
    after = room.take_actions()
    assert [Left(candidate)] == [a for a in after if isinstance(a, Left)]
    refused = [a.error.code for a in before_commit if isinstance(a, Refused) and a.session is candidate]
    assert ["read_only"] == refused


def test_a_removal_whose_commit_fails_is_told_to_no_one() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    room.receive(interviewer, frame("remove", user_id=candidate.user_id))
    room.take_write()
    room.fail()  # the store refused the commit: the room is reset, everyone reconnects
    actions = room.take_actions()
    # Closed like everyone else, to come back to the room as the store still holds it; nobody
    # was shown the removal, which never became durable.
    assert (1013, "storage unavailable") == (candidate.close_code, candidate.close_reason)
    assert [] == [m for m in sent(actions, interviewer) if m["type"] in ("link", "member_left")]


def test_revoke_with_renew_gives_a_new_link_that_admits_while_the_old_one_is_refused() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    old = room.secret_of(Role.CANDIDATE)
    room.receive(interviewer, frame("revoke", role="candidate", renew=True))
    actions = settle(room)
    new = room.secret_of(Role.CANDIDATE)
    assert (True, CLOSE_REVOKED) == (candidate.closed, candidate.close_code)
    assert [{"type": "link", "role": "candidate", "token": new}] == [
        m for m in sent(actions, interviewer) if m["type"] == "link"
    ]
    assert old != new and new is not None
    with pytest.raises(Forbidden):
        room.join_versioned(link_hello("old", old))
    assert Role.CANDIDATE is room.join_versioned(link_hello("new", new)).role
    assert not members[Role.OBSERVER].closed


def test_revoke_without_renew_leaves_the_role_without_a_link() -> None:
    room, members = interview()
    room.receive(members[Role.INTERVIEWER], frame("revoke", role="observer"))
    actions = settle(room)
    assert (None, True) == (room.secret_of(Role.OBSERVER), members[Role.OBSERVER].closed)
    assert [{"type": "link", "role": "observer"}] == [
        m for m in sent(actions, members[Role.INTERVIEWER]) if m["type"] == "link"
    ]
    assert not members[Role.CANDIDATE].closed


# End


def test_end_closes_candidates_refuses_new_ones_and_keeps_observers() -> None:
    room, members = interview()
    interviewer, candidate, observer = (members[role] for role in Role)
    token = room.secret_of(Role.CANDIDATE)
    room.receive(interviewer, frame("end"))
    actions = settle(room)
    assert [Left(candidate)] == [a for a in actions if isinstance(a, Left)]
    assert (CLOSE_REVOKED, "the interview has ended") == (candidate.close_code, candidate.close_reason)
    ended = {"type": "ended", "user_id": interviewer.user_id}
    assert (True, True) == (ended in sent(actions, observer), ended in sent(actions, interviewer))
    assert not observer.closed and not interviewer.closed
    with pytest.raises(Forbidden):
        room.join_versioned(link_hello("cam-again", token))
    assert Role.OBSERVER is join(room, Role.OBSERVER, "obi-again").role


def test_no_new_candidate_link_is_made_after_the_end() -> None:
    room, members = interview()
    interviewer = members[Role.INTERVIEWER]
    room.receive(interviewer, frame("end"))
    settle(room)
    before = state(room)
    room.receive(interviewer, frame("revoke", role="candidate", renew=True))
    assert [("forbidden", None)] == errors(room.take_actions(), interviewer)
    assert (before, None) == (state(room), room.secret_of(Role.CANDIDATE))


def test_what_the_candidate_typed_before_the_end_is_kept() -> None:
    room, members = interview()
    interviewer, candidate = members[Role.INTERVIEWER], members[Role.CANDIDATE]
    room.receive(candidate, append(room, 1, "committed "))
    settle(room)
    room.receive(candidate, append(room, 2, "in flight"))  # applied, not yet committed
    room.receive(interviewer, frame("end"))
    write, count = room.take_write()
    room.committed(count)
    actions = room.take_actions()
    assert ([2], "committed in flight") == ([r.version for r in write.records], room.document.text)
    assert True is json.loads(write.access or "{}")["ended"]
    assert [2] == [m["version"] for m in sent(actions, interviewer) if m["type"] == "update"]
    back = join(room, Role.INTERVIEWER, "ivy-again")
    assert "committed in flight" == sent(room.take_actions(), back)[0]["doc"]


def test_a_lock_after_the_end_is_refused_the_room_stays_read_only() -> None:
    room, members = interview()
    room.receive(members[Role.INTERVIEWER], frame("end"))
    settle(room)
    room.receive(members[Role.INTERVIEWER], frame("lock", locked=False))
    assert [("forbidden", None)] == errors(room.take_actions(), members[Role.INTERVIEWER])
    assert (False, True) == (room.access.locked, room.access.ended)


# Notes and secrets


def test_notes_and_link_secrets_never_reach_a_candidate_or_an_observer() -> None:
    room, members = interview()
    ivy = members[Role.INTERVIEWER]
    secrets = secrets_of(room)
    notes = [f"NOTE-{n}: hire? maybe" for n in range(4)]
    actions: list[Action] = []

    def record() -> None:
        actions.extend(settle(room))
        secrets.update(secrets_of(room))

    def send(session: Session, message: str) -> None:
        room.receive(session, message)
        record()

    ian = join(room, Role.INTERVIEWER, "ian")
    record()
    send(ivy, frame("notes", text=notes[0]))
    send(ivy, frame("lock", locked=True))
    send(ivy, frame("notes", text=notes[1]))
    send(ivy, frame("lock", locked=False))
    send(ivy, frame("revoke", role="candidate", renew=True))
    candidate = join(room, Role.CANDIDATE, "cam-2")
    record()
    send(ivy, frame("revoke", role="observer", renew=True))
    observer = join(room, Role.OBSERVER, "obi-2")
    record()
    send(candidate, append(room, 1, "typing"))
    send(ivy, frame("notes", text=notes[2]))
    send(ian, frame("notes", text=notes[3]))
    send(ivy, frame("end"))
    watched = {members[Role.CANDIDATE], members[Role.OBSERVER], candidate, observer}
    frames = [
        text
        for action in actions
        if isinstance(action, Send) and action.session in watched
        for text in ((action.message,) if isinstance(action.message, str) else action.message)
    ]
    assert {"welcome", "locked", "update", "ended"} <= {json.loads(text)["type"] for text in frames}
    assert [] == [text for text in frames for secret in (*notes, *secrets) if secret in text]
    assert ["", *notes[:3]] == [m["text"] for m in sent(actions, ian) if m["type"] == "notes"]
    assert [notes[3]] == [m["text"] for m in sent(actions, ivy) if m["type"] == "notes"]
    links = [(m["role"], m.get("token")) for m in sent(actions, ian) if m["type"] == "link"]
    assert ["candidate", "observer", "candidate"] == [role for role, _ in links]
    assert None is links[-1][1]  # the end revokes the candidate link
    assert {token for _, token in links[:2]} <= secrets


def test_notes_over_the_limit_are_refused_and_not_stored() -> None:
    room, members = interview(max_notes_chars=10)
    room.receive(members[Role.INTERVIEWER], frame("notes", text="x" * 11))
    actions = room.take_actions()
    assert ([("invalid_message", None)], "") == (errors(actions, members[Role.INTERVIEWER]), room.notes)
    assert [] == [a for a in actions if isinstance(a, Store)]


# What is stored


def test_making_a_room_private_stores_its_access_before_anyone_joins() -> None:
    room, _ = make_room()
    room.take_actions()
    secret = room.make_private()[Role.INTERVIEWER]
    assert [Store()] == room.take_actions()
    write, _ = room.take_write()
    stored = Access.from_json(write.access or "")
    assert (True, [Role.INTERVIEWER, Role.CANDIDATE, Role.OBSERVER]) == (
        stored.private,
        [link.role for link in stored.links],
    )
    assert secret not in (write.access or "")  # digests only
    link = stored.link_for(secret)
    assert Role.INTERVIEWER is (link.role if link is not None else None)


def test_no_one_is_welcomed_through_a_link_before_it_is_stored() -> None:
    room, _ = make_room()
    room.make_private()
    room.take_actions()
    interviewer = join(room, Role.INTERVIEWER)
    assert [] == sent(room.take_actions(), interviewer)
    commit(room)
    assert ["welcome", "notes"] == types(room.take_actions(), interviewer)


def test_notes_are_stored_with_the_access_state_and_other_writes_leave_both_out() -> None:
    room, members = interview()
    room.receive(members[Role.INTERVIEWER], frame("notes", text="good naming"))
    with_notes, count = room.take_write()
    room.committed(count)
    room.receive(members[Role.CANDIDATE], append(room, 1))
    without, _ = room.take_write()
    expected_access = room.access.to_json()
    assert (expected_access, "good naming") == (with_notes.access, with_notes.notes)
    assert None is without.access
    assert isinstance(without, RoomWrite)


def test_a_notes_message_is_held_for_other_interviewers_until_committed() -> None:
    room, members = interview()
    ian = join(room, Role.INTERVIEWER, "ian")
    room.take_actions()
    room.receive(members[Role.INTERVIEWER], frame("notes", text="later"))
    assert [] == sent(room.take_actions(), ian)
    commit(room)
    assert [{"type": "notes", "text": "later", "user_id": members[Role.INTERVIEWER].user_id}] == sent(
        room.take_actions(), ian
    )


# The property: what the room accepts is what the table allows, as of before each message

KINDS = ["push", "language", "cursor", "notes", "lock", "remove", "revoke", "end"]
steps = st.lists(
    st.tuples(st.sampled_from(list(Role)), st.sampled_from(KINDS), st.booleans(), st.booleans()),
    max_size=25,
)


def script_message(room: Room, kind: str, number: int, target: Session, renew: bool) -> str:
    """The message of step ``number`` of a script: each push, language and notes text is new."""
    match kind:
        case "push":
            return append(room, number + 1)
        case "language":
            return frame("language", language=f"lang{number}")
        case "cursor":
            return frame("cursor", version=room.document.version, anchor=0, head=0)
        case "notes":
            return frame("notes", text=f"note {number}")
        case "lock":
            return frame("lock", locked=not room.access.locked)
        case "remove":
            return frame("remove", user_id=target.user_id)
        case "revoke":
            return frame("revoke", role=target.role, renew=renew)
    return frame(kind)


def script_effect(
    room: Room,
    kind: str,
    number: int,
    before: State,
    target: Session,
    renew: bool,
    told: dict[Session, list[dict[str, Any]]],
) -> bool | None:
    """Whether step ``number`` took effect; None where an accepted message may change nothing.
    ``told`` is what each member was sent meanwhile."""
    _, version, _, access, _ = before
    match kind:
        case "push":
            return room.document.version == version + 1
        case "language":
            return room.language == f"lang{number}"
        case "cursor":
            if all(member.closed for member in told):
                return None  # no one to show it to
            return any(m["type"] == "cursor" for messages in told.values() for m in messages)
        case "notes":
            return room.notes == f"note {number}"
        case "lock":
            return room.access.locked is not Access.from_json(access).locked
        case "remove":
            return target.closed
        case "revoke":
            # Revoking a role without a live link, and not renewing it, changes nothing.
            had_link = Access.from_json(access).current(Role(target.role)) is not None
            return room.access.to_json() != access if had_link or renew else None
    return None if Access.from_json(access).ended else room.access.ended


@settings(max_examples=60, deadline=None)
@given(steps)
def test_the_room_accepts_exactly_what_the_table_allows(script: list[tuple[Role, str, bool, bool]]) -> None:
    room, members = interview()
    joined = itertools.count()
    for number, (role, kind, renew, at_candidate) in enumerate(script):
        session = members[role]
        if session.closed:  # removed or revoked: back through the role's link, if it has one
            secret = room.secret_of(role)
            if secret is None:
                continue
            try:
                session = members[role] = room.join_versioned(link_hello(f"{role.value}-{next(joined)}", secret))
            except Forbidden:
                continue  # a candidate once the interview ended
            settle(room)
        target = members[Role.CANDIDATE if at_candidate else Role.OBSERVER]
        if kind == "remove" and target.closed:
            continue
        locked, ended = room.access.locked, room.access.ended
        expected = allowed(role, ACTS[kind], locked=locked, ended=ended)
        # The table lets interviewers control; after the end, the room stays read-only and no
        # candidate is let in again.
        if ended and (kind == "lock" or (kind == "revoke" and renew and at_candidate)):
            expected = False
        before = state(room)
        room.receive(session, script_message(room, kind, number, target, renew))
        actions = settle(room)
        told = {s: sent(actions, s) for s in members.values() if s is not session}
        replies = errors(actions, session)
        changed = script_effect(room, kind, number, before, target, renew, told)
        step = (role, kind, locked, ended)
        assert expected == (not replies), step
        if changed is not None:
            assert expected == changed, step
        if not expected:
            assert [("read_only" if kind == "push" else "forbidden", number + 1 if kind == "push" else None)] == replies
            assert (before, False) == (state(room), session.closed)


# Catch-up is history: only from what the member was shown


def typed_and_deleted(room: Room, interviewer: Session) -> None:
    """The interviewer types a reference solution and deletes it again, before anyone else comes."""
    room.receive(interviewer, frame("push", version=room.document.version, seq=1, changes=[[0, "SOLUTION"]]))
    commit(room)
    room.receive(interviewer, frame("push", version=room.document.version, seq=2, changes=[[8]]))
    commit(room)
    room.take_actions()


def come_back(room: Room, candidate: Session, version: int, resume_token: str) -> Session:
    """The candidate's tab says hello again with the state it kept, through today's live link."""
    hello = Hello(
        type="hello",
        client_id=candidate.client_id,
        username="cam",
        version=version,
        resume_token=resume_token,
        token=room.secret_of(Role.CANDIDATE),
    )
    return room.join_versioned(hello)


@pytest.mark.parametrize("role", [Role.CANDIDATE, Role.OBSERVER])
def test_a_hello_from_an_old_version_gets_a_role_without_history_the_text_not_the_updates(role: Role) -> None:
    room = private_room()
    interviewer = join(room, Role.INTERVIEWER)
    commit(room)
    typed_and_deleted(room, interviewer)
    member = room.join_versioned(
        Hello(type="hello", client_id="nosy", username="nosy", version=0, token=room.secret_of(role))
    )
    commit(room)
    burst = sent(room.take_actions(), member)
    assert ("welcome", "", 2) == (burst[0]["type"], burst[0].get("doc"), burst[0]["version"])
    assert [] == [m for m in burst if m["type"] == "update"]
    assert "SOLUTION" not in json.dumps(burst)


def test_a_candidate_coming_back_is_caught_up_from_where_it_was_shown() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    shown = room.document.version
    token = candidate.resume_token
    room.leave(candidate)
    room.receive(interviewer, append(room, 1, "while away"))
    commit(room)
    room.take_actions()
    again = come_back(room, candidate, shown, token)
    commit(room)
    burst = sent(room.take_actions(), again)
    assert (shown, None) == (burst[0]["version"], burst[0].get("doc"))
    assert ["update"] == [m["type"] for m in burst[1:] if m["type"] == "update"]


def test_an_interviewer_may_be_caught_up_from_any_kept_version() -> None:
    room = private_room()
    interviewer = join(room, Role.INTERVIEWER)
    commit(room)
    typed_and_deleted(room, interviewer)
    other = room.join_versioned(
        Hello(type="hello", client_id="ivy-2", username="ivy", version=0, token=room.secret_of(Role.INTERVIEWER))
    )
    commit(room)
    burst = sent(room.take_actions(), other)
    assert 2 == len([m for m in burst if m["type"] == "update"])


def test_a_removed_member_is_told_nothing_that_happened_after_its_removal() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    room.receive(interviewer, frame("remove", user_id=candidate.user_id))
    room.receive(interviewer, append(room, 1, "AFTER-REMOVAL"))
    commit(room)  # one commit carries both
    actions = room.take_actions()
    assert [] == [m for m in sent(actions, candidate) if m["type"] == "update"]
    assert [Left(candidate)] == [a for a in actions if isinstance(a, Left)]


def test_a_renewed_link_is_caught_up_only_from_when_it_was_first_used() -> None:
    room, members = interview()
    candidate, interviewer = members[Role.CANDIDATE], members[Role.INTERVIEWER]
    shown, token = room.document.version, candidate.resume_token
    room.receive(interviewer, frame("remove", user_id=candidate.user_id))
    commit(room)
    typed_and_deleted(room, interviewer)
    room.receive(interviewer, frame("revoke", role="candidate", renew=True))
    commit(room)
    room.take_actions()
    # The same tab opens the new link, with the state it kept from before its removal.
    again = come_back(room, candidate, shown, token)
    commit(room)
    burst = sent(room.take_actions(), again)
    assert (room.document.version, "") == (burst[0]["version"], burst[0].get("doc"))
    assert "SOLUTION" not in json.dumps(burst)


def test_a_links_catch_up_floor_is_stored_with_the_room() -> None:
    room, _ = interview()
    link = room.access.current(Role.CANDIDATE)
    assert link is not None and link.first_shown is not None
    stored = Access.from_json(room.access.to_json()).current(Role.CANDIDATE)
    assert link.first_shown == (stored.first_shown if stored is not None else None)
