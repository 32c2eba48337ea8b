"""Properties and unit tests of rooms.changes.

The exact agreement with CodeMirror is checked by tests/test_changes_differential.py; here the
algebra (compose, map convergence, diff) is checked on Hypothesis-generated documents that mix
ASCII, newlines, CJK, emoji (astral: two UTF-16 units each) and combining marks, together with
the validation and Unicode guarantees the server relies on.
"""

from __future__ import annotations

import ast
import contextlib
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.changes import ChangeSet, JsonPart, index_to_utf16, utf16_len, utf16_to_index
from rooms.errors import InvalidChanges, RoomError

PIECES = ["a", "b", "z", " ", "\t", "\n", "漢", "字", "😀", "👍🏽", "e\u0301", "🇫🇷", "ß"]

documents = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=25).map("".join),
    st.text(max_size=25),  # Hypothesis excludes lone surrogates (category Cs) by default.
)
inserted_texts = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=4).map("".join),
    st.text(max_size=4),
)


@st.composite
def changes_over(draw: st.DrawFn, doc: str) -> ChangeSet:
    """Random valid changes over ``doc``: sorted, non-overlapping ranges at code point boundaries."""
    count = draw(st.integers(min_value=0, max_value=4))
    ends = sorted(draw(st.lists(st.integers(0, len(doc)), min_size=2 * count, max_size=2 * count)))
    parts: list[JsonPart] = []
    pos = 0
    for start, end in zip(ends[::2], ends[1::2], strict=True):
        insert = draw(inserted_texts)
        if start == end and not insert:
            continue
        if start > pos:
            parts.append(utf16_len(doc[pos:start]))
        removed = utf16_len(doc[start:end])
        parts.append([removed, *insert.split("\n")] if insert else [removed])
        pos = end
    if len(doc) > pos:
        parts.append(utf16_len(doc[pos:]))
    return ChangeSet.from_json(parts)


@st.composite
def doc_and_changes(draw: st.DrawFn) -> tuple[str, ChangeSet]:
    doc = draw(documents)
    return doc, draw(changes_over(doc))


@st.composite
def doc_and_two_concurrent_changes(draw: st.DrawFn) -> tuple[str, ChangeSet, ChangeSet]:
    doc = draw(documents)
    return doc, draw(changes_over(doc)), draw(changes_over(doc))


@st.composite
def doc_and_two_sequential_changes(draw: st.DrawFn) -> tuple[str, ChangeSet, ChangeSet]:
    doc = draw(documents)
    first = draw(changes_over(doc))
    return doc, first, draw(changes_over(first.apply(doc)))


def kept_ranges(changes: ChangeSet) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    pos = 0
    for part in changes.to_json():
        if isinstance(part, int):
            ranges.append((pos, pos + part))
            pos += part
        else:
            removed = part[0]
            assert isinstance(removed, int)
            pos += removed
    return ranges


def units(text: str) -> list[bytes]:
    data = text.encode("utf-16-le", "surrogatepass")
    return [data[i : i + 2] for i in range(0, len(data), 2)]


# ---- properties ------------------------------------------------------------------------------


@given(doc_and_changes())
def test_json_roundtrip_gives_equal_changes(case: tuple[str, ChangeSet]) -> None:
    _, changes = case

    assert changes == ChangeSet.from_json(changes.to_json())


@given(doc_and_changes(), st.tuples(st.integers(), st.text(), st.binary()))
def test_packed_form_gives_back_equal_changes(case: tuple[str, ChangeSet], prefix: tuple[int, str, bytes]) -> None:
    doc, changes = case
    packed = changes.packed()
    again = ChangeSet.unpacked(prefix + packed, len(prefix))
    assert again == changes
    assert (again.length, again.new_length, again.to_json()) == (changes.length, changes.new_length, changes.to_json())
    assert again.apply(doc) == changes.apply(doc)
    assert all(isinstance(atom, int | bytes) for atom in packed)


