"""The interviewers' notes beside the editor: one text the room keeps and shares among
interviewers only (no other role's connection is ever sent it), rendered on interviewers' pages
only.

What the user types is sent once typing pauses (`SEND_AFTER_SECONDS`); notes from another
interviewer are shown as they come, except while this page holds notes of its own that the room
has not stored: typed and waiting to be sent, sent and not committed yet, or typed while the
page was not connected (or refused). Those are newer: they are kept, and sent again when the
room next speaks to the page with notes, which it does right after every welcome to an
interviewer. Notes the room took count as saved only once it has stored them (`ui.saving`): if
that commit fails, the room is reset, and the notes of the welcome that follows are older than
the page's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nicegui import background_tasks, ui

from ui.saving import SAVING, wait_stored

SEND_AFTER_SECONDS = 0.5
UNSENT = "Not saved yet: sent again once the page is connected."


class NotesPanel:
    """``save`` hands the room this page's notes and waits until the room has stored them: True
    then; False when the room did not take them (not connected, or refused: it tells the user
    why) or could not store them."""

    def __init__(self, text: str, save: Callable[[str], Awaitable[bool]], *, max_chars: int) -> None:
        self.save = save
        self._waiting: asyncio.Task[None] | None = None  # the send of what was typed last
        self._showing = False  # the text is being set from the room, not typed
        self._saves = 0  # numbers each save: only the newest one's outcome counts
        self.unsent = False  # the text shown was typed here and the room has not stored it yet
        with ui.column().classes("collab-notes-panel gap-1 p-2") as self.panel:
            ui.label("Interviewer notes").classes("font-medium")
            ui.label("Only interviewers see these.").classes("text-xs text-gray-500")
            self.area = ui.textarea(value=text, on_change=self._typed)
            self.area.props(f"outlined maxlength={max_chars}").classes("w-full collab-notes").mark("notes")
            self.saving_label = ui.label(SAVING).classes("text-xs text-gray-500 collab-notes-saving")
            self.saving_label.mark("notes-saving").set_visibility(False)
            self.unsent_label = ui.label(UNSENT).classes("text-xs text-amber-700 collab-notes-unsent")
            self.unsent_label.mark("notes-unsent").set_visibility(False)

    @property
    def typing(self) -> bool:
        return self._waiting is not None and not self._waiting.done()

    def show(self, text: str) -> None:
        """Notes from the room: another interviewer's, or the room's after a welcome."""
        if self.typing:
            return  # sent once typing pauses
        if self.unsent:
            self._send()  # the room speaks to this page again: ours are newer than its
            return
        if text == self.area.value:
            return
        self._showing = True
        try:
            self.area.set_value(text)
        finally:
            self._showing = False

    def _typed(self) -> None:
        if self._showing:
            return
        if self._waiting is not None:
            self._waiting.cancel()  # typing goes on: send once it pauses
        self._waiting = background_tasks.create(self._send_when_typing_pauses(), name="collab-notes")

    async def _send_when_typing_pauses(self) -> None:
        await asyncio.sleep(SEND_AFTER_SECONDS)
        if not self.panel.is_deleted:
            self._send()

    def _send(self) -> None:
        """Save the notes shown, in a task of its own: typing has paused once this is called, and
        notes from the room must find the page's notes unsent until the room has stored them."""
        self.unsent = True
        self._saves += 1
        background_tasks.create(self._save(self.area.value or "", self._saves), name="collab-notes-save")

    async def _save(self, text: str, number: int) -> None:
        def saving(shown: bool) -> None:
            if number == self._saves and not self.saving_label.is_deleted:
                self.saving_label.set_visibility(shown)

        with self.panel:  # the page's context, for a notice
            stored = await wait_stored(self.save(text), saving)
        if number != self._saves or self.panel.is_deleted:
            return  # a newer save decides
        self.unsent_label.set_visibility(not stored)
        if stored and text == (self.area.value or ""):
            self.unsent = False  # typed since: sent again once typing pauses
