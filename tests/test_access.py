"""Roles, the permission table and the links of private rooms (`rooms.access`): pure functions."""

from __future__ import annotations

import base64
import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rooms.access import (
    LINK_SECRET_CHARS,
    MAX_REVOKED_LINKS,
    Access,
    Act,
    Link,
    Role,
    admit,
    allowed,
    merge,
    refusal,
    secret_digest,
)
from rooms.errors import Forbidden, ReadOnly

# The table of `allowed`'s docstring, written out again: "yes", "no", or a footnote ([1]: unless
# the room is locked or ended, [2]: unless it is ended, [3]: unless runs are not allowed, [4]:
# unless runs are not allowed or the room is ended). None is a member of an open room.
TABLE: dict[Role | None, dict[Act, str]] = {
    None: dict(zip(Act, ["yes", "yes", "yes", "yes", "yes", "no", "no", "[3]", "yes", "yes"], strict=True)),
    Role.INTERVIEWER: dict(zip(Act, ["yes"] * 10, strict=True)),
    Role.CANDIDATE: dict(zip(Act, ["[1]", "[1]", "no", "[2]", "no", "no", "no", "[4]", "no", "no"], strict=True)),
    Role.OBSERVER: dict(zip(Act, ["no"] * 10, strict=True)),
}
ROW_NAMES = {None: "open room", **{role: role.value for role in Role}}


def expected(role: Role | None, act: Act, locked: bool, ended: bool, runs_allowed: bool = True) -> bool:
    cell = TABLE[role][act]
    return (
        cell == "yes"
        or (cell == "[1]" and not (locked or ended))
        or (cell == "[2]" and not ended)
        or (cell == "[3]" and runs_allowed)
        or (cell == "[4]" and runs_allowed and not ended)
    )


@pytest.mark.parametrize("runs_allowed", [True, False], ids=["runs", "no_runs"])
@pytest.mark.parametrize("ended", [False, True], ids=["running", "ended"])
@pytest.mark.parametrize("locked", [False, True], ids=["unlocked", "locked"])
@pytest.mark.parametrize("act", list(Act), ids=str)
@pytest.mark.parametrize("role", [None, *Role], ids=lambda role: ROW_NAMES[role].replace(" ", "_"))
def test_allowed_follows_the_permission_table(
    role: Role | None, act: Act, locked: bool, ended: bool, runs_allowed: bool
) -> None:
    assert expected(role, act, locked, ended, runs_allowed) == allowed(
        role, act, locked=locked, ended=ended, runs_allowed=runs_allowed
    )


def test_the_docstring_table_is_the_table_the_tests_check() -> None:
    docstring = allowed.__doc__ or ""
    header = re.search(r"^\s*role\s+(.+)$", docstring, re.MULTILINE)
    assert header is not None
    assert [act.value for act in Act] == header.group(1).split()
    rows = {}
    for role, name in ROW_NAMES.items():
        row = re.search(rf"^\s*{name}\s+(.+)$", docstring, re.MULTILINE)
        assert row is not None, name
        rows[role] = row.group(1).split()
    assert {role: list(cells.values()) for role, cells in TABLE.items()} == rows


@pytest.mark.parametrize("role", [None, *Role])
def test_a_refused_edit_is_read_only(role: Role | None) -> None:
    error = refusal(role, Act.EDIT)
    assert (ReadOnly, "read_only") == (type(error), error.code)
    assert isinstance(error, Forbidden)  # a client that knows only `forbidden` still understands it


@pytest.mark.parametrize(
    ("role", "act"), list(itertools.product([None, *Role], [act for act in Act if act is not Act.EDIT]))
)
def test_any_other_refused_act_is_forbidden(role: Role | None, act: Act) -> None:
    error = refusal(role, act)
    assert (Forbidden, "forbidden") == (type(error), error.code)
    assert act.value in str(error)


def test_a_refused_run_says_running_code_is_not_allowed() -> None:
    assert "running code is not allowed for the candidate role now" in str(refusal(Role.CANDIDATE, Act.RUN))


links = st.builds(
    Link,
    link_id=st.text(max_size=20),
    role=st.sampled_from(Role),
    digest=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    created=st.floats(min_value=0, max_value=4e9),
    revoked=st.none() | st.floats(min_value=0, max_value=4e9),
)


