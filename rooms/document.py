"""The room authority: one text, its version, and the recent history of changes.

Clients push changes made against the version they had seen. The document rebases a push over
every update committed since that version (``changes.map(update.changes)``, in order), applies
it, and records it as the next version. Both the server and the clients put the
earlier-committed insert first at a tie (the server maps with ``before=False``, clients map
remote updates over their own work with ``before=True``), so every replica converges.

A push is identified by ``(client_id, seq)``; ``seq`` grows with each push of a client. A
resend (after a reconnect or a page reload) repeats the seq of the batch that was in flight, so
a push whose seq equals the last applied one is ignored when it is the same change (the client
sees its update in the stream instead); a lower seq, or the same seq with other changes, comes
from a second copy of the client and raises `SeqReused`.

``epoch`` names this document's history. Versions count from 0 in each epoch, so a client that
resumes at "version 12" of another epoch (the room was unloaded and made anew) gets a snapshot
instead of updates that would not fit its text.

Everything is checked before anything changes: a bad ChangeSet, a version the history no
longer reaches, or a result over the size limit raises and leaves the document as it was.

The cost of one push is known before it is paid: every history entry keeps its part count and a
size in bytes, with running totals, so the work of rebasing a push (``rebase_steps``) and the
size of a catch-up (``bytes_since``) are a subtraction, not a walk. The history is bounded by
both a count and a total size; a push that changes nothing creates no version.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NewType

from rooms.changes import DEFAULT_MAX_WORK, ChangeSet, utf16_len
from rooms.errors import DocumentTooLarge, InvalidChanges, Resync, SeqReused, VersionFromFuture, VersionTooOld

ClientId = NewType("ClientId", str)


@dataclass(frozen=True, slots=True)
class Update:
    """One committed change. ``version`` is the document version after it."""

    version: int
    client_id: ClientId
    seq: int
    changes: ChangeSet
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A push that, rebased, changes nothing: no version is made, its author is only told so.

    Its seq is not recorded for dedup: there is nothing to apply twice (a resend is answered the
    same way), and a recorded seq must point at the version it made, which this push has none of.
    """

    version: int
    seq: int


# A history entry: an `Update` as one flat tuple of atoms (version, client id, seq, user id, then
# `ChangeSet.packed`), which the garbage collector stops tracking at its first collection. The
# history holds thousands of updates per room; as objects, they made every collection of the
# older generations walk them again (100-300 ms pauses at 500 clients).
_Entry = tuple[int | str | bytes, ...]
_CHANGES = 4  # where an entry's packed changes start


def _pack(update: Update) -> _Entry:
    return (update.version, update.client_id, update.seq, update.user_id, *update.changes.packed())


def _version_of(entry: _Entry) -> int:
    return entry[0]  # type: ignore[return-value]


# Bytes counted for an entry beyond its strings: the tuple's slots, the int objects CPython makes
# for lengths above 256 and the bytes objects' headers (tracemalloc: ~43 bytes a part for
# 1000-part updates). Used to bound a room's memory and to judge a catch-up's size before
# encoding it, which it overestimates (a part is 2 to 12 characters of JSON besides its text).
_ENTRY_OVERHEAD = 160
_BYTES_PER_PART = 40


def _parts_of(entry: _Entry) -> int:
    return entry[_CHANGES + 2] // 2  # type: ignore[operator]


def _size_of(entry: _Entry) -> int:
    """A cheap measure of an entry's memory: its strings and bytes, plus a constant per part."""
    parts = _parts_of(entry)
    strings = sum(len(atom) for atom in entry if not isinstance(atom, int))  # ids and inserted texts
    return _ENTRY_OVERHEAD + _BYTES_PER_PART * parts + strings


def _unpack(entry: _Entry) -> Update:
    version, client_id, seq, user_id = entry[:4]
    return Update(version, client_id, seq, ChangeSet.unpacked(entry, _CHANGES), user_id)  # type: ignore[arg-type]


