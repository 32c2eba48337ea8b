"""A ChangeSet that computes exactly what CodeMirror 6's ``@codemirror/state`` ChangeSet computes.

The browser edits with CodeMirror and sends ``ChangeSet.toJSON()``; the server maps and composes
those changes and must arrive at the very same sections the clients compute, or the documents
drift apart. So ``map``/``compose``/``map_pos`` below are line-by-line ports of CodeMirror's
``mapSet``, ``composeSets``, ``SectionIter``, ``addSection``, ``addInsert`` and
``ChangeDesc.mapPos`` (``@codemirror/state`` 6.7.6, ``dist/index.js``), including its quirks: the
sections of ``from_json`` are kept as sent (adjacent keeps, ``[0]``, a deletion beside an
insertion), and the ``empty`` shortcuts of ``map``/``compose`` return an operand unchanged. The differential test
(``tests/test_changes_differential.py``) checks this against the real library under node.

Representation, as in CodeMirror: ``sections`` is a flat sequence ``[len, ins, len, ins, ...]``
where ``len`` counts units of the old document and ``ins`` is ``-1`` for a kept range, else the
length of the text replacing it (``0``: a deletion). Lengths and positions are UTF-16 code units,
because that is what JavaScript string indices count. Each inserted text is kept as UTF-16-LE
bytes, so slicing at a unit offset is a byte slice (CodeMirror's ``Text.slice`` may split a
surrogate pair; so can we, and ``apply`` then refuses the result).

Where CodeMirror is lenient and a server must not be, this module is stricter, always raising
:class:`~rooms.errors.InvalidChanges`: ``from_json`` validates every part (and refuses the
zero-length keep CodeMirror never emits), ``map``/``compose``
check lengths before their empty shortcuts (CodeMirror skips the check there), and ``apply``
refuses lone surrogates and boundaries inside a surrogate pair, so a document stays valid Unicode.

The module is pure: no I/O, no framework imports.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Final, TypeAlias, TypeGuard

from rooms.errors import InvalidChanges, TooComplex

__all__ = [
    "MAX_SAFE_INTEGER",
    "ChangeSet",
    "JsonPart",
    "index_to_utf16",
    "utf16_len",
    "utf16_to_index",
]

JsonPart: TypeAlias = int | list[int | str]
"""One element of the wire format: ``n`` keeps, ``[n]`` deletes, ``[n, *lines]`` replaces."""

_KEEP: Final = -1
"""``ins`` of a section that keeps its range (CodeMirror's ``-1``)."""

_DONE: Final = -2
"""``ins`` of an exhausted :class:`_SectionIter` (CodeMirror's ``-2``)."""

_UTF16: Final = "utf-16-le"

_REPR_LIMIT: Final = 200

_CHUNK: Final = 8192
"""Code points per chunk when measuring a non-ASCII document (see :func:`_chunk_starts`)."""

DEFAULT_MAX_EDITS: Final = 1000
"""Myers' ``D`` beyond which :meth:`ChangeSet.diff` gives up and replaces the whole middle."""

DEFAULT_MAX_WORK: Final = 200_000
"""Steps (diagonals visited plus characters compared) :meth:`ChangeSet.diff` may spend."""

MAX_SAFE_INTEGER: Final = 2**53 - 1
"""JavaScript's ``Number.MAX_SAFE_INTEGER``: the largest count a browser holds exactly, and so
the largest a change may carry (beyond it two different numbers read as one)."""


# --------------------------------------------------------------------------------------------
# UTF-16 helpers
# --------------------------------------------------------------------------------------------


def _encode(text: str) -> bytes:
    # surrogatepass: a str that already holds a lone surrogate (e.g. from a JSON "\ud83d" escape)
    # still has a UTF-16 length in JavaScript's sense; validity is judged where it matters, in apply.
    return text.encode(_UTF16, "surrogatepass")


def _decode_lenient(data: bytes) -> str:
    return data.decode(_UTF16, "surrogatepass")


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, i.e. JavaScript's ``text.length``.

    ``str.isascii`` is O(1) in CPython (the flag is stored), so ASCII costs nothing; otherwise one
    C-level encode. A lone surrogate counts as one unit, as in JavaScript.
    """
    if text.isascii():
        return len(text)
    return len(_encode(text)) // 2


def index_to_utf16(text: str, index: int) -> int:
    """UTF-16 offset of the code point index ``index`` of ``text`` (Python index → JS index)."""
    if not 0 <= index <= len(text):
        raise InvalidChanges(f"index {index} is outside the text of {len(text)} characters")
    if text.isascii():
        return index
    return utf16_len(text[:index])


def utf16_to_index(text: str, offset: int) -> int:
    """Code point index of the UTF-16 offset ``offset`` in ``text`` (JS index → Python index).

    Raises :class:`InvalidChanges` when the offset is out of range or falls between the two halves
    of a surrogate pair, since no Python index corresponds to it.
    """
    if text.isascii():
        if not 0 <= offset <= len(text):
            raise InvalidChanges(f"position {offset} is outside the text of {len(text)} units")
        return offset
    data = _encode(text)
    units = len(data) // 2
    if not 0 <= offset <= units:
        raise InvalidChanges(f"position {offset} is outside the text of {units} units")
    if _splits_pair(data, offset):
        raise InvalidChanges(f"position {offset} splits a surrogate pair")
    return len(_decode_lenient(data[: 2 * offset]))


def _is_low_surrogate_at(data: bytes, unit: int) -> bool:
    # Little-endian: the high byte of unit i is data[2i + 1]; low surrogates are DC00-DFFF.
    return 0xDC <= data[2 * unit + 1] <= 0xDF


def _is_high_surrogate_at(data: bytes, unit: int) -> bool:
    return 0xD8 <= data[2 * unit + 1] <= 0xDB


def _splits_pair(data: bytes, pos: int) -> bool:
    """Whether a boundary at unit ``pos`` falls inside a surrogate pair of ``data``."""
    return 0 < pos < len(data) // 2 and _is_high_surrogate_at(data, pos - 1) and _is_low_surrogate_at(data, pos)


def _chunk_starts(text: str) -> list[int]:
    """UTF-16 offsets at which the ``_CHUNK``-code-point chunks of ``text`` start, then its length.

    Counting chunk by chunk keeps every temporary small: encoding a 100k-character document at once
    allocates (and page-faults) hundreds of kilobytes on each keystroke. An ASCII chunk is not
    encoded at all (slicing gives the narrowest str kind, and isascii is O(1)).
    """
    starts = [0]
    total = 0
    for at in range(0, len(text), _CHUNK):
        chunk = text[at : at + _CHUNK]
        total += len(chunk) if chunk.isascii() else len(_encode(chunk)) // 2
        starts.append(total)
    return starts


def _unit_to_index(text: str, starts: list[int], pos: int) -> int:
    """Code point index of the UTF-16 offset ``pos``, given ``starts`` from :func:`_chunk_starts`.

    Raises :class:`InvalidChanges` when ``pos`` falls inside a surrogate pair. Chunks are sliced
    at code points, so only the chunk holding ``pos`` needs encoding.
    """
    chunk_no = min(bisect_right(starts, pos) - 1, len(starts) - 2)
    first = chunk_no * _CHUNK
    chunk = text[first : first + _CHUNK]
    offset = pos - starts[chunk_no]
    if starts[chunk_no + 1] - starts[chunk_no] == len(chunk):
        return first + offset
    data = _encode(chunk)
    if _splits_pair(data, offset):
        raise InvalidChanges(f"a change boundary at {pos} splits a surrogate pair of the document")
    return first + len(_decode_lenient(data[: 2 * offset]))


def _common_prefix_len(a: str, b: str) -> int:
    """Length of the common prefix, by bisection on C-level slice comparisons.

    Each probe only compares the still-undecided window, so the total work is O(n) memcmp, not a
    Python loop per character (``os.path.commonprefix`` is such a loop).
    """
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    # Invariant: a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1].
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix_len(a: str, b: str, limit: int) -> int:
    """Length of the common suffix, at most ``limit`` (so it never overlaps the common prefix)."""
    la, lb = len(a), len(b)
    lo, hi = 0, limit
    if a[la - hi :] == b[lb - hi :]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[la - mid : la - lo] == b[lb - mid : lb - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# --------------------------------------------------------------------------------------------
# Ports of CodeMirror's section helpers
# --------------------------------------------------------------------------------------------


def _add_section(sections: list[int], length: int, ins: int, force_join: bool = False) -> None:
    """CodeMirror ``addSection``: append, merging with the previous section where CM merges."""
    if length == 0 and ins <= 0:
        return
    last = len(sections) - 2
    if last >= 0 and ins <= 0 and ins == sections[last + 1]:
        sections[last] += length
    elif last >= 0 and length == 0 and sections[last] == 0:
        sections[last + 1] += ins
    elif force_join:
        # composeSets only sets `open` after it has appended a section, so `last` is >= 0 here.
        sections[last] += length
        sections[last + 1] += ins
    else:
        sections.append(length)
        sections.append(ins)


def _add_insert(values: list[bytes], sections: list[int], value: bytes) -> None:
    """CodeMirror ``addInsert``: attach ``value`` to the last section, padding skipped indices."""
    if not value:
        return
    index = (len(sections) - 2) >> 1
    if index < len(values):
        values[-1] += value
    else:
        while len(values) < index:
            values.append(b"")
        values.append(value)


class _SectionIter:
    """CodeMirror ``SectionIter``: walks sections, ``off`` units into the current one."""

    __slots__ = ("i", "ins", "inserted", "len", "off", "sections")

    def __init__(self, changes: ChangeSet) -> None:
        self.sections = changes._sections
        self.inserted = changes._inserted
        self.i = 0
        self.len = 0
        self.ins = _DONE
        self.off = 0
        self.next()

    def next(self) -> None:
        sections = self.sections
        if self.i < len(sections):
            self.len = sections[self.i]
            self.ins = sections[self.i + 1]
            self.i += 2
        else:
            self.len = 0
            self.ins = _DONE
        self.off = 0

    @property
    def done(self) -> bool:
        return self.ins == _DONE

    @property
    def len2(self) -> int:
        return self.len if self.ins < 0 else self.ins

    @property
    def text(self) -> bytes:
        index = (self.i - 2) >> 1
        return self.inserted[index] if 0 <= index < len(self.inserted) else b""

    def text_bit(self, length: int) -> bytes:
        # A unit offset into the inserted text; may split a surrogate pair, exactly like Text.slice.
        start = 2 * self.off
        return self.text[start : start + 2 * length]

    def forward(self, length: int) -> None:
        if length == self.len:
            self.next()
        else:
            self.len -= length
            self.off += length

    def forward2(self, length: int) -> None:
        if self.ins == _KEEP:
            self.forward(length)
        elif length == self.ins:
            self.next()
        else:
            self.ins -= length
            self.off += length


def _single_change(changes: ChangeSet) -> tuple[int, int, int] | None:
    """``(start, deleted, index)`` of a set that is one non-empty change between at most one kept
    range on each side (a keystroke, a paste), ``index`` its section's; None for any other set."""
    s = changes._sections
    count = len(s)
    if count == 2:
        return (0, s[0], 0) if s[1] >= 0 and (s[0] or s[1]) else None
    if count == 4:
        if s[1] == _KEEP and s[3] >= 0 and (s[2] or s[3]):
            return s[0], s[2], 1
        if s[1] >= 0 and s[3] == _KEEP and (s[0] or s[1]):
            return 0, s[0], 0
        return None
    if count == 6 and s[1] == _KEEP and s[3] >= 0 and s[5] == _KEEP and (s[2] or s[3]):
        return s[0], s[2], 1
    return None


def _map_apart(set_a: ChangeSet, set_b: ChangeSet) -> ChangeSet | None:
    """`_map_set` for two single changes with kept text between them, which is most of what a
    server rebases (two people typing in different places): the same result, without the walk.
    None when the changes are not single, or touch or overlap (ties need the general rule)."""
    a = _single_change(set_a)
    b = _single_change(set_b)
    if a is None or b is None:
        return None
    start_a, deleted_a, index_a = a
    start_b, deleted_b, index_b = b
    if start_a + deleted_a < start_b:
        # A lies wholly before B: its position stands, the text after it changed length.
        lead = start_a
        tail = set_b._new_length - start_a - deleted_a
    elif start_a > start_b + deleted_b:
        # A lies wholly after B: it moves by what B removed and inserted.
        lead = start_a - deleted_b + set_b._sections[2 * index_b + 1]
        tail = set_a._length - start_a - deleted_a
    else:
        return None
    sections: list[int] = [lead, _KEEP] if lead else []
    sections += (deleted_a, set_a._sections[2 * index_a + 1])
    inserted = [b""] * (len(sections) // 2 - 1) + [set_a._inserted[index_a]]
    if tail:
        sections += (tail, _KEEP)
    return ChangeSet(sections, inserted)


def _mismatch() -> InvalidChanges:
    return InvalidChanges("mismatched change set lengths")


def _map_set(set_a: ChangeSet, set_b: ChangeSet, before: bool) -> ChangeSet:
    """CodeMirror ``mapSet`` (with ``mkSet``): rebase ``set_a`` onto the document after ``set_b``."""
    sections: list[int] = []
    insert: list[bytes] = []
    a = _SectionIter(set_a)
    b = _SectionIter(set_b)
    # `inserted` is the section index (a.i) of the change in A whose text was already emitted, for
    # changes of A that are processed piece by piece.
    inserted = -1
    while True:
        if (a.done and b.len) or (b.done and a.len):
            raise _mismatch()
        if a.ins == _KEEP and b.ins == _KEEP:
            # Skip a range that both keep.
            length = min(a.len, b.len)
            _add_section(sections, length, _KEEP)
            a.forward(length)
            b.forward(length)
        elif b.ins >= 0 and (
            a.ins < 0 or inserted == a.i or (a.off == 0 and (b.len < a.len or (b.len == a.len and not before)))
        ):
            # A change in B comes first (by start, then length, then `before`): keep its inserted
            # text and swallow the parts of A it covers, emitting A's insertion when it lies inside.
            length = b.len
            _add_section(sections, b.ins, _KEEP)
            while length:
                piece = min(a.len, length)
                if a.ins >= 0 and inserted < a.i and a.len <= piece:
                    _add_section(sections, 0, a.ins)
                    _add_insert(insert, sections, a.text)
                    inserted = a.i
                a.forward(piece)
                length -= piece
            b.next()
        elif a.ins >= 0:
            # A change in A: cover up to the next non-deletion change of B.
            length = 0
            left = a.len
            while left:
                if b.ins == _KEEP:
                    piece = min(left, b.len)
                    length += piece
                    left -= piece
                    b.forward(piece)
                elif b.ins == 0 and b.len < left:
                    left -= b.len
                    b.next()
                else:
                    break
            _add_section(sections, length, a.ins if inserted < a.i else 0)
            if inserted < a.i:
                _add_insert(insert, sections, a.text)
            inserted = a.i
            a.forward(a.len - left)
        elif a.done and b.done:
            return ChangeSet(sections, insert)
        else:
            raise _mismatch()


def _compose_sets(set_a: ChangeSet, set_b: ChangeSet) -> ChangeSet:
    """CodeMirror ``composeSets`` (with ``mkSet``): ``set_a`` then ``set_b`` as one change."""
    sections: list[int] = []
    insert: list[bytes] = []
    a = _SectionIter(set_a)
    b = _SectionIter(set_b)
    # `open`: the last emitted section may still grow, so adjacent pieces join into one change.
    open_ = False
    while True:
        if a.done and b.done:
            return ChangeSet(sections, insert)
        if a.ins == 0:
            # Deletion in A: B never sees it.
            _add_section(sections, a.len, 0, open_)
            a.next()
        elif b.len == 0 and not b.done:
            # Insertion in B: A never sees it.
            _add_section(sections, 0, b.ins, open_)
            _add_insert(insert, sections, b.text)
            b.next()
        elif a.done or b.done:
            raise _mismatch()
        else:
            length = min(a.len2, b.len)
            section_len = len(sections)
            if a.ins == _KEEP:
                ins_b = _KEEP if b.ins == _KEEP else (0 if b.off else b.ins)
                _add_section(sections, length, ins_b, open_)
                # CodeMirror tests `insB` for truthiness, so -1 gets here too; B's text is then empty.
                if ins_b:
                    _add_insert(insert, sections, b.text)
            elif b.ins == _KEEP:
                _add_section(sections, 0 if a.off else a.len, length, open_)
                _add_insert(insert, sections, a.text_bit(length))
            else:
                _add_section(sections, 0 if a.off else a.len, 0 if b.off else b.ins, open_)
                if not b.off:
                    _add_insert(insert, sections, b.text)
            open_ = (a.ins > length or (b.ins >= 0 and b.len > length)) and (open_ or len(sections) > section_len)
            a.forward2(length)
            b.forward(length)


# --------------------------------------------------------------------------------------------
# from_json validation
# --------------------------------------------------------------------------------------------


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _is_count(value: object) -> TypeGuard[int]:
    # bool is an int subclass in Python; JSON true is never a length. Beyond 2^53 - 1 a browser
    # cannot hold the number exactly, so no client it shares the document with could agree on it.
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER


def _parse_lines(index: int, part: Sequence[object]) -> str:
    lines: list[str] = []
    for at in range(1, len(part)):
        line = part[at]
        if not isinstance(line, str):
            raise InvalidChanges(f"part {index}, element {at}: expected a string line, got {_show(line)}")
        if "\n" in line:
            # CodeMirror's Text.of never splits; a line holding "\n" would serialise back as one line
            # where CodeMirror's own toJSON gives two, so such input is not CodeMirror output.
            raise InvalidChanges(
                f"part {index}, element {at}: a line must not contain a line break; send the lines as separate elements"
            )
        lines.append(line)
    return "\n".join(lines)


def _cut(text: str, starts: list[int] | None, start: int, end: int) -> str:
    """``text`` between the UTF-16 offsets ``start`` and ``end`` (``starts``: see :meth:`apply`)."""
    if starts is None:
        return text[start:end]
    first = 0 if start == 0 else _unit_to_index(text, starts, start)
    last = len(text) if end == starts[-1] else _unit_to_index(text, starts, end)
    return text[first:last]


# --------------------------------------------------------------------------------------------
# ChangeSet
# --------------------------------------------------------------------------------------------


# `ChangeSet.packed`: length, new length, the count of section numbers, the section numbers and
# the inserted texts (UTF-16-LE).
Packed = tuple[int | bytes, ...]


class ChangeSet:
    """An immutable set of changes to a document of :attr:`length` UTF-16 units.

    Build one with :meth:`from_json`, :meth:`of_replace`, :meth:`empty` or :meth:`diff`; the
    constructor takes the raw internal representation and is not part of the API.
    Equality is structural: two sets are equal when their sections and inserted texts are, i.e.
    exactly when their :meth:`to_json` is equal (``[1, 2]`` and ``[3]`` differ, as in CodeMirror).
    """

    __slots__ = ("_inserted", "_length", "_new_length", "_sections")

    _sections: tuple[int, ...]
    _inserted: tuple[bytes, ...]
    _length: int
    _new_length: int

    def __init__(self, sections: Sequence[int], inserted: Sequence[bytes]) -> None:
        """Internal: ``sections`` as in CodeMirror, ``inserted[i]`` the UTF-16-LE text of section i.

        ``inserted`` may be shorter than the number of sections (CodeMirror's array is too); it is
        padded with empty texts so that equality does not depend on how it was built.
        """
        sections = tuple(sections)
        count = len(sections) // 2
        texts = tuple(inserted)
        if len(texts) != count:
            texts = texts[:count] + (b"",) * (count - len(texts))
        length = 0
        new_length = 0
        pairs = iter(sections)
        for section_len, ins in zip(pairs, pairs):  # noqa: B905 (pairs of one iterator)
            length += section_len
            new_length += section_len if ins < 0 else ins
        object.__setattr__(self, "_sections", sections)
        object.__setattr__(self, "_inserted", texts)
        object.__setattr__(self, "_length", length)
        object.__setattr__(self, "_new_length", new_length)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ChangeSet is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ChangeSet is immutable; cannot delete {name!r}")

    # ---- compact form -----------------------------------------------------------------------

    def packed(self) -> Packed:
        """The set as one flat tuple of ints and bytes, for keeping many of them for long.

        The garbage collector stops tracking a tuple of such atoms at its first collection (a
        nested tuple would take one collection per level), so a room's history kept this way
        costs no time in later collections; kept as objects, every update added two objects
        that each collection of the older generations walked again.
        """
        return (self._length, self._new_length, len(self._sections), *self._sections, *self._inserted)

    @classmethod
    def unpacked(cls, packed: tuple[object, ...], start: int = 0) -> ChangeSet:
        """The set that `packed` made, read from ``packed[start:]`` (trusted: not checked again)."""
        count = packed[start + 2]
        split = start + 3 + count  # type: ignore[operator]
        changes = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(changes, "_sections", packed[start + 3 : split])
        setattr_(changes, "_inserted", packed[split:])
        setattr_(changes, "_length", packed[start])
        setattr_(changes, "_new_length", packed[start + 1])
        return changes

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def from_json(cls, parts: object, *, max_parts: int | None = None) -> ChangeSet:
        """Parse CodeMirror's ``ChangeSet.toJSON()`` format, keeping the sections exactly as sent.

        Like CodeMirror's ``fromJSON``, each part becomes one section, unmerged: adjacent keeps stay
        apart, ``[0]`` and ``[0, ""]`` are empty changes, and ``to_json`` gives them back as they came
        (``[0, ""]`` as ``[0]``). Stricter than CodeMirror, which accepts any JS number: counts must be
        non-negative integers and not booleans, a keep must not be ``0`` (CodeMirror never emits one,
        and its own map/compose throw on a trailing one), lines must be strings without ``"\\n"``.
        Errors name the zero-based index of the offending part. With ``max_parts``, more parts
        than that raise :class:`~rooms.errors.TooComplex` before any part is read.
        """
        if not isinstance(parts, list | tuple):
            raise InvalidChanges(f"changes must be a json array of parts, got {type(parts).__name__}")
        if max_parts is not None and len(parts) > max_parts:
            raise TooComplex(len(parts), max_parts)
        sections: list[int] = []
        inserted: list[bytes] = []
        for index, part in enumerate(parts):
            if part == 0 and type(part) is int:
                # CodeMirror never emits a zero-length keep (addSection drops them), and a trailing
                # one sends its own mapSet/composeSets into their "Mismatched change set lengths"
                # error, so it is malformed input rather than a form to stay faithful to.
                raise InvalidChanges(f"part {index}: a kept range must be at least 1 unit long, got 0")
            if _is_count(part):
                sections.append(part)
                sections.append(_KEEP)
                inserted.append(b"")
            elif isinstance(part, list | tuple):
                if not part:
                    raise InvalidChanges(
                        f"part {index}: a change must start with the number of units it replaces, got an empty list"
                    )
                replaced = part[0]
                if not _is_count(replaced):
                    raise InvalidChanges(
                        f"part {index}: a change must start with a non-negative integer, got {_show(replaced)}"
                    )
                if len(part) == 1:
                    sections.append(replaced)
                    sections.append(0)
                    inserted.append(b"")
                else:
                    text = _encode(_parse_lines(index, part))
                    sections.append(replaced)
                    sections.append(len(text) // 2)
                    inserted.append(text)
            else:
                raise InvalidChanges(f"part {index}: expected a non-negative integer or a list, got {_show(part)}")
        return cls(sections, inserted)

    @classmethod
    def empty(cls, length: int) -> ChangeSet:
        """CodeMirror ``ChangeSet.empty``: no changes to a document of ``length`` units."""
        if not _is_count(length):
            raise InvalidChanges(f"a document length must be a non-negative integer, got {_show(length)}")
        return cls([length, _KEEP] if length else [], [])

    @classmethod
    def of_replace(cls, length: int, start: int, end: int, insert: str) -> ChangeSet:
        """Replace units ``start`` to ``end`` of a document of ``length`` units with ``insert``.

        Gives what CodeMirror's ``ChangeSet.of({from: start, to: end, insert}, length)`` gives, except
        that ``insert`` is taken verbatim: CodeMirror splits it at ``\\r\\n?|\\n`` and so turns "\\r\\n"
        into "\\n", which would make ``apply`` insert something other than ``insert``.
        """
        if not (_is_count(length) and _is_count(start) and _is_count(end) and start <= end <= length):
            raise InvalidChanges(
                f"invalid change range {_show(start)} to {_show(end)} in a document of {_show(length)} units"
            )
        text = _encode(insert)
        sections: list[int] = []
        inserted: list[bytes] = []
        if start == end and not text:
            return cls.empty(length)
        _add_section(sections, start, _KEEP)
        _add_section(sections, end - start, len(text) // 2)
        _add_insert(inserted, sections, text)
        _add_section(sections, length - end, _KEEP)
        return cls(sections, inserted)

    @classmethod
    def diff(
        cls,
        old: str,
        new: str,
        *,
        max_edits: int = DEFAULT_MAX_EDITS,
        max_work: int = DEFAULT_MAX_WORK,
    ) -> ChangeSet:
        """A minimal ChangeSet turning ``old`` into ``new``: ``diff(old, new).apply(old) == new``.

        Trims the common prefix and suffix, then runs Myers' O(ND) diff over the code points of the
        middle. When that would need more than ``max_edits`` edits or ``max_work`` steps, the middle
        is replaced as a whole instead: still correct, just not minimal. A single insertion,
        deletion or replacement is found by the trimming alone and comes back as that one change.
        Code points never split surrogate pairs, so the result is valid wherever ``old`` is.
        """
        prefix = _common_prefix_len(old, new)
        suffix = _common_suffix_len(old, new, min(len(old), len(new)) - prefix)
        mid_old = old[prefix : len(old) - suffix]
        mid_new = new[prefix : len(new) - suffix]
        sections: list[int] = []
        inserted: list[bytes] = []
        _add_section(sections, utf16_len(old[:prefix]), _KEEP)
        matches = _myers_matches(mid_old, mid_new, max_edits, max_work) if mid_old and mid_new else []
        pos_old = pos_new = 0
        for match_old, match_new, size in [*(matches or []), (len(mid_old), len(mid_new), 0)]:
            if match_old > pos_old or match_new > pos_new:
                text = _encode(mid_new[pos_new:match_new])
                _add_section(sections, utf16_len(mid_old[pos_old:match_old]), len(text) // 2)
                _add_insert(inserted, sections, text)
            if size:
                _add_section(sections, utf16_len(mid_old[match_old : match_old + size]), _KEEP)
            pos_old = match_old + size
            pos_new = match_new + size
        _add_section(sections, utf16_len(old[len(old) - suffix :]), _KEEP)
        return cls(sections, inserted)

    # ---- properties -------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Length of the document before the changes, in UTF-16 code units."""
        return self._length

    @property
    def new_length(self) -> int:
        """Length of the document after the changes, in UTF-16 code units."""
        return self._new_length

    @property
    def part_count(self) -> int:
        """Parts (sections) of the set, one per element of :meth:`to_json`: what mapping it costs."""
        return len(self._sections) // 2

    @property
    def is_empty(self) -> bool:
        """True when the set changes nothing.

        Semantic, unlike CodeMirror's ``empty`` getter, which is false for ``[1, 2]`` or ``[[0]]``
        (its shortcuts in ``map``/``compose`` follow CodeMirror's definition, see ``_cm_empty``).
        """
        sections = self._sections
        return all(
            sections[i + 1] < 0 or (sections[i] == 0 and sections[i + 1] == 0) for i in range(0, len(sections), 2)
        )

    @property
    def _cm_empty(self) -> bool:
        # CodeMirror `ChangeDesc.empty`: decides when map/compose return an operand unchanged.
        sections = self._sections
        return not sections or (len(sections) == 2 and sections[1] < 0)

    # ---- operations -------------------------------------------------------------------------

    def apply(self, text: str) -> str:
        """Apply the changes to ``text``, which must be ``length`` UTF-16 units long.

        Raises :class:`InvalidChanges` for a length mismatch, an inserted text with a lone surrogate,
        or a change boundary inside a surrogate pair of ``text``. The document is cut as a str at the
        edges of its kept ranges and joined with the inserted texts: C-level slices and one join.
        UTF-16 offsets equal str indices unless the document has astral characters; only then are
        the edges converted, each by encoding the one chunk that holds it.
        """
        inserts = self._decoded_inserts()
        starts: list[int] | None = None
        if text.isascii():
            units = len(text)
        else:
            starts = _chunk_starts(text)
            units = starts[-1]
            if units == len(text):
                starts = None  # no astral characters: offsets are indices
        if units != self._length:
            raise InvalidChanges(f"changes expect a document of {self._length} units, got {units}")

        sections = self._sections
        pieces: list[str] = []
        pos = 0
        # Only the edges of a run of kept sections are cut, so adjacent keeps or adjacent changes
        # (say [1], [1] deleting both halves of an emoji) never count as splitting a pair: like
        # CodeMirror's iterChanges, adjacent changes replace their joint range as one.
        kept_from: int | None = None
        for i in range(0, len(sections), 2):
            end = pos + sections[i]
            if sections[i + 1] < 0:
                if kept_from is None:
                    kept_from = pos
            else:
                if kept_from is not None:
                    pieces.append(_cut(text, starts, kept_from, pos))
                    kept_from = None
                pieces.append(inserts[i >> 1])
            pos = end
        if kept_from is not None:
            pieces.append(_cut(text, starts, kept_from, pos))
        return "".join(pieces)

    def _decoded_inserts(self) -> list[str]:
        inserts: list[str] = []
        for index, data in enumerate(self._inserted):
            try:
                inserts.append(data.decode(_UTF16) if data else "")
            except UnicodeDecodeError:
                raise InvalidChanges(
                    f"the text inserted by part {index} contains a lone surrogate; it is not valid unicode"
                ) from None
        return inserts

    def map(self, other: ChangeSet, before: bool = False) -> ChangeSet:
        """CodeMirror ``changes.map(other, before)``: these changes rebased onto ``other``'s result.

        Both must start from the same document. With ``before`` false, ``other`` counts as having
        happened first, so at a shared position its insertion ends up before ours. The OT property:
        ``a.compose(b.map(a))`` and ``b.compose(a.map(b, True))`` produce the same document.
        """
        if self._length != other._length:
            raise InvalidChanges(
                f"cannot map changes to a document of {self._length} units "
                f"over changes to a document of {other._length} units"
            )
        if other._cm_empty:
            return self
        apart = _map_apart(self, other)
        return apart if apart is not None else _map_set(self, other, before)

    def compose(self, other: ChangeSet) -> ChangeSet:
        """CodeMirror ``changes.compose(other)``: these changes followed by ``other``, as one set."""
        if self._new_length != other._length:
            raise InvalidChanges(
                f"cannot compose: these changes produce a document of {self._new_length} units, "
                f"the next changes expect {other._length}"
            )
        if self._cm_empty:
            return other
        if other._cm_empty:
            return self
        return _compose_sets(self, other)

    def map_pos(self, pos: int, assoc: int = -1) -> int:
        """CodeMirror ``ChangeDesc.mapPos(pos, assoc)`` in ``MapMode.Simple``.

        ``assoc`` < 0 keeps a position at an insertion point before the inserted text, otherwise
        after it. A position inside a replaced range maps to the start of the replacement when
        ``assoc`` < 0 and to its end otherwise.
        """
        if not _is_count(pos):
            raise InvalidChanges(f"position must be a non-negative integer, got {_show(pos)}")
        sections = self._sections
        pos_a = pos_b = 0
        for i in range(0, len(sections), 2):
            section_len = sections[i]
            ins = sections[i + 1]
            end_a = pos_a + section_len
            if ins < 0:
                if end_a > pos:
                    return pos_b + (pos - pos_a)
                pos_b += section_len
            else:
                if end_a > pos or (end_a == pos and assoc < 0 and not section_len):
                    return pos_b if pos == pos_a or assoc < 0 else pos_b + ins
                pos_b += ins
            pos_a = end_a
        if pos > pos_a:
            raise InvalidChanges(f"position {pos} is out of range for changes of length {pos_a}")
        return pos_b

    # ---- serialisation ----------------------------------------------------------------------

    def iter_changes(self, individual: bool = False) -> Iterator[tuple[int, int, int, int, str]]:
        """CodeMirror ``iterChanges``: each replaced range as ``(from_a, to_a, from_b, to_b,
        inserted)``, positions in UTF-16 units of the old (a) and new (b) document. Adjacent
        changes come as one unless ``individual``, so two sets with the same effect give the
        same ranges however their parts were split."""
        sections = self._sections
        count = len(sections)
        pos_a = pos_b = 0
        i = 0
        while i < count:
            length, ins = sections[i], sections[i + 1]
            i += 2
            if ins < 0:
                pos_a += length
                pos_b += length
                continue
            end_a, end_b = pos_a, pos_b
            texts: list[bytes] = []
            while True:
                end_a += length
                end_b += ins
                if ins:
                    texts.append(self._inserted[(i - 2) >> 1])
                if individual or i == count or sections[i + 1] < 0:
                    break
                length, ins = sections[i], sections[i + 1]
                i += 2
            yield pos_a, end_a, pos_b, end_b, _decode_lenient(b"".join(texts))
            pos_a, pos_b = end_a, end_b

    def to_json(self) -> list[JsonPart]:
        """CodeMirror ``ChangeSet.toJSON()``: one part per section, inserted text split into lines."""
        parts: list[JsonPart] = []
        sections = self._sections
        for i in range(0, len(sections), 2):
            section_len = sections[i]
            ins = sections[i + 1]
            if ins < 0:
                parts.append(section_len)
            elif ins == 0:
                parts.append([section_len])
            else:
                part: list[int | str] = [section_len]
                part.extend(_decode_lenient(self._inserted[i >> 1]).split("\n"))
                parts.append(part)
        return parts

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangeSet):
            return NotImplemented
        return self._sections == other._sections and self._inserted == other._inserted

    def __hash__(self) -> int:
        return hash((self._sections, self._inserted))

    def __repr__(self) -> str:
        shown = repr(self.to_json())
        if len(shown) > _REPR_LIMIT:
            shown = shown[: _REPR_LIMIT - 3] + "..."
        return f"ChangeSet.from_json({shown})"


# --------------------------------------------------------------------------------------------
# Myers diff
# --------------------------------------------------------------------------------------------


def _myers_matches(a: str, b: str, max_edits: int, max_work: int) -> list[tuple[int, int, int]] | None:
    """Matching runs ``(i, j, size)`` of a shortest edit script from ``a`` to ``b`` (Myers 1986).

    Returns None when the script needs more than ``max_edits`` edits or the search more than
    ``max_work`` steps; the caller then replaces the whole range. A step is one diagonal visited
    (with its copy into the trace kept for the backtrack) or one character compared, and the
    budget is checked as it is spent, inside a round and inside a snake, so the work never passes
    ``max_work`` however long the texts are. Memory is O(D²), bounded by both limits.
    """
    n, m = len(a), len(b)
    limit = min(n + m, max_edits)
    offset = limit + 1
    frontier = [0] * (2 * limit + 3)
    trace: list[list[int]] = []
    left = max_work
    for d in range(limit + 1):
        left -= 2 * d + 1  # the diagonals of this round, and their copy into the trace
        if left < 0:
            return None
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and frontier[offset + k - 1] < frontier[offset + k + 1]):
                x = frontier[offset + k + 1]
            else:
                x = frontier[offset + k - 1] + 1
            y = x - k
            # Follow the snake, comparing at most `left` characters.
            stop = x + min(n - x, m - y, left)
            start = x
            while x < stop and a[x] == b[y]:
                x += 1
                y += 1
            left -= x - start
            if x == stop and x < n and y < m and left <= 0:
                return None  # out of budget in the middle of a snake
            frontier[offset + k] = x
            if x >= n and y >= m:
                trace.append(frontier[offset - d : offset + d + 1])
                return _backtrack(trace, n, m)
        trace.append(frontier[offset - d : offset + d + 1])
    return None


def _backtrack(trace: list[list[int]], n: int, m: int) -> list[tuple[int, int, int]]:
    matches: list[tuple[int, int, int]] = []
    x, y = n, m
    for d in range(len(trace) - 1, 0, -1):
        previous = trace[d - 1]  # frontier after step d - 1, index k + (d - 1)
        k = x - y
        if k == -d or (k != d and previous[k - 1 + d - 1] < previous[k + 1 + d - 1]):
            prev_k = k + 1  # came down: an insertion from b
            prev_x = previous[prev_k + d - 1]
            mid_x = prev_x
        else:
            prev_k = k - 1  # came right: a deletion from a
            prev_x = previous[prev_k + d - 1]
            mid_x = prev_x + 1
        if x > mid_x:
            matches.append((mid_x, mid_x - k, x - mid_x))
        x, y = prev_x, prev_x - prev_k
    if x > 0:
        matches.append((0, 0, x))
    matches.reverse()
    return matches
