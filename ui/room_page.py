"""``/room/{room_id}``: the shared editor of one room, with its header and presence panel."""

from __future__ import annotations

from nicegui import app, ui
from nicegui.events import GenericEventArguments

from rooms.limits import ROOM_ID
from rooms.presence import pick_color
from rooms.protocol import Language
from ui.editor import CollabEditor, ConnectionBadge, Identity, RoomActivity, Roster
from ui.history import open_history
from ui.identity import IdentityDialog, stored_identity
from ui.languages import LANGUAGES, extension_for, label_for
from ui.presence_panel import PresencePanel
from ui.room_dialogs import offer_lost_text, offer_to_take_over
from ui.services import Services

PAGE_CSS = """
.collab-editor { height: calc(100vh - 64px); width: 100%; }
.collab-editor .cm-editor { height: 100%; font-size: 14px; }
.nicegui-content { padding: 0 !important; }
"""
HEADER_BUTTON = "flat dense round color=white"


def room_page(services: Services, room_id: str) -> None:
    """The page of ``/room/{room_id}``: the room, once the user has a name."""
    if not ROOM_ID.fullmatch(room_id):
        with ui.column().classes("w-full max-w-xl mx-auto p-8 gap-4"):
            ui.label("This is not a valid room link.").classes("text-2xl")
            ui.label("Room ids are 1 to 64 letters, digits, '-' or '_'.")
            ui.link("Back to the start page", "/")
        return
    ui.page_title(f"{room_id} · collab pad")
    ui.dark_mode().bind_value(app.storage.user, "dark")
    ui.add_css(PAGE_CSS)
    client = ui.context.client

    def enter(who: Identity) -> None:
        with client.content:  # the header and drawer must be direct children of the page
            RoomPage(services, room_id, who)

    who = stored_identity()
    if who is not None:
        enter(who)
        return
    room = services.registry().rooms.get(room_id)
    free = pick_color(member.color for member in room.presence) if room is not None else None
    IdentityDialog(services.settings, enter, required=True, suggested_color=free).open()


def is_dark() -> bool:
    return bool(app.storage.user.get("dark"))


