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
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NewType

from rooms.changes import ChangeSet, utf16_len
from rooms.errors import DocumentTooLarge, InvalidChanges, SeqReused, VersionFromFuture, VersionTooOld

ClientId = NewType("ClientId", str)


@dataclass(frozen=True, slots=True)
class Update:
    """One committed change. ``version`` is the document version after it."""

    version: int
    client_id: ClientId
    seq: int
    changes: ChangeSet
    user_id: str = ""


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


def _unpack(entry: _Entry) -> Update:
    version, client_id, seq, user_id = entry[:4]
    return Update(version, client_id, seq, ChangeSet.unpacked(entry, _CHANGES), user_id)  # type: ignore[arg-type]


class Document:
    """The authoritative text of a room. Pure and synchronous; one per room."""

    def __init__(
        self,
        text: str = "",
        version: int = 0,
        *,
        max_chars: int = 100_000,
        history_limit: int = 2_000,
        dedup_limit: int = 10_000,
        epoch: str | None = None,
    ) -> None:
        if version < 0:
            raise ValueError(f"version must be non-negative, got {version}")
        self.epoch = epoch or secrets.token_hex(8)
        self._text = text
        self._length = utf16_len(text)
        self._version = version
        self.max_chars = max_chars
        self._history: deque[_Entry] = deque(maxlen=history_limit)
        # Per client: the last applied seq and the version it made, least recently used first
        # (so the table stays bounded).
        self._last_seq: OrderedDict[ClientId, tuple[int, int]] = OrderedDict()
        self._dedup_limit = dedup_limit

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
        dedup_limit: int = 10_000,
        epoch: str,
    ) -> Document:
        """A document brought back from storage.

        ``text`` is the text at ``version``; ``updates`` are consecutive, and those after
        ``version`` are applied (those before only fill the history, so that clients a little
        behind can still be caught up and rebased). ``last_seq`` maps each client to its last
        applied seq and the version it made. The size limit is not applied: a document over a
        limit lowered since is kept, as it was.
        """
        document = cls(
            text, version, max_chars=max_chars, history_limit=history_limit, dedup_limit=dedup_limit, epoch=epoch
        )
        for update in updates:
            if document._history and update.version != _version_of(document._history[-1]) + 1:
                raise ValueError(f"update {update.version} does not follow {_version_of(document._history[-1])}")
            if update.version > document._version:
                if update.version != document._version + 1:
                    raise ValueError(f"update {update.version} does not follow version {document._version}")
                document._text = update.changes.apply(document._text)
                document._length = update.changes.new_length
                document._version = update.version
            document._history.append(_pack(update))
        if document._history and _version_of(document._history[-1]) != document._version:
            raise ValueError(f"the history ends at {_version_of(document._history[-1])}, not {document._version}")
        # Least recently used first, as `_commit` keeps it.
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
    ) -> Update | None:
        """Rebase and apply a client's changes; ``None`` if this ``(client_id, seq)`` was applied."""
        if self.is_duplicate(client_id, seq):
            self._check_resend(client_id, seq, base_version, changes)
            return None
        rebased = self.rebase(changes, base_version)
        new_text = rebased.apply(self._text)
        self._check_size(new_text)
        return self._commit(new_text, client_id, seq, rebased, user_id)

    def replace(self, new_text: str, client_id: ClientId, seq: int, user_id: str = "") -> Update | None:
        """Set the whole text (the seed protocol's ``code_change``) as a minimal change.

        ``None`` when the text is unchanged or the push is a resend.
        """
        self._check_size(new_text)
        if self.is_duplicate(client_id, seq):
            return None
        try:
            new_text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidChanges("text holds a lone surrogate; documents must be valid Unicode") from None
        changes = ChangeSet.diff(self._text, new_text)
        if changes.is_empty:
            return None
        return self._commit(new_text, client_id, seq, changes, user_id)

    def _check_size(self, new_text: str) -> None:
        # A change that shrinks a document already over a lowered limit is still allowed.
        if len(new_text) > self.max_chars and len(new_text) > len(self._text):
            raise DocumentTooLarge(len(new_text), self.max_chars)

    def _commit(self, text: str, client_id: ClientId, seq: int, changes: ChangeSet, user_id: str) -> Update:
        self._text = text
        self._length = changes.new_length
        self._version += 1
        update = Update(self._version, client_id, seq, changes, user_id)
        self._history.append(_pack(update))
        self._last_seq[client_id] = (seq, self._version)
        self._last_seq.move_to_end(client_id)
        if len(self._last_seq) > self._dedup_limit:
            self._last_seq.popitem(last=False)
        return update


def caret_after(changes: ChangeSet) -> int:
    """The position just after the last inserted text (or last deletion) in the new document.

    Seed clients expect a ``cursor_position`` with every ``code_change``; for an update from a
    versioned client this is where its author's caret most likely is.
    """
    position = 0  # in the new document
    caret = 0
    for part in changes.to_json():
        if isinstance(part, int):
            position += part
            continue
        if not isinstance(part, list) or not part:
            raise InvalidChanges(f"unexpected part {part!r}")
        lines = [line for line in part[1:] if isinstance(line, str)]
        position += len("\n".join(lines).encode("utf-16-le")) // 2
        caret = position
    return caret


def _canonical(changes: ChangeSet) -> list[tuple[int, int, str]]:
    """``(kept before, deleted, inserted)`` runs: the same for two changes with the same effect,
    however their JSON was split (CodeMirror keeps adjacent parts apart as they were sent)."""
    runs: list[tuple[int, int, str]] = []
    kept = deleted = 0
    inserted = ""
    for part in changes.to_json():
        if isinstance(part, int):
            if deleted or inserted:
                runs.append((kept, deleted, inserted))
                kept = deleted = 0
                inserted = ""
            kept += part
        else:
            deleted += int(part[0])
            inserted += "\n".join(str(line) for line in part[1:])
    if deleted or inserted:
        runs.append((kept, deleted, inserted))
    return runs
