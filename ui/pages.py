"""The pages: ``/`` (create or join a room) and ``/room/{room_id}`` (the shared editor).

``register`` adds them to NiceGUI; the app calls it once with its registry, tests with their own.
Every name and id is shown as text (``ui.label``), never as markup.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

from nicegui import app, ui
from nicegui.events import GenericEventArguments

from rooms.errors import RoomError
from rooms.limits import ROOM_ID, clean_username
from rooms.presence import PALETTE, pick_color
from rooms.protocol import Language
from rooms.registry import Room, RoomRegistry
from rooms.settings import Settings
from ui.editor import CollabEditor, ConnectionBadge, Identity
from ui.history import open_history
from ui.languages import LANGUAGES, extension_for, label_for

ROOM_ID_BYTES = 12  # 96 bits of randomness, 16 url-safe characters
PRESENCE_INTERVAL_SECONDS = 0.4
TYPING_SECONDS = 2.0


@dataclass(frozen=True)
class Services:
    registry: Callable[[], RoomRegistry]
    settings: Settings


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


# The user's profile, kept by NiceGUI in app.storage.user (per browser, signed cookie).


def stored_identity() -> Identity | None:
    name = app.storage.user.get("name")
    color = app.storage.user.get("color")
    if not isinstance(name, str) or not name:
        return None
    return Identity(name, color if isinstance(color, str) and color in PALETTE else PALETTE[0])


def identity_dialog(
    settings: Settings, on_saved: Callable[[Identity], None], *, required: bool, suggested_color: str | None = None
) -> ui.dialog:
    """Ask for a display name and a colour; remembered for this browser."""
    current = stored_identity()
    chosen = {"color": current.color if current else suggested_color or secrets.choice(PALETTE)}
    dialog = ui.dialog().props("persistent" if required else "")
    # One dialog per question, gone once answered or dismissed (Esc, a click outside): a later
    # one must not find this one's fields.
    dialog.on_value_change(lambda event: None if event.value else dialog.delete())
    with dialog, ui.card().classes("w-96 gap-3"):
        ui.label("Your name in rooms").classes("text-lg font-medium")
        name = (
            ui.input(
                "Display name",
                value=current.username if current else "",
                validation={"Enter a name": lambda value: bool(value and value.strip())},
            )
            .props(f"autofocus maxlength={settings.max_username_chars}")
            .classes("w-full collab-name-input")
            .mark("name")
        )
        ui.label("Colour of your cursor").classes("text-sm text-gray-500")
        swatches: dict[str, ui.button] = {}

        def pick(color: str) -> None:
            chosen["color"] = color
            for value, swatch in swatches.items():
                swatch.props(f"icon={'check' if value == color else 'none'}")

        with ui.row().classes("gap-1"):
            for color in PALETTE:
                swatches[color] = (
                    ui.button(on_click=lambda _, c=color: pick(c))
                    .props("round dense unelevated size=sm")
                    .style(f"background-color: {color} !important; color: white")
                )
        pick(chosen["color"])

        def save() -> None:
            cleaned = clean_username(name.value, settings.max_username_chars)
            if not name.value or not name.value.strip():
                name.validate()
                return
            app.storage.user["name"] = cleaned
            app.storage.user["color"] = chosen["color"]
            on_saved(Identity(cleaned, chosen["color"]))  # while the dialog still exists: it may navigate
            dismiss()

        def dismiss() -> None:
            dialog.close()

        name.on("keydown.enter", save)
        with ui.row().classes("w-full justify-end gap-2"):
            if not required:
                ui.button("Cancel", on_click=dismiss).props("flat")
            ui.button("Save", on_click=save).classes("collab-save-name").mark("save-name")
    return dialog


def register(services: Services) -> None:
    ui.page("/", title="collab pad")(lambda: home_page(services))
    ui.page("/room/{room_id}", title="collab pad")(lambda room_id: room_page(services, room_id))


# /


def home_page(services: Services) -> None:
    settings = services.settings
    ui.dark_mode().bind_value(app.storage.user, "dark")
    with ui.column().classes("w-full max-w-xl mx-auto p-8 gap-6"):
        with ui.column().classes("gap-1"):
            ui.label("collab pad").classes("text-4xl font-bold")
            ui.label("A shared code editor for interviews and pair programming. Open a room, send the link.").classes(
                "text-gray-500"
            )

        @ui.refreshable
        def profile() -> None:
            who = stored_identity()
            with ui.row().classes("items-center gap-2"):
                if who is None:
                    ui.label("You have not chosen a name yet.").classes("text-gray-500")
                else:
                    ui.element("span").classes("inline-block w-3 h-3 rounded-full").style(f"background: {who.color}")
                    ui.label("You appear as")
                    ui.label(who.username).classes("font-medium collab-profile-name")
                ui.button("Change", on_click=lambda: ask(required=False)).props("flat dense")

        def ask(required: bool, then: Callable[[], None] | None = None) -> None:
            def saved(_: Identity) -> None:
                profile.refresh()
                if then is not None:
                    then()

            identity_dialog(settings, saved, required=required).open()

        profile()

        def go(room_id: str) -> None:
            if stored_identity() is None:
                ask(required=True, then=lambda: ui.navigate.to(f"/room/{room_id}"))
            else:
                ui.navigate.to(f"/room/{room_id}")

        with ui.card().classes("w-full gap-3"):
            ui.label("Start a new room").classes("text-lg font-medium")
            create = ui.button("Create a room", icon="add", on_click=lambda: go(new_room_id()))
            create.classes("collab-create").mark("create-room")

        with ui.card().classes("w-full gap-3"):
            ui.label("Join a room").classes("text-lg font-medium")
            link = ui.input("Paste a link or a room id").classes("w-full collab-join-input").mark("room-link")

            def join() -> None:
                room_id = room_id_from(link.value or "")
                if room_id is None:
                    ui.notify("That is not a room link or id.", type="warning")
                    return
                go(room_id)

            link.on("keydown.enter", join)
            ui.button("Join", icon="login", on_click=join).classes("collab-join").mark("join-room")


# /room/{room_id}


@dataclass
class PresenceView:
    """What the side panel shows, read from the room every few hundred milliseconds."""

    room: Room | None = None
    seen_version: int = 0
    typed_at: dict[str, float] = field(default_factory=dict)
    members: list[tuple[str, str, str]] = field(default_factory=list)  # (user_id, username, color)
    typing: frozenset[str] = frozenset()
    language: str | None = None

    def poll(self, registry: RoomRegistry, room_id: str, now: float) -> bool:
        """Read the room; True when something shown changed."""
        room = registry.rooms.get(room_id)
        if room is not self.room:
            self.room = room
            self.seen_version = room.document.version if room is not None else 0
        if room is None:
            changed = bool(self.members)
            self.members = []
            return changed
        document = room.document
        if document.version > self.seen_version:
            try:
                for update in document.updates_since(self.seen_version):
                    if update.user_id:
                        self.typed_at[update.user_id] = now
            except RoomError:
                pass  # older than the history kept: nobody is typing that long ago
            self.seen_version = document.version
        members = [(str(m.user_id), m.username, m.color) for m in room.presence]
        self.typed_at = {uid: at for uid, at in self.typed_at.items() if now - at < TYPING_SECONDS}
        typing = frozenset(self.typed_at)
        changed = members != self.members or typing != self.typing or room.language != self.language
        self.members, self.typing, self.language = members, typing, room.language
        return changed


def room_page(services: Services, room_id: str) -> None:
    settings = services.settings
    if not ROOM_ID.fullmatch(room_id):
        with ui.column().classes("w-full max-w-xl mx-auto p-8 gap-4"):
            ui.label("This is not a valid room link.").classes("text-2xl")
            ui.label("Room ids are 1 to 64 letters, digits, '-' or '_'.")
            ui.link("Back to the start page", "/")
        return

    ui.page_title(f"{room_id} · collab pad")
    ui.dark_mode().bind_value(app.storage.user, "dark")
    ui.add_css(
        """
        .collab-editor { height: calc(100vh - 64px); width: 100%; }
        .collab-editor .cm-editor { height: 100%; font-size: 14px; }
        .nicegui-content { padding: 0 !important; }
        """
    )
    client = ui.context.client

    def build(who: Identity) -> None:
        with client.content:  # the header and drawer must be direct children of the page
            build_room(services, room_id, who)

    who = stored_identity()
    if who is None:
        room = services.registry().rooms.get(room_id)
        free = pick_color(member.color for member in room.presence) if room is not None else None
        identity_dialog(settings, build, required=True, suggested_color=free).open()
    else:
        build(who)


def build_room(services: Services, room_id: str, who: Identity) -> None:
    settings = services.settings
    registry = services.registry()
    existing = registry.rooms.get(room_id)
    language = existing.language if existing is not None else settings.default_language
    identity = {"value": who}
    dark = bool(app.storage.user.get("dark"))

    editor: CollabEditor

    with ui.header().classes("items-center gap-3 px-4 py-2 bg-slate-800 text-white"):
        ui.link("collab pad", "/").classes("text-white font-bold no-underline")
        ui.label(room_id).classes("font-mono text-sm opacity-80 collab-room-name")
        ui.button(icon="link", on_click=lambda: copy_link()).props("flat dense round color=white").mark(
            "copy-link"
        ).tooltip("Copy the link to this room")
        ui.space()
        select = (
            ui.select(dict(LANGUAGES), value=language, on_change=lambda e: choose_language(e.value))
            .props("dense dark options-dense borderless")
            .classes("w-40 collab-language")
            .mark("language")
        )
        if language not in LANGUAGES:
            select.set_options({**LANGUAGES, language: label_for(language)}, value=language)
        theme = ui.button(icon="dark_mode" if not dark else "light_mode", on_click=lambda: toggle_theme())
        theme.props("flat dense round color=white").mark("theme").tooltip("Light or dark theme")
        history = ui.button(icon="history", on_click=lambda: show_history()).classes("collab-history-open")
        history.props("flat dense round color=white").mark("history").tooltip("Play back how the code was written")
        ui.button(icon="download", on_click=lambda: editor.download(f"{room_id}.{extension_for(select.value)}")).props(
            "flat dense round color=white"
        ).tooltip("Download the code")
        ConnectionBadge()
        with (
            ui.button(on_click=lambda: change_identity())
            .props("flat dense no-caps color=white")
            .classes("collab-me")
            .mark("me")
        ):
            me_dot = ui.element("span").classes("inline-block w-3 h-3 rounded-full mr-2")
            me_dot.style(f"background: {who.color}")
            me_name = ui.label(who.username)

    presence = PresenceView()

    editor = CollabEditor(
        services.registry,
        settings,
        room_id,
        lambda: stored_identity() or identity["value"],  # a rename in another tab applies too
        language=language,
        theme="dark" if dark else "light",
    ).classes("w-full")

    lost_dialog: dict[str, ui.dialog | None] = {"open": None}

    def on_lost(event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        text, reason = args.get("text"), args.get("reason")
        if not isinstance(text, str):
            return
        if lost_dialog["open"] is not None and not lost_dialog["open"].is_deleted:
            lost_dialog["open"].delete()  # one at a time: the newest text is what the page holds
        lost_dialog["open"] = offer_lost_text(editor, text, reason if isinstance(reason, str) else "")

    def on_paused(event: GenericEventArguments) -> None:
        with ui.dialog() as dialog, ui.card().classes("gap-3"):
            dialog.on_value_change(lambda e: None if e.value else dialog.delete())
            ui.label("This room is open in another tab or window").classes("text-lg font-medium")
            ui.label("Editing here is paused so that the two do not send the same edits twice.")
            with ui.row().classes("w-full justify-end gap-2"):
                ui.button("Keep it there", on_click=dialog.close).props("flat")

                def take_back() -> None:
                    dialog.close()
                    editor.rejoin()

                ui.button("Use this tab", on_click=take_back)
        dialog.open()

    def on_notice(event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        level = args.get("level")
        ui.notify(
            str(args.get("message", ""))[:300],
            type="negative" if level == "negative" else "warning" if level == "warning" else "info",
        )

    editor.on("lost", on_lost)
    editor.on("notice", on_notice)
    editor.on("paused", on_paused)

    with ui.right_drawer(value=True, fixed=True).props("width=220 bordered").classes("p-3 gap-2 collab-presence"):

        @ui.refreshable
        def people() -> None:
            mine = editor.session.user_id if editor.session is not None else None
            ui.label(f"In this room ({len(presence.members)})").classes("font-medium collab-member-count")
            for user_id, username, color in presence.members:
                with ui.row().classes("items-center gap-2 no-wrap collab-member"):
                    ui.element("span").classes("inline-block w-3 h-3 rounded-full shrink-0").style(
                        f"background: {color}"
                    )
                    ui.label(username).classes("truncate collab-member-name")
                    if user_id == mine:
                        ui.label("(you)").classes("text-xs text-gray-500")
                    if user_id in presence.typing and user_id != mine:
                        ui.label("typing…").classes("text-xs italic text-gray-500 collab-typing")

        people()

    previous: dict[str, str] = {}
    own_ids: set[str] = set()  # this page's sessions, past and present: never announced

    def refresh_presence() -> None:
        if not presence.poll(services.registry(), room_id, time.monotonic()):
            return
        mine = editor.session.user_id if editor.session is not None else None
        if mine is not None:
            own_ids.add(mine)
        now_members = {uid: name for uid, name, _ in presence.members}
        if previous or mine is not None:
            joined = [name for uid, name in now_members.items() if uid not in previous and uid not in own_ids]
            left = [name for uid, name in previous.items() if uid not in now_members and uid not in own_ids]
            # A reconnect is a leave and a join under one name: not news.
            for name in set(joined) & set(left):
                joined.remove(name)
                left.remove(name)
            for name in joined:
                ui.notify(f"{name} joined", position="bottom-left", timeout=2500)
            for name in left:
                ui.notify(f"{name} left", position="bottom-left", timeout=2500)
        previous.clear()
        previous.update(now_members)
        if presence.language is not None and presence.language != select.value:
            if presence.language not in select.options:
                select.set_options({**LANGUAGES, presence.language: label_for(presence.language)})
            select.set_value(presence.language)
            editor.set_language(presence.language)
        people.refresh()

    ui.timer(PRESENCE_INTERVAL_SECONDS, refresh_presence)

    def choose_language(value: str | None) -> None:
        if value is None or value == presence.language:
            return
        if editor.session is None:
            ui.notify("Not connected: the language cannot be changed right now.", type="warning")
            if presence.language is not None:
                select.set_value(presence.language)
            return
        # The room's `language` message brings it to every page, this one included.
        try:
            registry.handle(editor.session, Language(type="language", language=value))
        except RoomError as error:
            ui.notify(str(error), type="warning")
            if presence.language is not None:  # the room keeps its language: show it again
                select.set_value(presence.language)

    def toggle_theme() -> None:
        now_dark = not bool(app.storage.user.get("dark"))
        app.storage.user["dark"] = now_dark
        theme.props(f"icon={'light_mode' if now_dark else 'dark_mode'}")
        editor.set_theme("dark" if now_dark else "light")

    def show_history() -> None:
        open_history(
            services.registry(),
            room_id,
            editor,
            language=select.value or language,
            dark=bool(app.storage.user.get("dark")),
        )

    def copy_link() -> None:
        ui.run_javascript("navigator.clipboard.writeText(window.location.href).catch(() => {})")
        ui.notify("Link copied: send it to whoever should join.", type="positive")

    def change_identity() -> None:
        def saved(new: Identity) -> None:
            identity["value"] = new
            me_name.set_text(new.username)
            me_dot.style(f"background: {new.color}")
            editor.rejoin()

        identity_dialog(settings, saved, required=False).open()


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


def offer_lost_text(editor: CollabEditor, text: str, reason: str) -> ui.dialog:
    """Edits of this page that the room could not take: show the user their text."""
    with ui.dialog() as dialog, ui.card().classes("w-[40rem] max-w-full gap-3 collab-lost"):
        dialog.on_value_change(lambda event: None if event.value else dialog.delete())
        ui.label("Some of your text is not in the room").classes("text-lg font-medium")
        ui.label(
            LOST_REASONS.get(reason, "The room refused this page's unsent edits.")
            + " Here is your text as it was: copy what you need, or replace the room's text with it."
        ).classes("text-sm")
        area = ui.textarea(value=text).props("readonly outlined autogrow").classes("w-full font-mono text-xs")
        area.style("max-height: 50vh; overflow: auto")
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Copy", on_click=lambda: ui.clipboard.write(text)).props("flat")

            def replace() -> None:
                editor.set_text(text)
                dialog.close()

            ui.button("Replace the room's text with mine", on_click=replace).props("flat color=negative")
            ui.button("Dismiss", on_click=dialog.close)
    dialog.open()
    return dialog
