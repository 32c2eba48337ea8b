"""The interviewers' notes beside the editor: one text the room keeps and shares among
interviewers only (no other role's connection is ever sent it), rendered on interviewers' pages
only.

What the user types is sent once typing pauses (`SEND_AFTER_SECONDS`); notes from another
interviewer are shown as they come, except while this page holds notes of its own that the room
has not taken: typed and waiting to be sent, or typed while the page was not connected (or
refused). Those are newer: they are kept, and sent again when the room next speaks to the page
with notes, which it does right after every welcome to an interviewer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nicegui import background_tasks, ui

SEND_AFTER_SECONDS = 0.5
UNSENT = "Not saved yet: sent again once the page is connected."


class NotesPanel:
    """``send`` hands the room this page's notes and says whether the room took them (False:
    not connected, or refused; it tells the user why)."""

    def __init__(self, text: str, send: Callable[[str], bool], *, max_chars: int) -> None:
        self.send = send
        self._waiting: asyncio.Task[None] | None = None  # the send of what was typed last
        self._showing = False  # the text is being set from the room, not typed
        self.unsent = False  # the text shown was typed here and the room has not taken it
        with ui.column().classes("collab-notes-panel gap-1 p-2") as self.panel:
            ui.label("Interviewer notes").classes("font-medium")
            ui.label("Only interviewers see these.").classes("text-xs text-gray-500")
            self.area = ui.textarea(value=text, on_change=self._typed)
            self.area.props(f"outlined maxlength={max_chars}").classes("w-full collab-notes").mark("notes")
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
        if self.panel.is_deleted:
            return
        with self.panel:  # a task of its own: the page's context, for a notice
            self._send()

    def _send(self) -> None:
        self.unsent = not self.send(self.area.value or "")
        self.unsent_label.set_visibility(self.unsent)
