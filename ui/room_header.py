"""The room page's header: only the controls the member's role may use.

Everyone gets the theme, the download, the connection badge, the presence toggle and their own
name. An open room adds its link to copy; the room's language is a select for whoever may change
it and a label for observers; history and the question picker are for open rooms and
interviewers; interviewers also get the lock, the "Running code allowed" switch (and a badge
while it is off), the share dialog and the end of the interview. On a phone-sized screen the
less frequent controls move into a menu (Quasar's ``gt-xs`` and ``xs`` classes show one or the
other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nicegui import ui

from rooms.access import Act, Role, allowed
from ui.editor import ConnectionBadge
from ui.languages import LANGUAGES, label_for
from ui.reports import AccessState

if TYPE_CHECKING:
    from ui.room_page import RoomPage

HEADER_BUTTON = "flat dense round color=white"
WIDE_ONLY = "gt-xs"  # hidden on phone-sized screens, where the header's menu has it
PHONE_ONLY = "xs"


class RoomHeader:
    """The header of one room page; `show_access` and `show_language` keep it in step."""

    def __init__(self, page: RoomPage, language: str, *, dark: bool, runs_allowed: bool = True) -> None:
        self.page = page
        role = page.role
        interviewer = role is Role.INTERVIEWER
        self.select: ui.select | None = None
        self.question: ui.button | None = None
        self.question_item: ui.menu_item | None = None
        self.runs: ui.switch | None = None
        self.runs_item: ui.menu_item | None = None
        self.runs_item_label: ui.item_section | None = None
        self.runs_off: ui.badge | None = None
        self.language_label: ui.label | None = None
        self.lock: ui.button | None = None
        self.end: ui.button | None = None
        self.end_item: ui.menu_item | None = None
        with ui.header().classes("items-center gap-2 px-2 sm:px-4 py-2 bg-slate-800 text-white no-wrap"):
            ui.link("collab pad", "/").classes(f"text-white font-bold no-underline {WIDE_ONLY}")
            ui.label(page.room_id).classes(f"font-mono text-sm opacity-80 truncate collab-room-name {WIDE_ONLY}")
            if role is None:
                copy = self._button("link", page.copy_link, "Copy the link to this room", "collab-copy-link")
                copy.mark("copy-link")
            ui.space()
            self._language(language)
            if allowed(role, Act.QUESTION):
                pick = self._button("quiz", page.pick_question, "Pick the room's question", "collab-question-pick")
                self.question = pick.mark("question-pick")
            if allowed(role, Act.CONTROL):
                self._runs_switch(runs_allowed)
            if interviewer:
                self.lock = self._button(
                    "lock_open", page.toggle_lock, "Lock or unlock the editor", "collab-lock", on_phones=True
                )
                self.lock.mark("lock")
                share = self._button("share", page.open_share, "Share the room's links", "collab-share-open")
                share.mark("share")
                self.end = self._button("stop_circle", page.confirm_end, "End the interview", "collab-end")
                self.end.mark("end")
            self.theme = self._button("light_mode" if dark else "dark_mode", page.toggle_theme, "Light or dark theme")
            self.theme.mark("theme")
            if allowed(role, Act.HISTORY):
                history = self._button("history", page.show_history, "Play back how the code was written")
                history.classes("collab-history-open").mark("history")
            self._button("download", page.download, "Download the code")
            self._menu(role)
            ConnectionBadge()
            toggle = ui.button(icon="group", on_click=page.toggle_presence).props(HEADER_BUTTON)
            toggle.classes("collab-presence-toggle").mark("presence-toggle").tooltip("Who is in the room")
            self._me_button()
        self.show_runs_allowed(runs_allowed)

    def _button(
        self, icon: str, action: Callable[[], object], tip: str, classes: str = "", *, on_phones: bool = False
    ) -> ui.button:
        """A header button; on a phone it is in the menu instead, unless ``on_phones``."""
        button = ui.button(icon=icon, on_click=action).props(HEADER_BUTTON).tooltip(tip)
        return button.classes(classes if on_phones else f"{classes} {WIDE_ONLY}")

    def _menu(self, role: Role | None) -> None:
        page = self.page
        with ui.button(icon="more_vert").props(HEADER_BUTTON).classes(f"{PHONE_ONLY} collab-header-menu"), ui.menu():
            if role is None:
                ui.menu_item("Copy the link", on_click=page.copy_link).classes("collab-menu-copy-link")
            if allowed(role, Act.QUESTION):
                self.question_item = ui.menu_item("The room's question", on_click=page.pick_question)
                self.question_item.classes("collab-menu-question")
            if allowed(role, Act.CONTROL):
                self.runs_item = ui.menu_item(on_click=lambda: page.allow_runs(not page.runs_allowed))
                with self.runs_item.classes("collab-menu-runs"):
                    self.runs_item_label = ui.item_section()
            if role is Role.INTERVIEWER:
                ui.menu_item("Share the links", on_click=page.open_share).classes("collab-menu-share")
                self.end_item = ui.menu_item("End the interview", on_click=page.confirm_end)
                self.end_item.classes("collab-menu-end")
            if allowed(role, Act.HISTORY):
                ui.menu_item("History", on_click=page.show_history).classes("collab-menu-history")
            ui.menu_item("Light or dark theme", on_click=page.toggle_theme)
            ui.menu_item("Download the code", on_click=page.download)

    def _runs_switch(self, runs_allowed: bool) -> None:
        self.runs_off = ui.badge("Runs off", color="amber-3", text_color="black").classes("collab-runs-off")
        self.runs_off.mark("runs-off").tooltip("Candidates cannot run code now; interviewers still can")
        self.runs = ui.switch("Running code allowed", value=runs_allowed)
        self.runs.on_value_change(lambda event: self.page.allow_runs(bool(event.value)))
        self.runs.props("dense dark color=green-4").classes(f"text-sm collab-runs-allowed {WIDE_ONLY}")
        self.runs.mark("runs-allowed").tooltip("Whether candidates may run the code")

    def _language(self, language: str) -> None:
        if self.page.role is Role.OBSERVER:  # may never change it: shown, not offered
            self.language_label = ui.label(label_for(language)).classes("text-sm opacity-80 collab-language-label")
            self.language_label.mark("language-label")
            return
        self.select = (
            ui.select(dict(LANGUAGES), value=language, on_change=lambda event: self.page.choose_language(event.value))
            .props("dense dark options-dense borderless")
            .classes("w-28 sm:w-40 collab-language")
            .mark("language")
        )
        if language not in LANGUAGES:
            self.select.set_options({**LANGUAGES, language: label_for(language)}, value=language)

    def _me_button(self) -> None:
        page = self.page
        me = ui.button(on_click=page.change_identity).props("flat dense no-caps color=white")
        with me.classes("collab-me").mark("me"):
            self.me_dot = ui.element("span").classes("inline-block w-3 h-3 rounded-full sm:mr-2")
            self.me_dot.style(f"background: {page.identity.color}")
            self.me_name = ui.label(page.identity.username).classes(f"truncate max-w-[10rem] {WIDE_ONLY}")

    def show_identity(self, username: str, color: str) -> None:
        self.me_name.set_text(username)
        self.me_dot.style(f"background: {color}")

    def show_theme(self, dark: bool) -> None:
        self.theme.props(f"icon={'light_mode' if dark else 'dark_mode'}")

    def show_language(self, language: str) -> None:
        """The room's language as last heard."""
        if self.language_label is not None:
            self.language_label.set_text(label_for(language))
        if self.select is None:
            return
        if language not in self.select.options:
            self.select.set_options({**LANGUAGES, language: label_for(language)})
        self.select.set_value(language)

    @property
    def language(self) -> str | None:
        return self.select.value if self.select is not None else None

    def show_runs_allowed(self, runs_allowed: bool) -> None:
        """Whether the room lets its members who are not interviewers run code, as last heard."""
        if self.runs is not None:
            self.runs.set_value(runs_allowed)  # the page ignores a change to what the room has
        if self.runs_off is not None:
            self.runs_off.set_visibility(not runs_allowed)
        if self.runs_item_label is not None:
            self.runs_item_label.set_text("Turn running code off" if runs_allowed else "Allow running code")

    def show_access(self, access: AccessState, *, denied: bool = False) -> None:
        """Offer only what the room would take now: a candidate's language while it may edit,
        the lock until the interview ends; nothing once the page lost its access (``denied``)."""
        if self.select is not None:
            may = allowed(access.role, Act.LANGUAGE, locked=access.locked, ended=access.ended)
            self.select.set_enabled(may and not denied)
        if self.lock is not None:
            self.lock.props(f"icon={'lock' if access.locked else 'lock_open'}")
            self.lock.set_enabled(not access.ended and not denied)
        for control in (self.end, self.end_item):
            if control is not None:
                control.set_enabled(not access.ended and not denied)
        for choice in (self.question, self.question_item, self.runs, self.runs_item):
            if choice is not None:
                choice.set_enabled(not denied)
