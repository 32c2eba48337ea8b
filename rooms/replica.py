"""The client side of the versioned protocol: one replica of a room's document.

This is the reference implementation of the algorithm every client runs (the browser component
does the same with CodeMirror's own ChangeSet); the tests and the load generator use it to
drive real servers. It is pure: messages in, messages to send out.

State: ``version`` (the last server version applied), ``inflight`` (one sent batch, not yet
confirmed, with its ``seq``) and ``pending`` (local changes composed, not yet sent). A remote
update ``U`` is rebased past local work with the same tie-break as the server (the
earlier-committed insert first), so every replica converges on the server's text::

    inflight' = inflight.map(U);  U1 = U.map(inflight, before=True)
    pending'  = pending.map(U1);  U2 = U1.map(pending, before=True);  apply U2

A push that changes nothing on the server is confirmed by an ``ack`` instead of an ``update``.
A batch with more parts than the server takes (``max_change_parts`` in ``welcome``) is sent as
one replacement of the span it touches; a ``resync`` error is answered by catching up with
``hello`` and sending the same batch again (`resync`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from rooms.changes import ChangeSet, utf16_len, utf16_to_index
from rooms.errors import InvalidMessage


@dataclass(frozen=True, slots=True)
class Inflight:
    """A sent batch. Its ``changes`` are kept rebased onto the replica's current ``version``."""

    seq: int
    changes: ChangeSet