@given(doc_and_changes())
def test_iter_changes_rebuilds_the_new_text_from_the_old(case: tuple[str, ChangeSet]) -> None:
    doc, changes = case
    old = units(doc)
    for individual in (False, True):
        pieces: list[bytes] = []
        position = 0
        for from_a, to_a, from_b, to_b, inserted in changes.iter_changes(individual):
            assert from_a >= position and to_b - from_b == utf16_len(inserted)
            pieces.extend(old[position:from_a])
            pieces.extend(units(inserted))
            position = to_a
        pieces.extend(old[position:])
        assert units(changes.apply(doc)) == pieces


def test_iter_changes_joins_adjacent_parts_unless_asked_for_each() -> None:
    changes = ChangeSet.from_json([1, [1, "a"], [0, "b"], 2, [1]])
    assert [(1, 2, 1, 3, "ab"), (4, 5, 5, 5, "")] == list(changes.iter_changes())
    assert [(1, 2, 1, 2, "a"), (2, 2, 2, 3, "b"), (4, 5, 5, 5, "")] == list(changes.iter_changes(individual=True))


@given(doc_and_changes())
def test_lengths_count_utf16_units_before_and_after(case: tuple[str, ChangeSet]) -> None:
    doc, changes = case

    assert (utf16_len(doc), utf16_len(changes.apply(doc))) == (changes.length, changes.new_length)


@given(doc_and_two_sequential_changes())
def test_compose_agrees_with_sequential_apply(case: tuple[str, ChangeSet, ChangeSet]) -> None:
    doc, first, second = case

    assert second.apply(first.apply(doc)) == first.compose(second).apply(doc)


@given(doc_and_two_concurrent_changes())
def test_concurrent_changes_converge_after_mapping(case: tuple[str, ChangeSet, ChangeSet]) -> None:
    doc, a, b = case

    assert a.map(b).apply(b.apply(doc)) == b.map(a, True).apply(a.apply(doc))


@given(doc_and_two_concurrent_changes())
def test_composed_mapped_changes_converge(case: tuple[str, ChangeSet, ChangeSet]) -> None:
    doc, a, b = case

    assert a.compose(b.map(a)).apply(doc) == b.compose(a.map(b, True)).apply(doc)


@given(doc_and_two_concurrent_changes())
def test_mapped_changes_fit_the_other_result(case: tuple[str, ChangeSet, ChangeSet]) -> None:
    _, a, b = case

    assert (b.new_length, a.new_length) == (a.map(b).length, b.map(a, True).length)


@settings(deadline=None)
@given(documents, documents)
def test_diff_turns_old_into_new(old: str, new: str) -> None:
    assert new == ChangeSet.diff(old, new).apply(old)


@settings(deadline=None)
@given(documents, documents)
def test_diff_falls_back_to_one_replacement_and_stays_correct(old: str, new: str) -> None:
    changes = ChangeSet.diff(old, new, max_edits=0)

    assert new == changes.apply(old)
    assert sum(1 for part in changes.to_json() if isinstance(part, list)) <= 1


@given(documents, st.data())
def test_diff_of_a_single_insertion_is_that_insertion(doc: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(doc)))
    insert = data.draw(inserted_texts.filter(bool))

    parts = ChangeSet.diff(doc, doc[:at] + insert + doc[at:]).to_json()

    expected = [[0, utf16_len(insert)]]
    changed = [part for part in parts if isinstance(part, list)]
    assert expected == [[part[0], utf16_len("\n".join(map(str, part[1:])))] for part in changed]


@given(documents.filter(bool), st.data())
def test_diff_of_a_single_deletion_is_that_deletion(doc: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(doc) - 1))
    end = data.draw(st.integers(start + 1, len(doc)))

    parts = ChangeSet.diff(doc, doc[:start] + doc[end:]).to_json()

    expected = [[utf16_len(doc[start:end])]]
    assert expected == [part for part in parts if isinstance(part, list)]


