"""The interviewers' notes beside the editor: one text the room keeps and shares among
interviewers only (no other role's connection is ever sent it), rendered on interviewers' pages
only.

What the user types is sent once typing pauses (`SEND_AFTER_SECONDS`); notes from another
interviewer are shown as they come, except while this page has typed notes of its own waiting
to be sent: those are newer, and replace them in the room a moment later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nicegui import background_tasks, ui

SEND_AFTER_SECONDS = 0.5


class NotesPanel:
    """``send`` hands the room this page's notes and says whether they could be sent."""

    def __init__(self, text: str, send: Callable[[str], bool], *, max_chars: int) -> None:
        self.send = send
        self._waiting: asyncio.Task[None] | None = None  # the send of what was typed last
        self._showing = False  # the text is being set from the room, not typed
        with ui.column().classes("collab-notes-panel gap-1 p-2") as self.panel:
            ui.label("Interviewer notes").classes("font-medium")
            ui.label("Only interviewers see these.").classes("text-xs text-gray-500")
            self.area = ui.textarea(value=text, on_change=self._typed)
            self.area.props(f"outlined maxlength={max_chars}").classes("w-full collab-notes").mark("notes")

    @property
    def typing(self) -> bool:
        return self._waiting is not None and not self._waiting.done()

    def show(self, text: str) -> None:
        """Notes another interviewer wrote (or the room's, after a welcome)."""
        if self.typing or text == self.area.value:
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
            self.send(self.area.value or "")