@given(
    st.builds(
        Access,
        private=st.booleans(),
        locked=st.booleans(),
        ended=st.booleans(),
        links=st.lists(links),
        runs_allowed=st.booleans(),
        question=st.none() | st.text(max_size=64),
    )
)
def test_access_survives_its_json(access: Access) -> None:
    assert access == Access.from_json(access.to_json())


def test_access_stored_before_rooms_ran_code_allows_runs_and_has_no_question() -> None:
    old = '{"private":true,"locked":true,"ended":false,"links":[]}'
    assert Access(private=True, locked=True) == Access.from_json(old)
    assert (True, None) == (Access.from_json(old).runs_allowed, Access.from_json(old).question)


def test_an_open_rooms_access_with_a_question_is_still_open() -> None:
    stored = Access(runs_allowed=False, question="two-sum").to_json()
    assert (False, False, "two-sum") == (
        Access.from_json(stored).private,
        Access.from_json(stored).runs_allowed,
        Access.from_json(stored).question,
    )


def test_no_stored_access_is_an_open_room() -> None:
    assert Access() == Access.from_json("")
    assert not Access.from_json("").private


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{", id="not_json"),
        pytest.param('{"private":true,"locked":false,"ended":false,"links":[["a","chief","d",1,null]]}', id="role"),
        pytest.param('{"private":true,"locked":false,"ended":false}', id="no_links"),
        pytest.param("[]", id="not_an_object"),
        pytest.param('{"private":true,"locked":false,"ended":false,"links":[["a","observer"]]}', id="short_link"),
        pytest.param('{"private":false,"locked":false,"ended":false,"links":[],"runs_allowed":1}', id="runs_allowed"),
        pytest.param('{"private":false,"locked":false,"ended":false,"links":[],"question":7}', id="question"),
    ],
)
def test_damaged_access_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Access.from_json(text)


def test_a_link_secret_carries_at_least_128_random_bits() -> None:
    _, secret = Access(private=True).add_link(Role.CANDIDATE, 1.0)
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    assert (LINK_SECRET_CHARS, True) == (len(secret), len(raw) * 8 >= 128)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)  # fits a URL as it is


def test_link_secrets_are_never_made_twice() -> None:
    access = Access(private=True)
    made = [access.add_link(Role.CANDIDATE, float(n)) for n in range(200)]
    assert 200 == len({secret for _, secret in made}) == len({link.link_id for link, _ in made})


def test_nothing_stored_gives_a_secret_back() -> None:
    access = Access(private=True)
    link, secret = access.add_link(Role.OBSERVER, 1.0)
    stored = access.to_json()
    assert secret_digest(secret) == link.digest
    # Neither the secret nor anything it could be made from again: it is random, not derived.
    assert secret not in stored
    assert secret not in repr(Access.from_json(stored))


def test_link_for_finds_a_live_link_by_its_secret() -> None:
    access = Access(private=True)
    link, secret = access.add_link(Role.CANDIDATE, 1.0)
    assert link is access.link_for(secret)


def test_link_for_finds_a_revoked_link_with_its_time() -> None:
    access = Access(private=True)
    link, secret = access.add_link(Role.CANDIDATE, 1.0)
    assert [link.link_id] == access.revoke(Role.CANDIDATE, 5.0)
    found = access.link_for(secret)
    assert (link, 5.0) == (found, None if found is None else found.revoked)


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(Access(private=True).add_link(Role.INTERVIEWER, 1.0)[1], id="another_rooms"),
        pytest.param("", id="empty"),
    ],
)
def test_link_for_refuses_a_secret_that_is_not_one_of_the_rooms(secret: str) -> None:
    access = Access(private=True)
    access.add_link(Role.INTERVIEWER, 1.0)
    assert None is access.link_for(secret)


def test_link_for_refuses_an_overlong_secret_without_looking_it_up() -> None:
    overlong = "a" * (2 * LINK_SECRET_CHARS + 1)
    # Even a link whose digest matches: the length alone refuses it.
    access = Access(private=True, links=[Link("x", Role.INTERVIEWER, secret_digest(overlong), 1.0)])
    assert None is access.link_for(overlong)


def test_current_is_the_newest_live_link_of_the_role() -> None:
    access = Access(private=True)
    access.add_link(Role.CANDIDATE, 1.0)
    access.revoke(Role.CANDIDATE, 2.0)
    renewed, _ = access.add_link(Role.CANDIDATE, 3.0)
    assert (renewed, None) == (access.current(Role.CANDIDATE), access.current(Role.OBSERVER))
    assert access.is_live(renewed.link_id)


