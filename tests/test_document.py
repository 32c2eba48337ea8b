"""The room authority: rebase, dedup, history bounds and size limits, plus a convergence model."""

from __future__ import annotations

import gc
import random
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.changes import ChangeSet, utf16_len
from rooms.document import ClientId, Document, Unchanged, Update, caret_after
from rooms.errors import DocumentTooLarge, InvalidChanges, Resync, SeqReused, VersionFromFuture, VersionTooOld
from rooms.replica import Replica

A = ClientId("a")
B = ClientId("b")


def insert(doc_length: int, at: int, text: str) -> ChangeSet:
    return ChangeSet.of_replace(doc_length, at, at, text)


def test_push_at_current_version_applies_and_increments_version() -> None:
    document = Document("hello")
    update = document.push(A, 1, 0, insert(5, 5, " world"))
    assert update is not None
    assert (1, "hello world") == (update.version, document.text)
    assert [update] == document.updates_since(0)


def test_the_history_is_not_walked_by_the_garbage_collector() -> None:
    """Thousands of kept updates per room must not make every collection longer."""
    document = Document(history_limit=5_000)
    for seq in range(1, 501):
        document.push(A, seq, document.version, insert(document.length, 0, "x"))
    gc.collect()
    tracked = len(gc.get_objects())
    for seq in range(501, 2501):
        document.push(A, seq, document.version - 1, insert(document.length - 1, 0, "y"))
    gc.collect()
    assert len(gc.get_objects()) - tracked < 20
    updates = document.updates_since(2490)  # and the updates come back whole
    assert [(u.version, u.seq) for u in updates] == [(v, v) for v in range(2491, 2501)]
    assert document.rebase(insert(document.length_at(2490), 0, "z"), 2490).length == document.length


def test_push_on_stale_version_is_rebased_over_later_updates() -> None:
    document = Document("ac")
    document.push(A, 1, 0, insert(2, 1, "b"))  # "abc"
    update = document.push(B, 1, 0, insert(2, 2, "d"))  # made on "ac": append "d"
    assert update is not None
    assert "abcd" == document.text
    assert [3, [0, "d"]] == update.changes.to_json()


def test_concurrent_inserts_at_same_position_put_earlier_commit_first() -> None:
    document = Document("")
    document.push(A, 1, 0, insert(0, 0, "first"))
    document.push(B, 1, 0, insert(0, 0, "second"))
    assert "firstsecond" == document.text


def test_resend_of_applied_seq_is_ignored() -> None:
    document = Document("")
    assert document.push(A, 1, 0, insert(0, 0, "x")) is not None
    assert document.push(A, 1, 0, insert(0, 0, "x")) is None
    assert ("x", 1) == (document.text, document.version)


def test_older_seq_from_same_client_is_refused_as_reuse() -> None:
    document = Document("")
    document.push(A, 2, 0, insert(0, 0, "x"))
    with pytest.raises(SeqReused):
        document.push(A, 1, 1, insert(1, 0, "y"))
    assert "x" == document.text


def test_resend_rebased_by_the_client_is_recognised_as_the_same_change() -> None:
    document = Document("ab")
    document.push(B, 1, 0, insert(2, 0, ">"))  # v1: ">ab"
    document.push(A, 1, 0, insert(2, 2, "!"))  # v2: ">ab!", A's push made on v0
    document.push(B, 2, 2, insert(4, 4, "?"))  # v3
    # A saw B's first update before its connection dropped, and rebased its batch over it.
    resend = insert(2, 2, "!").map(insert(2, 0, ">"))
    assert document.push(A, 1, 1, resend) is None
    assert document.push(A, 1, 0, insert(2, 2, "!")) is None
    assert (">ab!?", 3) == (document.text, document.version)


def test_same_seq_with_other_changes_is_refused_as_reuse() -> None:
    document = Document("ab")
    document.push(A, 1, 0, insert(2, 2, "!"))
    with pytest.raises(SeqReused) as caught:
        document.push(A, 1, 0, insert(2, 0, "?"))
    assert (1, 1) == (caught.value.seq, caught.value.last)
    assert "ab!" == document.text