class RoomPage:
    """One browser page in a room: the header's controls, the editor, the presence panel."""

    def __init__(self, services: Services, room_id: str, who: Identity) -> None:
        self.services = services
        self.settings = services.settings
        self.room_id = room_id
        self.identity = who
        self.lost_dialog: ui.dialog | None = None
        # The room's language as last heard: read from the room once, so that the first render
        # shows it; from then on, as the editor's connection reports it.
        room = services.registry().rooms.get(room_id)
        self.language: str | None = room.language if room is not None else None
        self._header(self.language or self.settings.default_language)
        self.editor = CollabEditor(
            services.registry,
            self.settings,
            room_id,
            self._current_identity,
            language=self.language or self.settings.default_language,
            theme="dark" if is_dark() else "light",
            on_members=self._show_members,
            on_activity=self._show_activity,
        ).classes("w-full")
        self.editor.on("lost", self._on_lost)
        self.editor.on("notice", self._on_notice)
        self.editor.on("paused", lambda: offer_to_take_over(self.editor))
        self.presence = PresencePanel()

    # The header

    def _header(self, language: str) -> None:
        with ui.header().classes("items-center gap-3 px-4 py-2 bg-slate-800 text-white"):
            ui.link("collab pad", "/").classes("text-white font-bold no-underline")
            ui.label(self.room_id).classes("font-mono text-sm opacity-80 collab-room-name")
            ui.button(icon="link", on_click=self.copy_link).props(HEADER_BUTTON).mark("copy-link").tooltip(
                "Copy the link to this room"
            )
            ui.space()
            self._language_select(language)
            self.theme = ui.button(icon="light_mode" if is_dark() else "dark_mode", on_click=self.toggle_theme)
            self.theme.props(HEADER_BUTTON).mark("theme").tooltip("Light or dark theme")
            history = ui.button(icon="history", on_click=self.show_history).classes("collab-history-open")
            history.props(HEADER_BUTTON).mark("history").tooltip("Play back how the code was written")
            ui.button(icon="download", on_click=self.download).props(HEADER_BUTTON).tooltip("Download the code")
            ConnectionBadge()
            self._me_button()

    def _language_select(self, language: str) -> None:
        self.select = (
            ui.select(dict(LANGUAGES), value=language, on_change=lambda event: self.choose_language(event.value))
            .props("dense dark options-dense borderless")
            .classes("w-40 collab-language")
            .mark("language")
        )
        if language not in LANGUAGES:
            self.select.set_options({**LANGUAGES, language: label_for(language)}, value=language)

    def _me_button(self) -> None:
        me = ui.button(on_click=self.change_identity).props("flat dense no-caps color=white")
        with me.classes("collab-me").mark("me"):
            self.me_dot = ui.element("span").classes("inline-block w-3 h-3 rounded-full mr-2")
            self.me_dot.style(f"background: {self.identity.color}")
            self.me_name = ui.label(self.identity.username)

    def copy_link(self) -> None:
        ui.run_javascript("navigator.clipboard.writeText(window.location.href).catch(() => {})")
        ui.notify("Link copied: send it to whoever should join.", type="positive")

    def choose_language(self, value: str | None) -> None:
        """The user picked a language for the room."""
        if value is None or value == self.language:
            return
        session = self.editor.session
        if session is None:
            ui.notify("Not connected: the language cannot be changed right now.", type="warning")
            self._show_room_language()
            return
        # The room's `language` message brings it to every page, this one included.
        self.services.registry().receive(session, Language(type="language", language=value))
        room = self.services.registry().rooms.get(self.room_id)
        if room is None or room.language != value:  # refused (a rate limit): the room keeps its own
            ui.notify("The room's language cannot be changed right now.", type="warning")
            self._show_room_language()

    def _show_room_language(self) -> None:
        """Show the room's language as last heard (if any) in the select and the editor's props."""
        language = self.language
        if language is None:
            return
        if language not in self.select.options:
            self.select.set_options({**LANGUAGES, language: label_for(language)})
        self.select.set_value(language)
        self.editor.set_language(language)

    def toggle_theme(self) -> None:
        dark = not is_dark()
        app.storage.user["dark"] = dark
        self.theme.props(f"icon={'light_mode' if dark else 'dark_mode'}")
        self.editor.set_theme("dark" if dark else "light")

    def show_history(self) -> None:
        open_history(
            self.services.registry(),
            self.room_id,
            self.editor,
            language=self.select.value or self.settings.default_language,
            dark=is_dark(),
        )

    def download(self) -> None:
        self.editor.download(f"{self.room_id}.{extension_for(self.select.value)}")

    def change_identity(self) -> None:
        IdentityDialog(self.settings, self._identity_saved, required=False).open()

    def _identity_saved(self, new: Identity) -> None:
        self.identity = new
        self.me_name.set_text(new.username)
        self.me_dot.style(f"background: {new.color}")
        self.editor.rejoin()  # a new hello: the room learns the new name and colour

    def _current_identity(self) -> Identity:
        return stored_identity() or self.identity  # a rename in another tab applies too

    # What the editor's connection reports

    def _show_members(self, roster: Roster) -> None:
        self.presence.show_roster(roster)

    def _show_activity(self, activity: RoomActivity) -> None:
        self.presence.show_typing(activity.typing)
        if activity.language is not None and activity.language != self.language:  # chosen here or elsewhere
            self.language = activity.language
            self._show_room_language()

    def _on_lost(self, event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        text, reason = args.get("text"), args.get("reason")
        if not isinstance(text, str):
            return
        if self.lost_dialog is not None and not self.lost_dialog.is_deleted:
            self.lost_dialog.delete()  # one at a time: the newest text is what the page holds
        self.lost_dialog = offer_lost_text(self.editor, text, reason if isinstance(reason, str) else "")

    def _on_notice(self, event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        level = args.get("level")
        ui.notify(
            str(args.get("message", ""))[:300],
            type="negative" if level == "negative" else "warning" if level == "warning" else "info",
        )
