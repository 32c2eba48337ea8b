"""Who the user is in rooms: a display name and a cursor colour, asked for in a dialog and kept
by NiceGUI in ``app.storage.user``: per browser (a signed cookie names it), on the server that
served the page (files under ``DATA_DIR``; with several processes, a browser that moves to
another process is asked again)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from nicegui import app, ui

from rooms.limits import clean_username
from rooms.presence import PALETTE
from rooms.settings import Settings
from ui.editor import Identity


def stored_identity() -> Identity | None:
    """The name and colour this browser chose, or None before it chose any."""
    name = app.storage.user.get("name")
    color = app.storage.user.get("color")
    if not isinstance(name, str) or not name:
        return None
    return Identity(name, color if isinstance(color, str) and color in PALETTE else PALETTE[0])


class IdentityDialog:
    """Asks for a display name and a colour; remembered for this browser.

    ``on_saved`` gets the new identity. A ``required`` dialog cannot be dismissed without one.
    """

    def __init__(
        self,
        settings: Settings,
        on_saved: Callable[[Identity], None],
        *,
        required: bool,
        suggested_color: str | None = None,
    ) -> None:
        current = stored_identity()
        self.settings = settings
        self.on_saved = on_saved
        self.color = current.color if current else suggested_color or secrets.choice(PALETTE)
        self.swatches: dict[str, ui.button] = {}
        self.dialog = ui.dialog().props("persistent" if required else "")
        # One dialog per question, gone once answered or dismissed (Esc, a click outside): a later
        # one must not find this one's fields.
        self.dialog.on_value_change(lambda event: None if event.value else self.dialog.delete())
        with self.dialog, ui.card().classes("w-96 gap-3"):
            ui.label("Your name in rooms").classes("text-lg font-medium")
            self.name = (
                ui.input(
                    "Display name",
                    value=current.username if current else "",
                    validation={"Enter a name": lambda value: bool(value and value.strip())},
                )
                .props(f"autofocus maxlength={settings.max_username_chars}")
                .classes("w-full collab-name-input")
                .mark("name")
            )
            self.name.on("keydown.enter", self.save)
            ui.label("Colour of your cursor").classes("text-sm text-gray-500")
            with ui.row().classes("gap-1"):
                for color in PALETTE:
                    self.swatches[color] = (
                        ui.button(on_click=lambda _, c=color: self.pick(c))
                        .props("round dense unelevated size=sm")
                        .style(f"background-color: {color} !important; color: white")
                    )
            self.pick(self.color)
            with ui.row().classes("w-full justify-end gap-2"):
                if not required:
                    ui.button("Cancel", on_click=self.dialog.close).props("flat")
                ui.button("Save", on_click=self.save).classes("collab-save-name").mark("save-name")

    def open(self) -> None:
        self.dialog.open()

    def pick(self, color: str) -> None:
        self.color = color
        for value, swatch in self.swatches.items():
            swatch.props(f"icon={'check' if value == color else 'none'}")

    def save(self) -> None:
        if not self.name.value or not self.name.value.strip():
            self.name.validate()
            return
        cleaned = clean_username(self.name.value, self.settings.max_username_chars)
        app.storage.user["name"] = cleaned
        app.storage.user["color"] = self.color
        self.on_saved(Identity(cleaned, self.color))  # while the dialog still exists: it may navigate
        self.dialog.close()