def test_resend_split_differently_is_still_the_same_change() -> None:
    document = Document("abcd")
    document.push(A, 1, 0, ChangeSet.from_json([[1, "x"], 3]))
    assert document.push(A, 1, 0, ChangeSet.from_json([[1], [0, "x"], 1, 2])) is None


def test_resend_beyond_the_history_cannot_be_checked_and_is_ignored() -> None:
    document = Document("", history_limit=1)
    document.push(A, 1, 0, insert(0, 0, "a"))
    document.push(B, 1, 1, insert(1, 1, "b"))
    assert document.push(A, 1, 0, insert(0, 0, "zzz")) is None
    assert "ab" == document.text


def test_every_document_has_its_own_epoch() -> None:
    assert Document().epoch != Document().epoch
    assert "e1" == Document(epoch="e1").epoch


def test_same_seq_from_different_clients_both_apply() -> None:
    document = Document("")
    document.push(A, 1, 0, insert(0, 0, "a"))
    document.push(B, 1, 1, insert(1, 1, "b"))
    assert "ab" == document.text


def test_push_older_than_history_raises_version_too_old() -> None:
    document = Document("", history_limit=2)
    for seq in range(1, 4):
        document.push(A, seq, seq - 1, insert(seq - 1, seq - 1, "x"))
    assert 1 == document.oldest_version
    with pytest.raises(VersionTooOld) as caught:
        document.push(B, 1, 0, insert(0, 0, "y"))
    assert (0, 1, 3) == (caught.value.version, caught.value.oldest, caught.value.current)
    assert "xxx" == document.text


def test_push_from_the_future_raises() -> None:
    document = Document("")
    with pytest.raises(VersionFromFuture):
        document.push(A, 1, 5, insert(0, 0, "x"))
    assert 0 == document.version


def test_changes_for_wrong_length_raise_and_leave_document_intact() -> None:
    document = Document("abc")
    with pytest.raises(InvalidChanges):
        document.push(A, 1, 0, insert(10, 0, "x"))
    assert ("abc", 0) == (document.text, document.version)
    # The failed push did not consume the seq: the client may send it again, fixed.
    assert document.push(A, 1, 0, insert(3, 0, "x")) is not None


def test_push_over_size_limit_is_refused_before_anything_changes() -> None:
    document = Document("abc", max_chars=5)
    with pytest.raises(DocumentTooLarge) as caught:
        document.push(A, 1, 0, insert(3, 3, "def"))
    assert (6, 5) == (caught.value.length, caught.value.limit)
    assert ("abc", 0, None) == (document.text, document.version, document.last_seq(A))


def test_size_limit_counts_characters_not_utf16_units() -> None:
    document = Document("", max_chars=2)
    document.push(A, 1, 0, insert(0, 0, "😀😀"))
    assert "😀😀" == document.text
    assert 4 == document.length


def test_shrinking_a_document_over_a_lowered_limit_is_allowed() -> None:
    document = Document("abcdef", max_chars=3)
    document.push(A, 1, 0, ChangeSet.of_replace(6, 0, 1, ""))
    assert "bcdef" == document.text


def test_replace_turns_full_text_into_minimal_change() -> None:
    document = Document("def f():\n    pass\n")
    update = document.replace("def f():\n    return 1\n", A, 1)
    assert update is not None
    assert "def f():\n    return 1\n" == document.text
    assert update.changes.length == utf16_len("def f():\n    pass\n")
    assert 1 == len([p for p in update.changes.to_json() if isinstance(p, list)])


def test_replace_with_same_text_changes_nothing() -> None:
    document = Document("same")
    assert document.replace("same", A, 1) is None
    assert 0 == document.version


def test_replace_over_limit_raises() -> None:
    document = Document("", max_chars=3)
    with pytest.raises(DocumentTooLarge):
        document.replace("abcd", A, 1)
    assert "" == document.text


def test_dedup_table_is_bounded_least_recently_used_first() -> None:
    document = Document("", dedup_limit=2)
    for index, client in enumerate(("c1", "c2", "c3")):
        document.push(ClientId(client), 1, index, insert(index, 0, "x"))
    assert document.last_seq(ClientId("c1")) is None
    assert 1 == document.last_seq(ClientId("c3"))


