"""What the room page asks: when the editor reports trouble (edits the room could not take, the
same room open in another tab), and before an interviewer ends the interview or removes a
member."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nicegui import ui

from ui.editor import CollabEditor

LOST_REASONS = {
    "history": "The room moved on too far while this page was away, so your unsent edits could not be merged.",
    "reset": "The room's text was started again (the server restarted without keeping rooms), so the text "
    "this page had is not in it.",
    "stale": "This tab's saved state was older than what the room has from it, so its unsent edits were "
    "not sent again (they may already be in the room).",
    "duplicate": "Another copy of this tab holds its edits, so this one continues as a new member.",
    "failing": "The server keeps failing to take this page's edits. They are kept here and sent again as "
    "soon as it works; here is your text in case it does not.",
}


def offer_lost_text(editor: CollabEditor, text: str, reason: str, *, may_edit: bool = True) -> ui.dialog:
    """Edits of this page that the room could not take: show the user their text. ``may_edit``:
    the member may edit now (their role, the room's lock and end), so the room would take the
    text as a replacement; otherwise only copying it is offered."""
    with ui.dialog() as dialog, ui.card().classes("w-[40rem] max-w-full gap-3 collab-lost"):
        dialog.on_value_change(lambda event: None if event.value else dialog.delete())
        ui.label("Some of your text is not in the room").classes("text-lg font-medium")
        offer = (
            " Here is your text as it was: copy what you need, or replace the room's text with it."
            if may_edit
            else " The editor is read-only for you now. Here is your text as it was: copy what you need."
        )
        ui.label(LOST_REASONS.get(reason, "The room refused this page's unsent edits.") + offer).classes("text-sm")
        area = ui.textarea(value=text).props("readonly outlined autogrow").classes("w-full font-mono text-xs")
        area.style("max-height: 50vh; overflow: auto")
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Copy", on_click=lambda: ui.clipboard.write(text)).props("flat")

            def replace() -> None:
                editor.set_text(text)
                dialog.close()

            if may_edit:  # otherwise the room would refuse it again (`read_only`)
                ui.button("Replace the room's text with mine", on_click=replace).props("flat color=negative")
            ui.button("Dismiss", on_click=dialog.close)
    dialog.open()
    return dialog


def offer_to_take_over(editor: CollabEditor) -> ui.dialog:
    """The room is edited from another tab of this browser, so this one paused: offer to edit here."""
    with ui.dialog() as dialog, ui.card().classes("gap-3"):
        dialog.on_value_change(lambda event: None if event.value else dialog.delete())
        ui.label("This room is open in another tab or window").classes("text-lg font-medium")
        ui.label("Editing here is paused so that the two do not send the same edits twice.")
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Keep it there", on_click=dialog.close).props("flat")

            def take_back() -> None:
                dialog.close()
                editor.rejoin()

            ui.button("Use this tab", on_click=take_back)
    dialog.open()
    return dialog


def confirm_end(end: Callable[[], Awaitable[object]]) -> ui.dialog:
    """Ask an interviewer before ending the interview: it cannot be undone."""
    return _confirm(
        "End the interview?",
        "The candidate's link stops working and the editor becomes a read-only record for everyone "
        "but interviewers. This cannot be undone.",
        "End the interview",
        end,
        name="end",
    )


def confirm_remove(username: str, link_name: str, remove: Callable[[], Awaitable[object]]) -> ui.dialog:
    """Ask an interviewer before removing a member: it revokes the link they came through
    (``link_name``: "the candidate link"), so everyone who came through it leaves too."""
    return _confirm(
        f"Remove {username}?",
        f"This revokes {link_name}: everyone who joined through it leaves, and nobody can come back "
        "through it. To invite someone else, make a new link in the share dialog.",
        f"Remove {username}",
        remove,
        name="remove",
    )


def _confirm(title: str, text: str, action: str, act: Callable[[], Awaitable[object]], *, name: str) -> ui.dialog:
    """A dialog asking to confirm what cannot be undone: Cancel, or ``action`` (which runs
    ``act``). Its card has the class ``collab-{name}-dialog``, its button ``collab-{name}-confirm``."""
    with ui.dialog() as dialog, ui.card().classes(f"w-[32rem] max-w-full gap-3 collab-{name}-dialog"):
        dialog.on_value_change(lambda event: None if event.value else dialog.delete())
        ui.label(title).classes("text-lg font-medium")
        ui.label(text).classes("text-sm")
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Cancel", on_click=dialog.close).props("flat")

            async def confirmed() -> None:
                dialog.close()
                await act()

            confirm = ui.button(action, on_click=confirmed).props("color=negative no-caps")
            confirm.classes(f"collab-{name}-confirm").mark(f"{name}-confirm")
    dialog.open()
    return dialog