@given(st.lists(st.sampled_from(["a", "b", "漢", "😀", "\n"]), max_size=20).map("".join), st.data())
def test_diff_of_a_replacement_by_other_characters_is_that_replacement(doc: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(doc)))
    end = data.draw(st.integers(start, len(doc)))
    insert = data.draw(st.text(alphabet="xyz字👍", min_size=1, max_size=4))
    new = doc[:start] + insert + doc[end:]

    expected = ChangeSet.of_replace(utf16_len(doc), index_to_utf16(doc, start), index_to_utf16(doc, end), insert)

    assert expected == ChangeSet.diff(doc, new)


@given(doc_and_changes(), st.sampled_from([-1, 1]))
def test_map_pos_is_monotonic_and_within_the_new_document(case: tuple[str, ChangeSet], assoc: int) -> None:
    _, changes = case

    mapped = [changes.map_pos(pos, assoc) for pos in range(changes.length + 1)]

    assert sorted(mapped) == mapped
    assert all(0 <= pos <= changes.new_length for pos in mapped)


@given(doc_and_changes())
def test_map_pos_keeps_kept_units_under_the_position(case: tuple[str, ChangeSet]) -> None:
    doc, changes = case
    old_units, new_units = units(doc), units(changes.apply(doc))

    for start, end in kept_ranges(changes):
        for pos in range(start, end):
            assert old_units[pos] == new_units[changes.map_pos(pos, 1)]


@given(doc_and_changes())
def test_map_pos_with_assoc_before_never_passes_assoc_after(case: tuple[str, ChangeSet]) -> None:
    _, changes = case

    for pos in range(changes.length + 1):
        assert changes.map_pos(pos, -1) <= changes.map_pos(pos, 1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=2), children, max_size=2),
    max_leaves=12,
)


@given(json_values)
def test_from_json_raises_only_invalid_changes_on_arbitrary_json(value: object) -> None:
    with contextlib.suppress(InvalidChanges):
        ChangeSet.from_json(value)


deletions_and_keeps = st.lists(
    st.one_of(st.integers(1, 4), st.lists(st.integers(0, 3), min_size=1, max_size=1)), max_size=5
)


@given(deletions_and_keeps, st.data())
def test_operations_raise_only_invalid_changes_on_any_lengths(parts: list[JsonPart], data: st.DataObject) -> None:
    changes = ChangeSet.from_json(parts)
    other = ChangeSet.from_json(data.draw(st.lists(st.integers(1, 4), max_size=3)))
    text = data.draw(st.text(alphabet="a😀", max_size=6))
    pos = data.draw(st.integers(-2, 12))

    for operation in (
        lambda: changes.apply(text),
        lambda: changes.map(other),
        lambda: changes.compose(other),
        lambda: changes.map_pos(pos),
    ):
        with contextlib.suppress(InvalidChanges):
            operation()


# ---- from_json validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"a": 1}, "changes must be a json array of parts, got dict"),
        ("[1]", "changes must be a json array of parts, got str"),
        (None, "changes must be a json array of parts, got NoneType"),
        ([1, 2, 3, "x"], "part 3: expected a non-negative integer or a list, got 'x'"),
        ([True], "part 0: expected a non-negative integer or a list, got True"),
        ([4, -1], "part 1: expected a non-negative integer or a list, got -1"),
        ([2.0], "part 0: expected a non-negative integer or a list, got 2.0"),
        ([None], "part 0: expected a non-negative integer or a list, got None"),
        ([3, 0], "part 1: a kept range must be at least 1 unit long, got 0"),
        ([[]], "part 0: a change must start with the number of units it replaces, got an empty list"),
        ([["a", "b"]], "part 0: a change must start with a non-negative integer, got 'a'"),
        ([[False, "b"]], "part 0: a change must start with a non-negative integer, got False"),
        ([[-2]], "part 0: a change must start with a non-negative integer, got -2"),
        ([1, [0, "ok", 7]], "part 1, element 2: expected a string line, got 7"),
        ([[0, None]], "part 0, element 1: expected a string line, got None"),
        (
            [[0, "a\nb"]],
            "part 0, element 1: a line must not contain a line break; send the lines as separate elements",
        ),
    ],
)
def test_from_json_rejects_malformed_parts(parts: object, message: str) -> None:
    with pytest.raises(InvalidChanges) as raised:
        ChangeSet.from_json(parts)

    assert message == str(raised.value)