def test_length_at_reports_past_lengths() -> None:
    document = Document("ab")
    document.push(A, 1, 0, insert(2, 2, "cd"))
    assert (2, 4) == (document.length_at(0), document.length_at(1))


def test_caret_after_is_end_of_last_insertion() -> None:
    assert 5 == caret_after(ChangeSet.from_json([2, [0, "abc"], 4]))
    assert 2 == caret_after(ChangeSet.from_json([2, [3], 4]))
    assert 0 == caret_after(ChangeSet.from_json([6]))


# A model of the whole system without a network: replicas, a server document, and message
# queues in between, driven in a random order. Every replica must converge on the server's
# text, and every token typed must be in it exactly once.

ALPHABET = "ab\n漢😀"


def _run_model(seed: int, clients: int, steps: int, deletes: bool, reconnects: bool = False) -> None:
    rng = random.Random(seed)
    document = Document("", history_limit=10_000)
    replicas = [Replica(f"c{i}") for i in range(clients)]
    to_server: list[deque[dict[str, Any]]] = [deque() for _ in replicas]
    to_client: list[deque[dict[str, Any]]] = [deque() for _ in replicas]
    typed: list[str] = []

    def deliver_to_server(index: int) -> None:
        push = to_server[index].popleft()
        update = document.push(
            ClientId(replicas[index].client_id), push["seq"], push["version"], ChangeSet.from_json(push["changes"])
        )
        if isinstance(update, Unchanged):
            # A push that changed nothing (it deleted what was deleted already): only its author hears.
            to_client[index].append({"type": "ack", "seq": update.seq, "version": update.version})
        elif update is not None:
            message = {
                "version": update.version,
                "client_id": update.client_id,
                "seq": update.seq,
                "changes": update.changes.to_json(),
            }
            for queue in to_client:
                queue.append(message)

    def deliver_to_client(index: int) -> None:
        message = to_client[index].popleft()
        replica = replicas[index]
        out = replica.ack(message) if message.get("type") == "ack" else replica.update(message)
        if out is not None:
            to_server[index].append(out)

    for _ in range(steps):
        index = rng.randrange(clients)
        action = rng.random()
        replica = replicas[index]
        if action < 0.4:
            length = replica.length
            token = f"<{len(typed)}{rng.choice(ALPHABET)}>"
            typed.append(token)
            # Insert between whole tokens ("<" starts one, ">" ends it), so each stays intact.
            text = replica.text
            at = rng.choice([0] + [i + 1 for i, char in enumerate(text) if char == ">"])
            position = utf16_len(text[:at])
            out = replica.edit(ChangeSet.of_replace(length, position, position, token))
            if out is not None:
                to_server[index].append(out)
        elif action < 0.45 and deletes and replica.text:
            text = replica.text
            start = rng.randrange(len(text))
            end = min(len(text), start + rng.randint(1, 3))
            out = replica.edit(ChangeSet.of_replace(replica.length, utf16_len(text[:start]), utf16_len(text[:end]), ""))
            if out is not None:
                to_server[index].append(out)
        elif reconnects and action < 0.5:
            # The connection drops: messages in flight either way may be lost, then the
            # client says hello at its version, gets the updates it missed, and resends.
            while to_server[index] and rng.random() < 0.5:
                deliver_to_server(index)
            to_server[index].clear()
            to_client[index].clear()
            resend = replica.welcome({"type": "welcome", "version": replica.version})
            for update in document.updates_since(replica.version):
                to_client[index].append(
                    {
                        "version": update.version,
                        "client_id": update.client_id,
                        "seq": update.seq,
                        "changes": update.changes.to_json(),
                    }
                )
            if resend is not None:
                to_server[index].append(resend)
        elif action < 0.75 and to_server[index]:
            deliver_to_server(index)
        elif to_client[index]:
            deliver_to_client(index)

    while any(to_server) or any(to_client):
        for index in range(clients):
            while to_server[index]:
                deliver_to_server(index)
            while to_client[index]:
                deliver_to_client(index)

    for replica in replicas:
        assert not replica.has_unconfirmed
        assert document.text == replica.text
        assert document.version == replica.version
    if not deletes:
        for token in typed:
            assert 1 == document.text.count(token), token


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), clients=st.integers(2, 5))
def test_replicas_converge_and_keep_every_insert(seed: int, clients: int) -> None:
    _run_model(seed, clients, steps=150, deletes=False)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), clients=st.integers(2, 5))
