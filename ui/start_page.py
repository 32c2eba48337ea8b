"""``/``: the start page, to create a room or join one by its link, and to choose a name."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from urllib.parse import urlparse

from nicegui import app, ui

from rooms.limits import ROOM_ID
from rooms.settings import Settings
from ui.editor import Identity
from ui.identity import IdentityDialog, stored_identity
from ui.services import Services

ROOM_ID_BYTES = 12  # 96 bits of randomness, 16 url-safe characters


def new_room_id() -> str:
    return secrets.token_urlsafe(ROOM_ID_BYTES)


def room_id_from(text: str) -> str | None:
    """The room id in a pasted link (``https://host/room/<id>``) or a bare id; None if neither."""
    text = text.strip()
    if not text:
        return None
    if "/" in text:
        path = urlparse(text).path if "://" in text else text
        parts = [part for part in path.split("/") if part]
        if len(parts) >= 2 and parts[-2] == "room":
            text = parts[-1]
        else:
            return None
    return text if ROOM_ID.fullmatch(text) else None


def start_page(services: Services) -> None:
    """The page of ``/``."""
    StartPage(services.settings)


class StartPage:
    """The start page of one browser: its profile line, "Create a room" and "Join a room"."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ui.dark_mode().bind_value(app.storage.user, "dark")
        with ui.column().classes("w-full max-w-xl mx-auto p-8 gap-6"):
            with ui.column().classes("gap-1"):
                ui.label("collab pad").classes("text-4xl font-bold")
                ui.label(
                    "A shared code editor for interviews and pair programming. Open a room, send the link."
                ).classes("text-gray-500")
            self.profile()
            with ui.card().classes("w-full gap-3"):
                ui.label("Start a new room").classes("text-lg font-medium")
                create = ui.button("Create a room", icon="add", on_click=lambda: self.go(new_room_id()))
                create.classes("collab-create").mark("create-room")
            with ui.card().classes("w-full gap-3"):
                ui.label("Join a room").classes("text-lg font-medium")
                self.link = ui.input("Paste a link or a room id").classes("w-full collab-join-input").mark("room-link")
                self.link.on("keydown.enter", self.join)
                ui.button("Join", icon="login", on_click=self.join).classes("collab-join").mark("join-room")

    @ui.refreshable_method
    def profile(self) -> None:
        who = stored_identity()
        with ui.row().classes("items-center gap-2"):
            if who is None:
                ui.label("You have not chosen a name yet.").classes("text-gray-500")
            else:
                ui.element("span").classes("inline-block w-3 h-3 rounded-full").style(f"background: {who.color}")
                ui.label("You appear as")
                ui.label(who.username).classes("font-medium collab-profile-name")
            ui.button("Change", on_click=lambda: self.ask(required=False)).props("flat dense")

    def ask(self, *, required: bool, then: Callable[[], None] | None = None) -> None:
        def saved(_: Identity) -> None:
            self.profile.refresh()
            if then is not None:
                then()

        IdentityDialog(self.settings, saved, required=required).open()

    def go(self, room_id: str) -> None:
        """Open the room, once the user has a name."""
        if stored_identity() is None:
            self.ask(required=True, then=lambda: ui.navigate.to(f"/room/{room_id}"))
        else:
            ui.navigate.to(f"/room/{room_id}")

    def join(self) -> None:
        room_id = room_id_from(self.link.value or "")
        if room_id is None:
            ui.notify("That is not a room link or id.", type="warning")
            return
        self.go(room_id)