def test_invalid_changes_carries_its_wire_code() -> None:
    with pytest.raises(RoomError) as raised:
        ChangeSet.from_json("nope")

    expected = "invalid_changes"

    assert expected == raised.value.code


def test_from_json_keeps_unmerged_sections_like_codemirror() -> None:
    parts: list[JsonPart] = [1, 2, [1], [1], [0, "x"], [0, "y"], [0]]

    assert parts == ChangeSet.from_json(parts).to_json()


def test_from_json_reads_an_empty_insertion_as_an_empty_change() -> None:
    expected = [3, [0]]

    assert expected == ChangeSet.from_json([3, [0, ""]]).to_json()


def test_from_json_joins_lines_with_line_breaks() -> None:
    changes = ChangeSet.from_json([[0, "a", "", "b"]])

    expected = ("a\n\nb", 4)

    assert expected == (changes.apply(""), changes.new_length)


def test_from_json_of_empty_lines_inserts_one_line_break() -> None:
    expected = "x\ny"

    assert expected == ChangeSet.from_json([1, [0, "", ""], 1]).apply("xy")


# ---- apply -----------------------------------------------------------------------------------


def test_apply_replaces_deletes_and_inserts() -> None:
    changes = ChangeSet.from_json([2, [3, "XY"], 1, [1], [0, "!"]])

    expected = "heXY !"

    assert expected == changes.apply("hello w")


def test_apply_counts_emoji_as_two_units() -> None:
    changes = ChangeSet.from_json([2, [0, "!"], 1])

    expected = "😀!a"

    assert expected == changes.apply("😀a")


def test_apply_rejects_a_document_of_the_wrong_length() -> None:
    changes = ChangeSet.from_json([12])

    with pytest.raises(InvalidChanges) as raised:
        changes.apply("0123456789")

    expected = "changes expect a document of 12 units, got 10"
    assert expected == str(raised.value)


def test_apply_measures_the_document_in_utf16_units() -> None:
    with pytest.raises(InvalidChanges) as raised:
        ChangeSet.from_json([1]).apply("😀")

    expected = "changes expect a document of 1 units, got 2"
    assert expected == str(raised.value)


def test_apply_rejects_an_inserted_lone_surrogate() -> None:
    changes = ChangeSet.from_json([1, [0, "\ud83d"]])

    with pytest.raises(InvalidChanges, match="lone surrogate"):
        changes.apply("a")


def test_from_json_keeps_a_lone_surrogate_for_serialisation() -> None:
    expected = [[0, "\ud83d"]]

    assert expected == ChangeSet.from_json([[0, "\ud83d"]]).to_json()


@pytest.mark.parametrize(
    "parts",
    [
        [1, [0, "x"], 1],  # an insertion between the halves of the emoji
        [1, [1]],  # deleting the low half
        [[1]],  # deleting the high half
        [[1, "x"], 1],  # replacing the high half
        [1, [1, "\udc00"]],  # replacing the low half, even by a low surrogate
    ],
)
def test_apply_rejects_changes_that_split_a_surrogate_pair(parts: list[JsonPart]) -> None:
    with pytest.raises(InvalidChanges):
        ChangeSet.from_json(parts).apply("😀")


def test_apply_rejects_deleting_half_of_two_emoji_that_would_pair_again() -> None:
    with pytest.raises(InvalidChanges, match="splits a surrogate pair"):
        ChangeSet.from_json([1, [2], 1]).apply("😀😁")