def test_replicas_converge_with_deletes(seed: int, clients: int) -> None:
    _run_model(seed, clients, steps=150, deletes=True)


def test_replace_refuses_lone_surrogates() -> None:
    document = Document("ok")
    with pytest.raises(InvalidChanges):
        document.replace("a\ud800", A, 1)
    assert ("ok", 0) == (document.text, document.version)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32), clients=st.integers(2, 4), deletes=st.booleans())
def test_replicas_converge_across_reconnects_and_resends(seed: int, clients: int, deletes: bool) -> None:
    _run_model(seed, clients, steps=150, deletes=deletes, reconnects=True)


def test_resend_of_another_length_is_refused_as_reuse() -> None:
    document = Document("abcdefg")
    document.push(A, 1, 0, ChangeSet.from_json([5, [0, "!"], 2]))
    with pytest.raises(SeqReused):
        document.push(A, 1, 0, ChangeSet.from_json([5, [0, "!"], 6]))


def test_a_negative_version_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Document("", version=-1)


def test_replace_resend_is_ignored() -> None:
    document = Document("")
    document.replace("a", A, 1)
    assert document.replace("b", A, 1) is None
    assert "a" == document.text


# The cost of one push is known, and bounded, before it is paid.


def test_a_push_that_changes_nothing_makes_no_version_and_is_not_recorded() -> None:
    document = Document("x" * 1000)
    result = document.push(A, 1, 0, ChangeSet.from_json([1] * 1000))
    assert Unchanged(0, 1) == result
    assert (0, [], None) == (document.version, document.updates_since(0), document.last_seq(A))
    # Acked again if resent (nothing to apply twice), and the next seq goes on as usual.
    assert Unchanged(0, 1) == document.push(A, 1, 0, ChangeSet.from_json([1000]))
    assert isinstance(document.push(A, 2, 0, insert(1000, 0, "!")), Update)


def test_a_push_whose_deletion_was_already_made_is_unchanged() -> None:
    document = Document("abc")
    document.push(A, 1, 0, ChangeSet.from_json([1, [1], 1]))
    assert Unchanged(1, 1) == document.push(B, 1, 0, ChangeSet.from_json([1, [1], 1]))
    assert ("ac", 1) == (document.text, document.version)


def test_an_empty_push_of_the_wrong_length_is_still_invalid() -> None:
    document = Document("abc")
    with pytest.raises(InvalidChanges):
        document.push(A, 1, 0, ChangeSet.from_json([4]))


def test_the_history_forgets_its_oldest_entries_beyond_its_byte_limit() -> None:
    document = Document(history_limit=1_000, history_limit_bytes=5_000)
    for seq in range(1, 101):
        document.push(A, seq, document.version, insert(document.length, 0, "w" * 100))
    assert document.history_bytes <= 5_000
    kept = document.version - document.oldest_version
    assert 0 < kept < 100
    assert kept == len(document.updates_since(document.oldest_version))
    with pytest.raises(VersionTooOld):
        document.updates_since(document.oldest_version - 1)
    # What is kept still rebases a push made at the oldest kept version.
    update = document.push(B, 1, document.oldest_version, insert(document.length_at(document.oldest_version), 0, "<"))
    assert isinstance(update, Update)
    assert 1 == document.text.count("<")


def test_a_restored_document_keeps_its_history_within_the_byte_limit() -> None:
    source = Document(history_limit=1_000)
    for seq in range(1, 51):
        source.push(A, seq, source.version, insert(source.length, source.length, "v" * 100))
    restored = Document.restored(
        "", 0, source.updates_since(0), {A: (50, 50)}, history_limit=1_000, history_limit_bytes=3_000, epoch="e"
    )
    assert (source.text, 50) == (restored.text, restored.version)
    assert restored.history_bytes <= 3_000
    assert 0 < restored.version - restored.oldest_version < 50
    assert [u.version for u in source.updates_since(restored.oldest_version)] == [
        u.version for u in restored.updates_since(restored.oldest_version)
    ]