# Most separate edits a full-text replacement is split into; beyond, the differing middle is one
# replacement. Every later push that is behind it is rebased over its parts, so a full-text client's
# `code_change` must not leave an update of thousands of parts for others to pay for.
FULL_TEXT_DIFF_MAX_EDITS = 100


@dataclass(frozen=True, slots=True)
class _Undo:
    """What one applied update replaced: enough to take it back (`Document.rollback`). Only
    the first after a point `settle` may be called at (`mark_settle_point`) keeps the text a
    rollback goes back to: a room's updates waiting for a stalled store do not each hold a copy
    of the document."""

    text: str | None
    length: int
    client_id: ClientId
    last_seq: tuple[int, int] | None


class Document:
    """The authoritative text of a room. Pure and synchronous; one per room."""

    def __init__(
        self,
        text: str = "",
        version: int = 0,
        *,
        max_chars: int = 100_000,
        history_limit: int = 2_000,
        history_limit_bytes: int = 16_000_000,
        dedup_limit: int = 10_000,
        epoch: str | None = None,
        diff_max_steps: int = DEFAULT_MAX_WORK,
    ) -> None:
        if version < 0:
            raise ValueError(f"version must be non-negative, got {version}")
        self.epoch = epoch or secrets.token_hex(8)
        self._text = text
        self._length = utf16_len(text)
        self._version = version
        self.max_chars = max_chars
        self.diff_max_steps = diff_max_steps
        self._history: deque[_Entry] = deque()
        self._history_limit = history_limit
        self._history_limit_bytes = history_limit_bytes
        # Running totals, per kept entry, of (parts, bytes) over every entry ever kept up to and
        # including it; `_totals_before` are those before the oldest kept one. The parts or bytes
        # of any run of recent entries is then one subtraction.
        self._totals: deque[tuple[int, int]] = deque()
        self._totals_before: tuple[int, int] = (0, 0)
        # Per client: the last applied seq and the version it made, least recently used first
        # (so the table stays bounded).
        self._last_seq: OrderedDict[ClientId, tuple[int, int]] = OrderedDict()
        self._dedup_limit = dedup_limit
        # With `keep_undo`, what each update since the last `settle` replaced (`rollback`).
        self._undo: list[_Undo] | None = None
        self._text_next = False  # `mark_settle_point`

    @classmethod
    def restored(
        cls,
        text: str,
        version: int,
        updates: Sequence[Update],
        last_seq: Mapping[ClientId, tuple[int, int]],
        *,
        max_chars: int = 100_000,
        history_limit: int = 2_000,
        history_limit_bytes: int = 16_000_000,
        dedup_limit: int = 10_000,
        epoch: str,
        diff_max_steps: int = DEFAULT_MAX_WORK,
    ) -> Document:
        """A document brought back from storage.

        ``text`` is the text at ``version``; ``updates`` are consecutive, and those after
        ``version`` are applied (those before only fill the history, so that clients a little
        behind can still be caught up and rebased). ``last_seq`` maps each client to its last
        applied seq and the version it made. The size limit is not applied: a document over a
        limit lowered since is kept, as it was. The history keeps what fits both of its limits,
        newest first, as it would have had the updates been pushed.
        """
        document = cls(
            text,
            version,
            max_chars=max_chars,
            history_limit=history_limit,
            history_limit_bytes=history_limit_bytes,
            dedup_limit=dedup_limit,
            epoch=epoch,
            diff_max_steps=diff_max_steps,
        )
        previous: int | None = None
        for update in updates:
            if previous is not None and update.version != previous + 1:
                raise ValueError(f"update {update.version} does not follow {previous}")
            previous = update.version
            if update.version > document._version:
                if update.version != document._version + 1:
                    raise ValueError(f"update {update.version} does not follow version {document._version}")
                document._text = update.changes.apply(document._text)
                document._length = update.changes.new_length
                document._version = update.version
            document._remember(_pack(update))
        if previous is not None and previous != document._version:
            raise ValueError(f"the history ends at {previous}, not {document._version}")
        # Least recently used first, as `_apply` keeps it.
        for client_id, last in sorted(last_seq.items(), key=lambda item: item[1][1])[-dedup_limit:]:
            document._last_seq[client_id] = last
        return document

    @property
    def text(self) -> str:
        return self._text

    @property
    def version(self) -> int:
        return self._version

    @property
    def length(self) -> int:
        """The text's length in UTF-16 code units, the unit of every position on the wire."""
        return self._length

    def length_at(self, version: int) -> int:
        """The length the document had at ``version`` (which must still be in the history)."""
        entries = self._entries_since(version)
        return ChangeSet.unpacked(entries[0], _CHANGES).length if entries else self._length

    @property
    def oldest_version(self) -> int:
        """The oldest version a client may still push against or resume from."""
        if not self._history:
            return self._version
        return _version_of(self._history[0]) - 1

    @property
    def history_bytes(self) -> int:
        """The size of the kept history, by the measure `HISTORY_LIMIT_BYTES` bounds."""
        return self._totals[-1][1] - self._totals_before[1] if self._totals else 0

    def _totals_since(self, version: int) -> tuple[int, int]:
        """(parts, bytes) of the updates after ``version``: O(1) but for deque indexing."""
        if version > self._version:
            raise VersionFromFuture(version, self._version)
        if version < self.oldest_version:
            raise VersionTooOld(version, self.oldest_version, self._version)
        count = self._version - version
        if not count:
            return (0, 0)
        totals = self._totals
        start = len(totals) - count
        before = totals[start - 1] if start else self._totals_before
        last = totals[-1]
        return (last[0] - before[0], last[1] - before[1])

    def bytes_since(self, version: int) -> int:
        """An upper estimate of the size of the updates after ``version``, without encoding them.

        Raises `VersionTooOld` or `VersionFromFuture` as `updates_since` does.
        """
        return self._totals_since(version)[1]

    def rebase_steps(self, base_version: int, parts: int) -> int:
        """The work of rebasing a push of ``parts`` parts made at ``base_version``, in part-steps.

        Mapping one set over another walks the parts of both, so it is, for every version behind,
        the push's parts plus that update's. Known before any of it is done; raises
        `VersionTooOld` or `VersionFromFuture` as `rebase` does.
        """
        behind_parts = self._totals_since(base_version)[0]
        return (self._version - base_version) * parts + behind_parts

    def check_rebase(self, base_version: int, parts: int, max_versions: int | None, max_steps: int | None) -> int:
        """The steps of rebasing such a push (see `rebase_steps`); `Resync` beyond either bound."""
        steps = self.rebase_steps(base_version, parts)
        behind = self._version - base_version
        too_far = max_versions is not None and behind > max_versions
        if too_far or (max_steps is not None and steps > max_steps):
            raise Resync(behind, steps, max_versions or 0, max_steps or 0)
        return steps

    def last_seq(self, client_id: ClientId) -> int | None:
        last = self._last_seq.get(client_id)
        return None if last is None else last[0]

    def is_duplicate(self, client_id: ClientId, seq: int) -> bool:
        last = self._last_seq.get(client_id)
        return last is not None and seq <= last[0]

    def _check_resend(self, client_id: ClientId, seq: int, base_version: int, changes: ChangeSet) -> None:
        """Raise `SeqReused` unless this push repeats the change its seq was applied as."""
        last_seq, applied = self._last_seq[client_id]
        if seq < last_seq:
            raise SeqReused(seq, last_seq)
        # The resend was rebased by the client over the updates it saw before it lost the
        # connection; rebased over the rest up to where the server applied it, it must be the
        # very change the server applied. Where the history is gone it cannot be checked.
        if not self.oldest_version <= base_version < applied:
            return
        updates = self.updates_since(base_version)
        offset = applied - 1 - base_version  # updates[offset] is the one this seq made
        for update in updates[:offset]:
            changes = changes.map(update.changes)
        original = updates[offset].changes
        if changes.length != original.length or _canonical(changes) != _canonical(original):
            raise SeqReused(seq, last_seq)

    def updates_since(self, version: int) -> list[Update]:
        """Every update after ``version``, oldest first."""
        return [_unpack(entry) for entry in self._entries_since(version)]

    def _entries_since(self, version: int) -> list[_Entry]:
        if version > self._version:
            raise VersionFromFuture(version, self._version)
        if version < self.oldest_version:
            raise VersionTooOld(version, self.oldest_version, self._version)
        history = self._history
        return [history[index] for index in range(len(history) - (self._version - version), len(history))]

    def rebase(self, changes: ChangeSet, base_version: int) -> ChangeSet:
        """Map ``changes`` made at ``base_version`` over everything committed since."""
        unpacked = ChangeSet.unpacked
        for entry in self._entries_since(base_version):
            changes = changes.map(unpacked(entry, _CHANGES))
        return changes

    def push(
        self,
        client_id: ClientId,
        seq: int,
        base_version: int,
        changes: ChangeSet,
        user_id: str = "",
        *,
        max_versions: int | None = None,
        max_steps: int | None = None,
    ) -> Update | Unchanged | None:
        """Rebase and apply a client's changes.

        ``None`` if this ``(client_id, seq)`` was applied; `Unchanged` (no new version, nothing
        recorded) if the changes, rebased, change nothing. With ``max_versions`` or
        ``max_steps``, a push whose rebase would pass either raises `Resync` before any work is
        done; a resend that far behind is ignored without the check that it repeats its change.
        """
        bounded = max_versions is not None or max_steps is not None
        if self.is_duplicate(client_id, seq):
            if bounded:
                try:
                    self.check_rebase(base_version, changes.part_count, max_versions, max_steps)
                except (Resync, VersionTooOld, VersionFromFuture):
                    return None
            self._check_resend(client_id, seq, base_version, changes)
            return None
        if bounded:
            self.check_rebase(base_version, changes.part_count, max_versions, max_steps)
        if changes.is_empty:
            if changes.length != self.length_at(base_version):
                raise InvalidChanges(
                    f"changes expect a document of {changes.length} units, "
                    f"it had {self.length_at(base_version)} at version {base_version}"
                )
            return Unchanged(self._version, seq)
        rebased = self.rebase(changes, base_version)
        if rebased.is_empty:
            return Unchanged(self._version, seq)  # everything it deleted was deleted already
        new_text = rebased.apply(self._text)
        self._check_size(new_text)
        return self._apply(new_text, client_id, seq, rebased, user_id)

    def replace(self, new_text: str, client_id: ClientId, seq: int, user_id: str = "") -> Update | None:
        """Set the whole text (the full-text protocol's ``code_change``) as a minimal change.

        ``None`` when the text is unchanged or the push is a resend. The diff spends at most
        ``diff_max_steps``; beyond that the change is one replacement of the differing middle.
        """
        self._check_size(new_text)
        if self.is_duplicate(client_id, seq):
            return None
        try:
            new_text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidChanges("text holds a lone surrogate; documents must be valid Unicode") from None
        changes = ChangeSet.diff(self._text, new_text, max_edits=FULL_TEXT_DIFF_MAX_EDITS, max_work=self.diff_max_steps)
        if changes.is_empty:
            return None
        return self._apply(new_text, client_id, seq, changes, user_id)

    def _check_size(self, new_text: str) -> None:
        # A change that shrinks a document already over a lowered limit is still allowed.
        if len(new_text) > self.max_chars and len(new_text) > len(self._text):
            raise DocumentTooLarge(len(new_text), self.max_chars)

    def append(self, update: Update) -> Update:
        """Apply an update made elsewhere (another process sharing the room) at the next
        version, as it was made: no rebase, its ``(client_id, seq)`` remembered for dedup.
        Raises `InvalidChanges` when it is not for the next version or this text."""
        if update.version != self._version + 1:
            raise InvalidChanges(f"an update to version {update.version} cannot follow version {self._version}")
        if update.changes.length != self._length:
            raise InvalidChanges(f"changes expect a document of {update.changes.length} units, it has {self._length}")
        text = update.changes.apply(self._text)
        return self._apply(text, update.client_id, update.seq, update.changes, update.user_id)

    # Undo (a room shared by several processes: its commit may lose to another process's)

    def keep_undo(self) -> None:
        """From now on, remember what every update replaced until it is `settle`d."""
        if self._undo is None:
            self._undo = []

    def mark_settle_point(self) -> None:
        """`settle` may be called at the current version later: the next update keeps its text."""
        self._text_next = True

    def settle(self, version: int) -> None:
        """Updates up to ``version`` are committed: they will never be rolled back."""
        undo = self._undo
        if undo:
            del undo[: max(0, len(undo) - (self._version - version))]

    def rollback(self, version: int) -> None:
        """Take back every update after ``version``, the last settled one: the text, version,
        history and seqs are as they were at ``version``. Raises `ValueError` for any other
        version (one settled, or not the last settled), or without `keep_undo`."""
        undo = self._undo
        if undo is None or self._version - version != len(undo) or (undo and undo[0].text is None):
            raise ValueError(f"cannot roll back from version {self._version} to {version}")
        if undo:
            first = undo[0]
            assert first.text is not None
            self._text, self._length, self._version = first.text, first.length, version
        while undo:
            entry = undo.pop()
            if self._history:  # the history may have forgotten it already (its limits)
                self._history.pop()
                self._totals.pop()
            if entry.last_seq is None:
                self._last_seq.pop(entry.client_id, None)
            else:
                self._last_seq[entry.client_id] = entry.last_seq

    def _apply(self, text: str, client_id: ClientId, seq: int, changes: ChangeSet, user_id: str) -> Update:
        if self._undo is not None:
            kept = self._text if not self._undo or self._text_next else None
            self._text_next = False
            self._undo.append(_Undo(kept, self._length, client_id, self._last_seq.get(client_id)))
        self._text = text
        self._length = changes.new_length
        self._version += 1
        update = Update(self._version, client_id, seq, changes, user_id)
        self._remember(_pack(update))
        self._last_seq[client_id] = (seq, self._version)
        self._last_seq.move_to_end(client_id)
        if len(self._last_seq) > self._dedup_limit:
            self._last_seq.popitem(last=False)
        return update

    def _remember(self, entry: _Entry) -> None:
        """Keep an entry in the history, forgetting the oldest while either limit is passed."""
        parts, size = self._totals[-1] if self._totals else self._totals_before
        self._history.append(entry)
        self._totals.append((parts + _parts_of(entry), size + _size_of(entry)))
        history, totals = self._history, self._totals
        while history and (
            len(history) > self._history_limit or totals[-1][1] - self._totals_before[1] > self._history_limit_bytes
        ):
            history.popleft()
            self._totals_before = totals.popleft()


def caret_after(changes: ChangeSet) -> int:
    """Where the author's caret most likely is after ``changes``: just after the last text
    inserted (or deleted), in the new document. Full-text clients expect a ``cursor_position``
    with every ``code_change``, for updates from versioned clients too."""
    caret = 0
    for _, _, _, to_b, _ in changes.iter_changes():
        caret = to_b
    return caret


def _canonical(changes: ChangeSet) -> list[tuple[int, int, str]]:
    """``(from, to, inserted)`` ranges: the same for two changes with the same effect, however
    their JSON was split (CodeMirror keeps adjacent parts apart as they were sent)."""
    return [(from_a, to_a, inserted) for from_a, to_a, _, _, inserted in changes.iter_changes()]