def test_apply_allows_adjacent_changes_that_remove_a_whole_pair() -> None:
    expected = "a"

    assert expected == ChangeSet.from_json([[1], [1, "a"]]).apply("😀")


def reference_apply(changes: ChangeSet, doc: str) -> str:
    """Apply by slicing the whole document's UTF-16 bytes: slow, but obviously right."""
    data = doc.encode("utf-16-le")
    out: list[bytes] = []
    pos = 0
    for part in changes.to_json():
        if isinstance(part, int):
            out.append(data[2 * pos : 2 * (pos + part)])
            pos += part
        else:
            removed = part[0]
            assert isinstance(removed, int)
            out.append("\n".join(str(line) for line in part[1:]).encode("utf-16-le"))
            pos += removed
    return b"".join(out).decode("utf-16-le")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join), st.integers(1500, 3000), st.data())
def test_apply_matches_utf16_slicing_on_documents_spanning_many_chunks(
    unit: str, repeat: int, data: st.DataObject
) -> None:
    doc = unit * repeat
    changes = data.draw(changes_over(doc))

    assert reference_apply(changes, doc) == changes.apply(doc)


@pytest.mark.parametrize("unit", ["ab😀c", "😀", "x" * 9000 + "👍🏽", "漢字"])
def test_apply_cuts_long_documents_at_the_right_code_point_everywhere(unit: str) -> None:
    doc = unit * (30_000 // len(unit) + 1)
    length = utf16_len(doc)
    # Every code point boundary near the 8192-code-point chunk edges, and a sweep through the rest.
    indices = sorted({*range(0, len(doc) + 1, 997), *(edge + d for edge in (8192, 16384) for d in range(-3, 4))})
    offsets = [index_to_utf16(doc, index) for index in indices]

    for start, end in zip(offsets, [*offsets[1:], length], strict=True):
        changes = ChangeSet.of_replace(length, start, end, "[]")
        assert reference_apply(changes, doc) == changes.apply(doc), (start, end)


def test_apply_rejects_splitting_a_pair_far_into_a_long_document() -> None:
    doc = "a" * 20_000 + "😀" + "b" * 20_000

    with pytest.raises(InvalidChanges) as raised:
        ChangeSet.of_replace(40_002, 20_001, 20_001, "x").apply(doc)

    expected = "a change boundary at 20001 splits a surrogate pair of the document"
    assert expected == str(raised.value)


def test_apply_handles_a_large_ascii_document() -> None:
    doc = "x" * 100_000

    result = ChangeSet.of_replace(100_000, 50_000, 50_000, "!").apply(doc)

    expected = ("!", 100_001)

    assert expected == (result[50_000], len(result))


def test_apply_handles_a_large_document_with_emoji() -> None:
    doc = "ab😀c" * 25_000

    result = ChangeSet.of_replace(utf16_len(doc), 10, 10, "漢").apply(doc)

    expected = "ab😀cab😀c漢ab😀"

    assert expected == result[:12]


# ---- map, compose, map_pos -------------------------------------------------------------------


def test_concurrent_inserts_at_same_position_converge() -> None:
    a = ChangeSet.from_json([1, [0, "A"], 1])
    b = ChangeSet.from_json([1, [0, "B"], 1])

    expected = ("xBAy", "xBAy")

    assert expected == (a.map(b).apply(b.apply("xy")), b.map(a, True).apply(a.apply("xy")))


def test_map_puts_the_other_insertion_first_unless_before() -> None:
    a = ChangeSet.from_json([[0, "A"], 1])
    b = ChangeSet.from_json([[0, "B"], 1])

    expected = ([1, [0, "A"], 1], [[0, "A"], 2])

    assert expected == (a.map(b).to_json(), a.map(b, True).to_json())


def test_map_drops_an_insertion_inside_a_concurrent_deletion_range() -> None:
    a = ChangeSet.from_json([2, [1, "X"], 2])
    b = ChangeSet.from_json([1, [3], 1])

    expected = [1, [0, "X"], 1]

    assert expected == a.map(b).to_json()


def test_map_rejects_changes_to_a_different_document() -> None:
    with pytest.raises(InvalidChanges) as raised:
        ChangeSet.from_json([3]).map(ChangeSet.from_json([4]))

    expected = "cannot map changes to a document of 3 units over changes to a document of 4 units"
    assert expected == str(raised.value)


def test_compose_rejects_changes_that_do_not_follow() -> None:
    first = ChangeSet.from_json([[0, "ab"], 1])

    with pytest.raises(InvalidChanges) as raised:
        first.compose(ChangeSet.from_json([1]))

    expected = "cannot compose: these changes produce a document of 3 units, the next changes expect 1"
    assert expected == str(raised.value)


def test_compose_returns_the_other_changes_when_these_are_codemirror_empty() -> None:
    other = ChangeSet.from_json([1, 2, [0, "x"]])

    assert other is ChangeSet.from_json([3]).compose(other)


def test_compose_merges_adjacent_changes_into_one_replacement() -> None:
    first = ChangeSet.from_json([1, [1, "ab"], 1])
    second = ChangeSet.from_json([2, [1, "c"], 1])

    expected = [1, [1, "ac"], 1]

    assert expected == first.compose(second).to_json()


@pytest.mark.parametrize(
    ("pos", "assoc", "expected"),
    [
        (0, -1, 0),
        (1, -1, 1),  # at the insertion point: stays before the inserted text
        (1, 1, 4),  # ...or moves after it
        (2, -1, 5),
        (3, -1, 5),  # inside the deleted range: collapses to its start
        (3, 1, 5),
        (4, -1, 5),
        (5, 1, 6),
    ],
)
def test_map_pos_follows_codemirror_simple_mode(pos: int, assoc: int, expected: int) -> None:
    changes = ChangeSet.from_json([1, [0, "abc"], 1, [2], 1])

    assert expected == changes.map_pos(pos, assoc)


def test_map_pos_inside_a_replacement_goes_to_its_end_with_assoc_after() -> None:
    changes = ChangeSet.from_json([1, [2, "xyz"], 1])

    expected = (1, 4)

    assert expected == (changes.map_pos(2, -1), changes.map_pos(2, 1))


@pytest.mark.parametrize("pos", [-1, 5])
def test_map_pos_rejects_positions_outside_the_document(pos: int) -> None:
    with pytest.raises(InvalidChanges):
        ChangeSet.from_json([4]).map_pos(pos)


# ---- construction helpers --------------------------------------------------------------------


def test_empty_has_no_sections_for_an_empty_document() -> None:
    expected: tuple[list[JsonPart], list[JsonPart]] = ([], [5])

    assert expected == (ChangeSet.empty(0).to_json(), ChangeSet.empty(5).to_json())


@pytest.mark.parametrize(
    ("parts", "expected"),
    [([], True), ([5], True), ([1, 2], True), ([[0]], True), ([[1]], False), ([[0, "x"]], False)],
)
def test_is_empty_means_nothing_changes(parts: list[JsonPart], expected: bool) -> None:
    assert expected == ChangeSet.from_json(parts).is_empty


def test_of_replace_builds_one_replacement() -> None:
    expected = [2, [1, "漢", "字"], 3]

    assert expected == ChangeSet.of_replace(6, 2, 3, "漢\n字").to_json()


def test_of_replace_keeps_carriage_returns_verbatim() -> None:
    expected = "a\r\nb"

    assert expected == ChangeSet.of_replace(2, 1, 1, "\r\n").apply("ab")


def test_of_replace_without_effect_is_empty() -> None:
    assert ChangeSet.empty(4) == ChangeSet.of_replace(4, 2, 2, "")


@pytest.mark.parametrize(("length", "start", "end"), [(4, 3, 2), (4, -1, 2), (4, 2, 5), (-1, 0, 0)])
def test_of_replace_rejects_invalid_ranges(length: int, start: int, end: int) -> None:
    with pytest.raises(InvalidChanges, match=r"^invalid change range"):
        ChangeSet.of_replace(length, start, end, "x")


def test_empty_rejects_a_negative_length() -> None:
    with pytest.raises(InvalidChanges):
        ChangeSet.empty(-1)


# ---- diff ------------------------------------------------------------------------------------


def test_diff_of_equal_texts_is_empty() -> None:
    assert ChangeSet.empty(5) == ChangeSet.diff("héllo", "héllo")


def test_diff_of_an_insertion_is_that_insertion() -> None:
    expected = [6, [0, "brave "], 5]

    assert expected == ChangeSet.diff("hello world", "hello brave world").to_json()


def test_diff_of_a_deletion_is_that_deletion() -> None:
    expected = [6, [6], 5]

    assert expected == ChangeSet.diff("hello brave world", "hello world").to_json()


def test_diff_of_a_replacement_is_that_replacement() -> None:
    expected = [6, [5, "42"], 1]

    assert expected == ChangeSet.diff("hello world!", "hello 42!").to_json()


def test_diff_keeps_common_characters_inside_the_changed_middle() -> None:
    expected = [1, [1, "x"], 1, [1, "y"], 2]

    assert expected == ChangeSet.diff("abcdef", "axcyef").to_json()


def test_diff_replaces_a_whole_emoji_not_its_shared_high_surrogate() -> None:
    expected = [1, [2, "😁"], 1]

    assert expected == ChangeSet.diff("a😀b", "a😁b").to_json()


def test_diff_beyond_the_edit_cap_replaces_the_middle_at_once() -> None:
    expected = [1, [3, "xby"], 2]

    assert expected == ChangeSet.diff("_abcd_", "_xbyd_", max_edits=2).to_json()


def test_diff_of_large_texts_differing_by_one_character() -> None:
    old = "x" * 50_000 + "a" + "y" * 50_000
    new = "x" * 50_000 + "b" + "y" * 50_000

    expected = [50_000, [1, "b"], 50_000]

    assert expected == ChangeSet.diff(old, new).to_json()


# ---- utf-16 helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("abc", 3), ("漢字", 2), ("😀", 2), ("👍🏽", 4), ("e\u0301", 2), ("a😀漢", 4), ("🇫🇷", 4)],
)
def test_utf16_len_counts_javascript_string_length(text: str, expected: int) -> None:
    assert expected == utf16_len(text)


