"""``/``: the start page, to create a room or join one by its link, and to choose a name.

"Create a room" makes a private room, whose creator is its interviewer: the page opens the
interviewer's link (``/join/{room_id}/{secret}``), which keeps the secret in the browser's
cookie for that room and goes on to the room.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from nicegui import app, background_tasks, ui
from starlette.requests import Request

from api.credentials import client_address
from rooms.access import Role
from rooms.errors import RoomError
from rooms.limits import ROOM_ID, new_room_id
from ui.access import LINK_SECRET
from ui.editor import Identity
from ui.identity import IdentityDialog, stored_identity
from ui.services import Services


def link_target(text: str) -> str | None:
    """The page a pasted link or id opens, on this server: ``/join/<id>/<secret>`` for a link
    with a secret (``https://host/join/<id>/<secret>``), ``/room/<id>`` for a room's link or a
    bare id; None if it is neither."""
    text = text.strip()
    if not text:
        return None
    if "/" not in text:
        return f"/room/{text}" if ROOM_ID.fullmatch(text) else None
    path = urlparse(text).path if "://" in text else text
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 3 and parts[-3] == "join" and ROOM_ID.fullmatch(parts[-2]) and LINK_SECRET.fullmatch(parts[-1]):
        return f"/join/{parts[-2]}/{parts[-1]}"
    if len(parts) >= 2 and parts[-2] == "room" and ROOM_ID.fullmatch(parts[-1]):
        return f"/room/{parts[-1]}"
    return None


def start_page(services: Services, request: Request) -> None:
    """The page of ``/``, for ``request``."""
    StartPage(services, client_address(request))


class StartPage:
    """The start page of one browser: its profile line, "Create a room" and "Join a room".
    ``address`` is the browser's, as every limit sees it: new rooms are limited per address."""

    def __init__(self, services: Services, address: str) -> None:
        self.services = services
        self.settings = services.settings
        self.address = address
        ui.dark_mode().bind_value(app.storage.user, "dark")
        with ui.column().classes("w-full max-w-xl mx-auto p-8 gap-6") as self.root:
            with ui.column().classes("gap-1"):
                ui.label("collab pad").classes("text-4xl font-bold")
                ui.label(
                    "A shared code editor for interviews and pair programming. Open a room, send the link."
                ).classes("text-gray-500")
            self.profile()
            with ui.card().classes("w-full gap-3"):
                ui.label("Start a new room").classes("text-lg font-medium")
                ui.label("A private room: you are its interviewer, and share links with the others.").classes(
                    "text-sm text-gray-500"
                )
                create = ui.button("Create a room", icon="add", on_click=self.create)
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

    def go(self, path: str) -> None:
        """Open a room's page (or link), once the user has a name."""
        if stored_identity() is None:
            self.ask(required=True, then=lambda: ui.navigate.to(path))
        else:
            ui.navigate.to(path)

    def create(self) -> None:
        """Make a private room and open it as its interviewer, once the user has a name."""
        if stored_identity() is None:
            self.ask(required=True, then=self._create_soon)
        else:
            self._create_soon()

    def _create_soon(self) -> None:
        background_tasks.create(self._create(), name="collab-create-room")

    async def _create(self) -> None:
        room_id = new_room_id()
        try:
            secrets = await self.services.registry().create_private(room_id, self.address)
        except RoomError as error:  # too many new rooms from this address, a server too busy...
            if not self.root.is_deleted:
                with self.root:
                    ui.notify(f"The room could not be made: {error}.", type="warning")
            return
        if not self.root.is_deleted:
            with self.root:
                ui.navigate.to(f"/join/{room_id}/{secrets[Role.INTERVIEWER]}")

    def join(self) -> None:
        target = link_target(self.link.value or "")
        if target is None:
            ui.notify("That is not a room link or id.", type="warning")
            return
        self.go(target)
