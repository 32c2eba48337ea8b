"""What the room page reads from the room itself: its language and who typed in it lately.

Who is *in* the room comes from the editor's own connection (`ui.editor.Roster`); these two are
not part of what it reports, so the page reads them from the room a few times a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rooms.errors import RoomError
from rooms.room import Room

TYPING_SECONDS = 2.0


@dataclass
class RoomActivity:
    """The room's language and the members whose edits arrived in the last `TYPING_SECONDS`."""

    language: str | None = None  # None until a room is seen
    typing: frozenset[str] = frozenset()  # user ids
    room: Room | None = None
    seen_version: int = 0
    typed_at: dict[str, float] = field(default_factory=dict)

    def read(self, room: Room | None, now: float) -> None:
        """Catch up with ``room`` (None while it is not loaded) at time ``now``."""
        if room is not self.room:
            # Another room object (loaded again): its updates so far are not news.
            self.room = room
            self.seen_version = room.document.version if room is not None else 0
        if room is None:
            self.typed_at.clear()
            self.typing = frozenset()
            return
        document = room.document
        if document.version > self.seen_version:
            try:
                for update in document.updates_since(self.seen_version):
                    if update.user_id:
                        self.typed_at[update.user_id] = now
            except RoomError:
                pass  # older than the history kept: nobody is typing that long ago
            self.seen_version = document.version
        self.typed_at = {user_id: at for user_id, at in self.typed_at.items() if now - at < TYPING_SECONDS}
        self.typing = frozenset(self.typed_at)
        self.language = room.language