def test_index_to_utf16_counts_astral_characters_twice() -> None:
    expected = [0, 1, 3, 4, 6]

    assert expected == [index_to_utf16("a😀漢👍", i) for i in range(5)]


def test_utf16_to_index_inverts_index_to_utf16() -> None:
    expected = [0, 1, 2, 3, 4]

    assert expected == [utf16_to_index("a😀漢👍", offset) for offset in (0, 1, 3, 4, 6)]


def test_utf16_to_index_rejects_an_offset_inside_a_surrogate_pair() -> None:
    with pytest.raises(InvalidChanges) as raised:
        utf16_to_index("a😀", 2)

    expected = "position 2 splits a surrogate pair"
    assert expected == str(raised.value)


@pytest.mark.parametrize(("text", "offset"), [("abc", 4), ("a😀", 4), ("漢", -1)])
def test_utf16_to_index_rejects_offsets_outside_the_text(text: str, offset: int) -> None:
    with pytest.raises(InvalidChanges, match="outside the text"):
        utf16_to_index(text, offset)


# ---- value semantics -------------------------------------------------------------------------


def test_changes_are_immutable() -> None:
    changes = ChangeSet.from_json([1])

    with pytest.raises(AttributeError):
        changes.length = 3  # type: ignore[misc]


def test_equal_changes_hash_alike() -> None:
    assert {ChangeSet.from_json([1, [0, "a"]])} == {ChangeSet.from_json([1, [0, "a"]])}


