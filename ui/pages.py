"""The pages: ``/`` (create or join a room, `ui.start_page`) and ``/room/{room_id}`` (the shared
editor, `ui.room_page`).

``register`` adds them to NiceGUI; the app calls it once with its services, tests with their own.
Every name and id is shown as text (``ui.label``), never as markup.
"""

from __future__ import annotations

from nicegui import ui
from starlette.requests import Request

from ui.room_page import room_page
from ui.services import Services
from ui.start_page import start_page

__all__ = ["Services", "register"]


def register(services: Services) -> None:
    @ui.page("/", title="collab pad")
    def start(request: Request) -> None:
        start_page(services, request)

    @ui.page("/room/{room_id}", title="collab pad")
    async def room(room_id: str, request: Request) -> None:
        # The request: its cookie holds the room's link, if the browser opened one.
        await room_page(services, room_id, request)