def test_revoke_ends_every_live_link_of_the_role_and_no_other() -> None:
    access = Access(private=True)
    candidates = [access.add_link(Role.CANDIDATE, 1.0)[0] for _ in range(2)]
    observer, _ = access.add_link(Role.OBSERVER, 1.0)
    assert [link.link_id for link in candidates] == access.revoke(Role.CANDIDATE, 2.0)
    assert ([2.0, 2.0], None) == ([link.revoked for link in candidates], observer.revoked)
    assert [] == access.revoke(Role.CANDIDATE, 3.0)  # nothing live left to revoke


def test_revoking_in_a_loop_keeps_at_most_max_revoked_links() -> None:
    access = Access(private=True)
    interviewer, _ = access.add_link(Role.INTERVIEWER, 0.0)
    revoked_ids = []
    for step in range(MAX_REVOKED_LINKS + 15):
        revoked_ids.append(access.add_link(Role.CANDIDATE, float(step))[0].link_id)
        access.revoke(Role.CANDIDATE, float(step))
    kept = [link.link_id for link in access.links if link.revoked is not None]
    # The oldest went first; the live link stays.
    assert revoked_ids[-MAX_REVOKED_LINKS:] == kept
    assert access.is_live(interviewer.link_id)


def test_admit_gives_a_live_links_role_and_the_link() -> None:
    access = Access(private=True)
    links = {role: access.add_link(role, 1.0) for role in Role}
    for role, (link, secret) in links.items():
        assert (role, link) == admit(access, secret, open_rooms=False)


@pytest.mark.parametrize("token", [None, "x", "a-token"])
def test_admit_takes_anyone_into_an_open_room_whatever_token_it_brings(token: str | None) -> None:
    assert (None, None) == admit(Access(), token, open_rooms=True)


def test_admit_refuses_an_open_room_on_a_server_without_open_rooms() -> None:
    with pytest.raises(Forbidden, match="no open rooms"):
        admit(Access(), None, open_rooms=False)


def test_admit_refuses_a_revoked_link_and_a_candidate_once_ended() -> None:
    access = Access(private=True)
    _, candidate = access.add_link(Role.CANDIDATE, 1.0)
    _, observer = access.add_link(Role.OBSERVER, 1.0)
    access.ended = True
    with pytest.raises(Forbidden, match="ended"):
        admit(access, candidate, open_rooms=True)
    assert Role.OBSERVER is admit(access, observer, open_rooms=True)[0]
    access.revoke(Role.OBSERVER, 2.0)
    with pytest.raises(Forbidden, match="revoked"):
        admit(access, observer, open_rooms=True)


def test_two_changes_of_one_access_state_are_merged_each_side_keeping_its_own() -> None:
    """Two processes changed the same stored state at once (`rooms.access.merge`)."""
    base = Access(private=True)
    base.add_link(Role.CANDIDATE, 1.0)
    base.add_link(Role.OBSERVER, 1.0)
    mine, theirs = Access.from_json(base.to_json()), Access.from_json(base.to_json())
    mine.locked = True  # here: locked, the candidate link renewed
    mine.revoke(Role.CANDIDATE, 2.0)
    made_here, _ = mine.add_link(Role.CANDIDATE, 2.0)
    theirs.question = "fizzbuzz"  # there: a question, the observer link revoked, first shown
    theirs.revoke(Role.OBSERVER, 3.0)
    theirs.links[0].first_shown = 7
    merged = merge(base, mine, theirs)
    assert (True, "fizzbuzz", False, True) == (merged.locked, merged.question, merged.ended, merged.runs_allowed)
    assert made_here.link_id == (merged.current(Role.CANDIDATE) or made_here).link_id
    assert merged.current(Role.OBSERVER) is None
    old_candidate = merged.by_id(base.links[0].link_id)
    assert old_candidate is not None and (2.0, 7) == (old_candidate.revoked, old_candidate.first_shown)
    # Both changed one setting: ours wins; an end on either side ends it.
    theirs.locked, theirs.ended = False, True
    both = merge(base, mine, theirs)
    assert (True, True) == (both.locked, both.ended)
    # A link dropped by the other side (revoked, past the kept number) is not brought back.
    dropped = Access.from_json(theirs.to_json())
    dropped.links = [link for link in dropped.links if link.role is not Role.OBSERVER]
    assert merge(base, mine, dropped).by_id(base.links[1].link_id) is None