def test_repr_shows_the_wire_form() -> None:
    expected = "ChangeSet.from_json([1, [0, 'a', 'b']])"

    assert expected == repr(ChangeSet.from_json([1, [0, "a", "b"]]))


def test_module_imports_no_framework() -> None:
    source = Path(__file__).parents[1] / "rooms" / "changes.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])

    frameworks = {"asyncio", "fastapi", "nicegui", "starlette", "structlog", "prometheus_client"}
    assert set() == imported & frameworks


@st.composite
def single_change(draw: st.DrawFn, length: int) -> list[JsonPart]:
    """One change (a keystroke, a deletion, a paste) over a document of ``length`` units."""
    start = draw(st.integers(0, length))
    end = draw(st.integers(start, length))
    lines = draw(st.lists(st.sampled_from(["", "a", "漢", "😀"]), min_size=1, max_size=3))
    if end == start and lines == [""]:
        lines = ["x"]
    parts: list[JsonPart] = [start] if start else []
    parts.append([end - start, *lines] if lines != [""] else [end - start])
    if length > end:
        parts.append(length - end)
    return parts


@given(data=st.data(), length=st.integers(0, 12), before=st.booleans())
def test_map_of_single_changes_apart_matches_the_general_walk(data: st.DataObject, length: int, before: bool) -> None:
    from rooms.changes import _map_apart, _map_set

    a = ChangeSet.from_json(data.draw(single_change(length)))
    b = ChangeSet.from_json(data.draw(single_change(length)))
    general = _map_set(a, b, before)
    apart = _map_apart(a, b)
    if apart is not None:
        assert (general.to_json(), general) == (apart.to_json(), apart)
        assert general.length == apart.length and general.new_length == apart.new_length
    assert general == a.map(b, before)