def test_rebase_steps_are_read_from_running_totals() -> None:
    document = Document("abcdef", history_limit=3)
    document.push(A, 1, 0, ChangeSet.from_json([1, [1], 4]))  # 3 parts
    document.push(A, 2, 1, ChangeSet.from_json([[0, "x"], 5]))  # 2 parts
    document.push(A, 3, 2, ChangeSet.from_json([6, [0, "y"]]))  # 2 parts
    document.push(A, 4, 3, ChangeSet.from_json([7, [0, "z"]]))  # 2 parts; the first is forgotten
    assert 0 == document.rebase_steps(4, 5)
    assert 5 + 2 == document.rebase_steps(3, 5)
    assert 3 * 5 + 2 + 2 + 2 == document.rebase_steps(1, 5)
    with pytest.raises(VersionTooOld):
        document.rebase_steps(0, 5)
    with pytest.raises(VersionFromFuture):
        document.rebase_steps(5, 5)


def test_a_push_beyond_the_rebase_bounds_raises_resync_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    document = Document("")
    for seq in range(1, 301):
        document.push(A, seq, seq - 1, insert(seq - 1, seq - 1, "x"))
    mapped: list[int] = []
    original = ChangeSet.map
    monkeypatch.setattr(ChangeSet, "map", lambda self, *a: mapped.append(1) or original(self, *a))
    with pytest.raises(Resync):
        document.push(B, 1, 0, insert(0, 0, "late"), max_versions=200, max_steps=200_000)
    with pytest.raises(Resync):
        document.push(B, 1, 250, ChangeSet.from_json([[0, "a"]] * 250 + [250]), max_versions=200, max_steps=10_000)
    assert ([], 300) == (mapped, document.version)
    update = document.push(B, 1, 150, insert(150, 0, "ok"), max_versions=200, max_steps=200_000)
    assert isinstance(update, Update) and document.text.startswith("ok")


def test_a_resend_beyond_the_rebase_bounds_is_ignored_without_work(monkeypatch: pytest.MonkeyPatch) -> None:
    document = Document("")
    document.push(B, 1, 0, insert(0, 0, "mine"))
    for seq in range(1, 301):
        document.push(A, seq, document.version, insert(document.length, 0, "x"))
    mapped: list[int] = []
    original = ChangeSet.map
    monkeypatch.setattr(ChangeSet, "map", lambda self, *a: mapped.append(1) or original(self, *a))
    assert document.push(B, 1, 0, insert(0, 0, "mine"), max_versions=200, max_steps=200_000) is None
    assert [] == mapped


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet='a"\\\t\n😀漢', max_size=30), min_size=1, max_size=20), st.data())
def test_the_catch_up_estimate_is_never_below_its_encoded_size(texts: list[str], data: st.DataObject) -> None:
    from rooms.protocol import encode_changes, encode_update

    document = Document()
    for seq, text in enumerate(texts, 1):
        at = data.draw(st.integers(0, len(document.text)))
        position = utf16_len(document.text[:at])
        document.push(A, seq, document.version, insert(document.length, position, text or "-"), "user-1")
    since = data.draw(st.integers(0, document.version))
    encoded = sum(
        len(encode_update(u.version, u.client_id, u.seq, encode_changes(u.changes.to_json()), u.user_id))
        for u in document.updates_since(since)
    )
    assert encoded <= document.bytes_since(since)


def test_replace_keeps_to_its_diff_budget_and_stays_correct() -> None:
    rng = random.Random(7)
    old = "".join(rng.choice("ab😀") for _ in range(3_000))
    new = "".join(rng.choice("ab😀") for _ in range(3_000))
    document = Document(old, diff_max_steps=50)
    update = document.replace(new, A, 1)
    assert update is not None and new == document.text
    assert update.changes.part_count <= 3  # one replacement of the differing middle


def test_a_full_text_replacement_is_split_into_at_most_a_bounded_number_of_edits() -> None:
    from rooms.document import FULL_TEXT_DIFF_MAX_EDITS

    old = "".join(f"line {index}\n" for index in range(2_000))
    new = old.replace("1", "one")  # hundreds of scattered edits
    document = Document(old)
    update = document.replace(new, ClientId("seed-a"), 1)
    assert update is not None and new == document.text
    assert update.changes.part_count <= 2 * FULL_TEXT_DIFF_MAX_EDITS + 1