class Replica:
    """One client's copy of a room's document."""

    def __init__(self, client_id: str, text: str = "", version: int = 0, next_seq: int = 1) -> None:
        self.client_id = client_id
        self.text = text
        self.version = version
        self.next_seq = next_seq
        self.inflight: Inflight | None = None
        self.pending: ChangeSet | None = None
        # The document's epoch from the last welcome (a version means nothing in another one),
        # and our own secret that lets a reconnect take over a connection the server still holds.
        self.epoch: str | None = None
        self.resume_token = secrets.token_urlsafe(16)
        # The most parts the server takes in one push (from `welcome`); None: no limit known.
        self.max_change_parts: int | None = None

    @property
    def has_unconfirmed(self) -> bool:
        return self.inflight is not None or self.pending is not None

    def hello(self, username: str, *, resume: bool = True) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "hello",
            "client_id": self.client_id,
            "username": username,
            "version": self.version if resume else None,
        }
        if resume and self.epoch is not None:
            message["epoch"] = self.epoch
        message["resume_token"] = self.resume_token
        return message

    def edit(self, changes: ChangeSet) -> dict[str, Any] | None:
        """Apply a local edit; returns the push to send, if nothing is in flight."""
        self._apply(changes)
        self.pending = changes if self.pending is None else self.pending.compose(changes)
        return self.flush()

    def flush(self) -> dict[str, Any] | None:
        """Send pending work if nothing is in flight."""
        if self.inflight is not None or self.pending is None:
            return None
        pending = self.pending
        if self.max_change_parts is not None and pending.part_count > self.max_change_parts:
            pending = self._coarsened(pending)
        self.inflight = Inflight(self.next_seq, pending)
        self.next_seq += 1
        self.pending = None
        return self._push(self.inflight)

    def _coarsened(self, changes: ChangeSet) -> ChangeSet:
        """``changes`` (the last thing applied to the text) as one replacement of the span they
        touch: the same result in at most three parts, which the server never refuses as too
        complex. Everything between the first and the last change is sent again as inserted."""
        start = end = None  # in the document before the changes
        position = 0
        for part in changes.to_json():
            size = part if isinstance(part, int) else int(part[0])
            if not isinstance(part, int):
                start = position if start is None else start
                end = position + size
            position += size
        if start is None or end is None:
            return changes
        tail = changes.length - end
        new_end = changes.new_length - tail
        inserted = self.text[utf16_to_index(self.text, start) : utf16_to_index(self.text, new_end)]
        return ChangeSet.of_replace(changes.length, start, end, inserted)

    def resync(self, username: str) -> dict[str, Any]:
        """After a ``resync`` error: the ``hello`` that catches up. The refused batch stays in
        flight. `welcome` returns it at the version resumed from, which the server may find
        too far behind again: send `resend` instead once the catch-up updates that follow the
        welcome are applied (then the batch is at the current version). Given a snapshot,
        `welcome` reports the batch as lost."""
        return self.hello(username)

    def resend(self) -> dict[str, Any] | None:
        """After a reconnect: the in-flight batch again, same seq (the server applies it once)."""
        if self.inflight is None:
            return self.flush()
        return self._push(self.inflight)

    def _push(self, inflight: Inflight) -> dict[str, Any]:
        # The changes were rebased over every update received since they were made, so they
        # apply to the current version; a resend the server already applied is ignored by seq.
        return {"type": "push", "version": self.version, "seq": inflight.seq, "changes": inflight.changes.to_json()}

    def welcome(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Handle ``welcome``; returns the resend of unconfirmed work, if any.

        With a ``doc`` the server could not resume from our version: local work the snapshot
        does not already hold cannot be rebased onto it, so it is reported to the caller
        (`UnconfirmedWorkLost`) and dropped from the replica.
        """
        self.epoch = message.get("epoch", self.epoch)
        self.max_change_parts = message.get("max_change_parts", self.max_change_parts)
        last_seq = message.get("last_seq")
        if last_seq is not None:
            # Never reuse a seq the server has applied (seq_reused), even if our state was lost.
            self.next_seq = max(self.next_seq, int(last_seq) + 1)
        doc = message.get("doc")
        if doc is not None:
            # The snapshot holds the in-flight batch if the server applied it; anything else
            # cannot be rebased onto it.
            applied = self.inflight is not None and last_seq is not None and self.inflight.seq <= last_seq
            lost = self.pending is not None or (self.inflight is not None and not applied)
            self._reset(doc)
            self.version = int(message["version"])
            self.inflight = None
            self.pending = None
            if lost:
                raise UnconfirmedWorkLost(self.version)
            return None
        if int(message["version"]) != self.version:
            raise InvalidMessage(f"welcome resumes at {message['version']}, the replica is at {self.version}")
        if self.inflight is not None:
            # The server's history must reach back to our in-flight base for a resend to rebase.
            return self._push(self.inflight)
        return self.flush()

    def update(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one server ``update``; returns the next push, when one becomes due."""
        version = int(message["version"])
        if version != self.version + 1:
            raise InvalidMessage(f"update {version} does not follow version {self.version}")
        self.version = version
        inflight = self.inflight
        # Only the author's copy of an update carries its client_id.
        if inflight is not None and message.get("client_id") == self.client_id and message["seq"] == inflight.seq:
            self.inflight = None
            # The server applied our batch as `changes`, which the replica already shows.
            return self.flush()
        remote = ChangeSet.from_json(message["changes"])
        if inflight is not None:
            rebased = inflight.changes.map(remote)
            remote = remote.map(inflight.changes, True)
            self.inflight = Inflight(inflight.seq, rebased)
        if self.pending is not None:
            pending = self.pending.map(remote)
            remote = remote.map(self.pending, True)
            self.pending = pending
        self._apply(remote)
        return None

    def ack(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Handle ``ack``: the in-flight batch changed nothing on the server (no version was
        made); it is confirmed as it is and pending work is sent. Returns the next push."""
        inflight = self.inflight
        if inflight is None or message.get("seq") != inflight.seq:
            return None  # an ack of a batch already confirmed (a resend acked twice)
        if int(message["version"]) != self.version:
            raise InvalidMessage(f"ack at version {message['version']}, the replica is at {self.version}")
        if not inflight.changes.is_empty:
            raise InvalidMessage(f"ack of seq {inflight.seq}, whose changes are not empty here")
        self.inflight = None
        return self.flush()

    def _apply(self, changes: ChangeSet) -> None:
        """Show changes made at the replica's current text (local, or remote and rebased)."""
        self.text = changes.apply(self.text)

    def _reset(self, doc: str) -> None:
        """Start over from a snapshot of the server's text."""
        self.text = doc

    @property
    def length(self) -> int:
        return utf16_len(self.text)


class UnconfirmedWorkLost(Exception):
    """The server reset this replica to a snapshot; its unconfirmed edits could not be kept."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"the server no longer has the history to rebase local edits (reset to version {version})")