# ---- bounded cost --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts", [[2**53], [[2**53, "x"]], [[2**63]], [1, [2**64]]], ids=["keep", "replace", "delete", "huge"]
)
def test_from_json_refuses_counts_beyond_javascripts_safe_integers(parts: list[JsonPart]) -> None:
    with pytest.raises(InvalidChanges):
        ChangeSet.from_json(parts)


def test_from_json_accepts_the_largest_safe_integer() -> None:
    assert 2**53 - 1 == ChangeSet.from_json([2**53 - 1]).length


def test_from_json_refuses_too_many_parts_before_reading_any() -> None:
    from rooms.errors import TooComplex

    with pytest.raises(TooComplex) as caught:
        ChangeSet.from_json([object()] * 1_001, max_parts=1_000)  # none of them is even valid
    assert ("too_complex", 1_001, 1_000) == (caught.value.code, caught.value.parts, caught.value.limit)
    assert 1_000 == ChangeSet.from_json([[0, "x"]] * 1_000, max_parts=1_000).part_count


def test_part_count_is_one_per_json_part() -> None:
    assert (3, 0) == (ChangeSet.from_json([1, [2, "a", "b"], [1]]).part_count, ChangeSet.empty(0).part_count)


astral_texts = st.text(alphabet="ab\n😀漢", max_size=60)


@settings(deadline=None, max_examples=300)
@given(astral_texts, astral_texts, st.integers(0, 40))
def test_diff_within_a_tiny_budget_stays_correct(old: str, new: str, budget: int) -> None:
    changes = ChangeSet.diff(old, new, max_work=budget)
    assert new == changes.apply(old)


def test_diff_spends_no_more_than_its_budget_on_one_long_snake() -> None:
    # Every character of the middles matches one step off the diagonal: a single snake of 2
    # million characters, which the search used to follow to its end before checking its budget.
    size = 2_000_000
    old = "b" + "a" * size + "c"
    new = "a" * size + "d"
    started = time.process_time()
    changes = ChangeSet.diff(old, new, max_work=1_000)
    spent = time.process_time() - started
    assert new == changes.apply(old)
    assert spent < 0.05  # the old search spent ~150 ms comparing characters one by one
