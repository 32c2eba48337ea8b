"""The pages: ``/`` (create or join a room, `ui.start_page`) and ``/room/{room_id}`` (the shared
editor, `ui.room_page`).

``register`` adds them to NiceGUI; the app calls it once with its services, tests with their own.
Every name and id is shown as text (``ui.label``), never as markup.
"""

from __future__ import annotations

from nicegui import ui

from ui.room_page import room_page
from ui.services import Services
from ui.start_page import start_page

__all__ = ["Services", "register"]


def register(services: Services) -> None:
    ui.page("/", title="collab pad")(lambda: start_page(services))
    ui.page("/room/{room_id}", title="collab pad")(lambda room_id: room_page(services, room_id))
