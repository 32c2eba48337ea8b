"""``/room/{room_id}``: the shared editor of one room, with its header and presence panel.

The page first asks the room what the request's link makes of its user (`ui.access.page_role`):
nothing (a private room without a live link: a page that says so), or a role, which decides
what the page offers (see `ui.room_header`) and goes with the editor's hello. Open rooms have no
role and offer what they always did.

Under the editor, the run panel (`ui.run_panel`) runs the room's code in the browser and shows
every member's runs; it takes a share of the height the user can drag. Beside the editor, the
room's question (`ui.question_panel`) for everyone once it has one, and the notes for
interviewers: in tabs when both are there. On a phone-sized screen the side area moves under
the editor, as the notes always did.
"""

from __future__ import annotations

from collections.abc import Awaitable

from nicegui import app, background_tasks, ui
from nicegui.events import GenericEventArguments
from starlette.requests import Request

from rooms.access import SHARED_ROLES, Role
from rooms.errors import Forbidden, NoOpenRooms, RoomError, UnknownRoom
from rooms.limits import ROOM_ID
from rooms.presence import pick_color
from rooms.protocol import ClientMessage, End, Language, Lock, Notes, Remove, Revoke
from rooms.run_protocol import AllowRuns, SetQuestion
from ui.access import PRIVATE_ROOM, banner_text, may_edit, page_role
from ui.editor import CollabEditor, Identity
from ui.history import open_history
from ui.identity import IdentityDialog, stored_identity
from ui.languages import extension_for
from ui.notes_panel import NotesPanel
from ui.presence_panel import PresencePanel
from ui.question_panel import TEXT_STAYS, QuestionPanel, pick_question, sees_hidden_tests
from ui.reports import AccessState, LinkChange, RoomActivity, Roster, RosterEntry
from ui.room_dialogs import confirm_end, confirm_remove, offer_lost_text, offer_to_take_over
from ui.room_header import RoomHeader
from ui.run_panel import RunPanel
from ui.saving import NOT_SAVED, SAVING, wait_stored
from ui.services import Services
from ui.share_dialog import ShareDialog, SharedLink

PAGE_CSS = """
.nicegui-content { padding: 0 !important; }
.collab-workspace { height: calc(100vh - 64px); height: calc(100dvh - 64px); width: 100%;
  display: flex; flex-direction: column; }
.collab-panes { flex: 1; min-height: 0; display: flex; width: 100%; }
.collab-main { flex: 1; min-width: 0; min-height: 0; height: 100%; }
.collab-main .q-splitter__before, .collab-main .q-splitter__after { min-height: 0; }
.collab-main .q-splitter__after { overflow: auto; }
.collab-main .collab-runs { width: 100%; height: 100%; max-height: none !important; }
.collab-question-statement h1, .collab-question-statement h2, .collab-question-statement h3 {
  font-size: 1rem; line-height: 1.5rem; font-weight: 600; margin: .75rem 0 .25rem; }
.collab-question-statement pre { overflow-x: auto; }
.collab-editor { flex: 1; min-width: 0; height: 100%; }
.collab-editor .cm-editor { height: 100%; font-size: 14px; }
.collab-side { width: 22rem; flex-shrink: 0; overflow: auto; border-left: 1px solid rgba(128,128,128,.3); }
.collab-side .q-tab-panel { padding: 0; }
@media (max-width: 767.98px) {
  .collab-panes { flex-direction: column; }
  .collab-side { width: 100%; max-height: 35%; border-left: 0; border-top: 1px solid rgba(128,128,128,.3); }
}
@media (max-width: 599.98px) { .collab-status-label { display: none; } }
"""

# The editor's share of the height above the run panel, in percent, and the range a drag keeps it in.
EDITOR_SHARE = 68
EDITOR_SHARE_LIMITS = (25, 95)


async def room_page(services: Services, room_id: str, request: Request) -> None:
    """The page of ``/room/{room_id}``: the room, once the user has a name."""
    ui.dark_mode().bind_value(app.storage.user, "dark")
    if not ROOM_ID.fullmatch(room_id):
        _refusal("This is not a valid room link.", "Room ids are 1 to 64 letters, digits, '-' or '_'.")
        return
    try:
        role, token = await page_role(services.registry(), room_id, request)
    except UnknownRoom:
        _refusal("There is no room with this id.", "It may have been deleted after a long time unused.")
        return
    except NoOpenRooms:
        _refusal("This server holds interview rooms only.", "Create one from the start page.")
        return
    except Forbidden:
        _refusal(PRIVATE_ROOM, classes="collab-private-room")
        return
    except RoomError as error:  # too many bad links from this address, a server too busy...
        _refusal("This room cannot be opened right now.", f"{str(error).capitalize()}.")
        return
    ui.page_title(f"{room_id} · collab pad")
    ui.add_css(PAGE_CSS)
    client = ui.context.client
    origin = str(request.base_url).rstrip("/")

    def enter(who: Identity) -> None:
        with client.content:  # the header and drawer must be direct children of the page
            RoomPage(services, room_id, who, role=role, token=token, origin=origin)

    who = stored_identity()
    if who is not None:
        enter(who)
        return
    room = services.registry().rooms.get(room_id)
    free = pick_color(member.color for member in room.presence) if room is not None else None
    IdentityDialog(services.settings, enter, required=True, suggested_color=free).open()


def _refusal(title: str, detail: str = "", *, classes: str = "") -> None:
    with ui.column().classes("w-full max-w-xl mx-auto p-8 gap-4"):
        ui.label(title).classes(f"text-2xl {classes}")
        if detail:
            ui.label(detail)
        ui.link("Back to the start page", "/")


def is_dark() -> bool:
    return bool(app.storage.user.get("dark"))


class RoomPage:
    """One browser page in a room: the header's controls, the editor, the run panel, the
    presence panel, the room's question, and for interviewers the notes and the share dialog."""

    def __init__(
        self, services: Services, room_id: str, who: Identity, *, role: Role | None, token: str | None, origin: str
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.room_id = room_id
        self.identity = who
        self.role = role
        self.token = token  # the page's own credential: the link it joined with
        self.origin = origin
        self.denied = False  # the room refused this page for good
        self.lost_dialog: ui.dialog | None = None
        self.share: ShareDialog | None = None
        self.saving: ui.notification | None = None  # "Saving…", while a control waits to be stored
        interviewer = role is Role.INTERVIEWER
        # The room as it is now, read once so that the first render shows it; from then on, as
        # the editor's connection reports it.
        room = services.registry().rooms.get(room_id)
        self.language: str | None = room.language if room is not None else None
        locked, ended = (room.access.locked, room.access.ended) if room is not None else (False, False)
        self.access = AccessState(role, locked, ended)
        self.question_id: str | None = room.access.question if room is not None else None
        self.runs_allowed = room.access.runs_allowed if room is not None else True
        language = self.language or self.settings.default_language
        self.header = RoomHeader(self, language, dark=is_dark(), runs_allowed=self.runs_allowed)
        with ui.element("div").classes("collab-workspace"):
            self.banner = ui.label().classes("w-full px-4 py-1 text-sm bg-amber-100 text-amber-900")
            self.banner.classes("collab-access-banner").mark("access-banner")
            with ui.row().classes("w-full items-center gap-2 px-4 py-2 bg-red-100 text-red-900 no-wrap") as self.lost:
                ui.icon("block")
                self.lost_reason = ui.label().classes("grow collab-access-lost-reason")
                ui.link("Start page", "/").classes("text-red-900")
            self.lost.classes("collab-access-lost").mark("access-lost").set_visibility(False)
            with ui.element("div").classes("collab-panes"):
                split = ui.splitter(horizontal=True, value=EDITOR_SHARE, limits=EDITOR_SHARE_LIMITS)
                with split.classes("collab-main").mark("run-split"), split.before:
                    self.editor = CollabEditor(
                        services.registry,
                        self.settings,
                        room_id,
                        self._current_identity,
                        language=language,
                        theme="dark" if is_dark() else "light",
                        token=token,
                        read_only=not may_edit(role, locked=locked, ended=ended),
                        on_members=self._show_members,
                        on_activity=self._show_activity,
                        on_access=self._show_access,
                        on_notes=self._show_notes,
                        on_link=self._show_link,
                        on_question=self._show_question,
                        on_runs_allowed=self._show_runs_allowed,
                        on_denied=self._show_denied,
                    ).classes("w-full")
                with split.after:
                    self.run_panel = RunPanel(self.settings)
                self._side(room.notes if room is not None else "")
        self.editor.on("lost", self._on_lost)
        self.editor.on("notice", self._on_notice)
        self.editor.on("paused", lambda: offer_to_take_over(self.editor))
        self.presence = PresencePanel(on_remove=self.remove if interviewer else None)
        self._show_access(self.access)

    def _side(self, notes: str) -> None:
        """The side area: the question, and for interviewers the notes in a tab beside it."""
        questions = self.services.questions()
        hidden_tests = sees_hidden_tests(self.role)
        self.notes: NotesPanel | None = None
        self.side_tabs: ui.tabs | None = None
        with ui.element("div").classes("collab-side").mark("side") as self.side:
            if self.role is not Role.INTERVIEWER:
                self.question_panel = QuestionPanel(questions, hidden_tests=hidden_tests, role=self.role)
            else:
                with ui.tabs().props("dense align=left inline-label").classes("w-full") as self.side_tabs:
                    question_tab = ui.tab("question", "Question", icon="quiz").mark("question-tab")
                    notes_tab = ui.tab("notes", "Notes", icon="edit_note").mark("notes-tab")
                first = "question" if self.question_id is not None and self.question_id in questions else "notes"
                with ui.tab_panels(self.side_tabs, value=first, animated=False).classes("w-full"):
                    with ui.tab_panel(question_tab):
                        self.question_panel = QuestionPanel(
                            questions, hidden_tests=hidden_tests, role=self.role, pick=self.pick_question
                        )
                    with ui.tab_panel(notes_tab):
                        self.notes = NotesPanel(notes, self.save_notes, max_chars=self.settings.max_notes_chars)
        self._show_question(self.question_id)

    # What the header asks for

    def copy_link(self) -> None:
        ui.run_javascript("navigator.clipboard.writeText(window.location.href).catch(() => {})")
        ui.notify("Link copied: send it to whoever should join.", type="positive")

    def choose_language(self, value: str | None) -> None:
        """The user picked a language for the room."""
        if value is None or value == self.language:
            return
        # The room's `language` message brings it to every page, this one included.
        if not self.send(Language(type="language", language=value), "the language cannot be changed"):
            self._show_room_language()  # not connected, or refused (a rate limit): the room keeps its own

    def _show_room_language(self) -> None:
        """Show the room's language as last heard (if any) in the header and the editor's props."""
        if self.language is not None:
            self.header.show_language(self.language)
            self.editor.set_language(self.language)

    def pick_question(self) -> None:
        """Offer the catalog's questions; the dialog says so when the editor has text, which
        picking a question leaves as it is."""
        with self.editor.client.content:
            pick_question(
                self.services.questions(), self.question_id, has_text=self._has_text(), choose=self.choose_question
            )

    def choose_question(self, question_id: str | None) -> None:
        """The user picked the room's question (None: no question)."""
        if question_id == self.question_id:
            return
        has_text = self._has_text()
        # The room's `question` message brings it to every page, this one included.
        sent = self.send(SetQuestion(type="question", question_id=question_id), "the question cannot be changed")
        if sent and question_id is not None and has_text:
            ui.notify(TEXT_STAYS, type="warning")

    def _has_text(self) -> bool:
        """Whether the room's text is more than blanks, as the room holds it now."""
        room = self.services.registry().rooms.get(self.room_id)
        return room is not None and room.document.text.strip() != ""

    def allow_runs(self, allowed: bool) -> None:
        """The interviewer turned running code on or off for the others."""
        if allowed == self.runs_allowed:
            return  # the switch following the room
        # The room's `runs_allowed` message brings the change to every page, this one included.
        if not self.send(AllowRuns(type="allow_runs", allowed=allowed), "running code cannot be turned on or off"):
            self.header.show_runs_allowed(self.runs_allowed)

    def toggle_theme(self) -> None:
        dark = not is_dark()
        app.storage.user["dark"] = dark
        self.header.show_theme(dark)
        self.editor.set_theme("dark" if dark else "light")

    def show_history(self) -> None:
        open_history(
            self.services.registry(),
            self.room_id,
            self.editor,
            role=self.role,
            language=self.header.language or self.language or self.settings.default_language,
            dark=is_dark(),
        )

    def download(self) -> None:
        self.editor.download(f"{self.room_id}.{extension_for(self.header.language or self.language)}")

    def toggle_presence(self) -> None:
        self.presence.drawer.toggle()

    def change_identity(self) -> None:
        IdentityDialog(self.settings, self._identity_saved, required=False).open()

    def _identity_saved(self, new: Identity) -> None:
        self.identity = new
        self.header.show_identity(new.username, new.color)
        if self.denied:  # a hello would be refused again, and counted as a bad link
            ui.notify("Name saved: it is used the next time you join a room.", type="info")
            return
        self.editor.rejoin()  # a new hello: the room learns the new name and colour

    def _current_identity(self) -> Identity:
        return stored_identity() or self.identity  # a rename in another tab applies too

    # An interviewer's controls: messages of this page's connection, as the browser's own are

    def send(self, message: ClientMessage, refused: str) -> bool:
        """Hand the room a message of this page's member; True when the room took it. False,
        and a notice saying why, when the page is not connected or the room refused it
        (``refused`` says what could not be done: "the notes cannot be saved")."""
        session = self.editor.session
        # The room ignores a closed session's messages without a word: check first.
        if session is None or session.closed:
            ui.notify(f"Not connected: {refused} right now.", type="warning")
            return False
        try:
            self.services.registry().handle(session, message)
        except RoomError as error:
            ui.notify(f"{refused[:1].upper()}{refused[1:]}: {error}.", type="warning")
            return False
        return True

    def stored(self) -> Awaitable[bool]:
        """Wait until the room has stored every change it made so far: True then; False when
        its commit failed (it was reset), or it is not loaded (see `RoomRegistry.durable`)."""
        return self.services.registry().durable(self.room_id)

    async def control(self, message: ClientMessage, refused: str) -> bool:
        """`send` an interviewer's control, and wait until the room has stored it: True then.
        False when the room did not take it (`send` said why) or could not store it (a notice
        says so); "Saving…" meanwhile, when that takes a while."""
        if not self.send(message, refused):
            return False
        stored = await wait_stored(self.stored(), self._show_saving)
        if not stored:
            with self.editor.client.layout:  # the page's, whatever was clicked
                ui.notify(NOT_SAVED, type="negative")
        return stored

    def _show_saving(self, saving: bool) -> None:
        if self.saving is not None:
            self.saving.dismiss()
            self.saving = None
        if saving and not self.editor.client.is_deleted:
            with self.editor.client.layout:
                self.saving = ui.notification(SAVING, spinner=True, timeout=None)

    def toggle_lock(self) -> None:
        self.send(Lock(type="lock", locked=not self.access.locked), "the editor cannot be locked or unlocked")

    def confirm_end(self) -> None:
        confirm_end(lambda: self.control(End(type="end"), "the interview cannot be ended"))

    async def open_share(self) -> None:
        if self.share is None:
            # Only an interviewer's page offers its own link (the credential it joined with).
            own = self.token if self.role is Role.INTERVIEWER else None
            with self.editor.client.content:
                self.share = ShareDialog(
                    self.origin, self.room_id, self._links, self.stored, self._revoke, own_secret=own
                )
        await self.share.open()

    def _links(self) -> dict[Role, SharedLink]:
        """The shared links as the room knows them now; nothing while it is not loaded."""
        room = self.services.registry().rooms.get(self.room_id)
        if room is None:
            return {}
        access = room.access
        return {
            role: SharedLink(
                room.secret_of(role),
                live=access.current(role) is not None,
                renewable=not (role is Role.CANDIDATE and access.ended),  # as the room decides
            )
            for role in SHARED_ROLES
        }

    def _revoke(self, role: Role, renew: bool) -> bool:
        revoke = Revoke(type="revoke", role="candidate" if role is Role.CANDIDATE else "observer", renew=renew)
        return self.send(revoke, "links cannot be changed")

    def remove(self, member: RosterEntry) -> None:
        """Remove a member, once confirmed: the room revokes the link of their role, so everyone
        who came through it leaves too."""
        link_name = f"the {member.role.value} link" if member.role is not None else "their link"
        done = (
            f"Removed {member.username}. {link_name.capitalize()} was revoked: make a new one in the share "
            "dialog to invite someone else."
        )

        async def confirmed() -> None:
            remove = Remove(type="remove", user_id=member.user_id)
            if await self.control(remove, f"{member.username} cannot be removed"):
                with self.editor.client.layout:  # the page's: the dialog is gone
                    ui.notify(done, type="info")

        with self.editor.client.content:  # not in the presence panel, which redraws with the roster
            confirm_remove(member.username, link_name, confirmed)

    async def save_notes(self, text: str) -> bool:
        """Hand the room the notes; True once it has stored them (see `NotesPanel`)."""
        if not self.send(Notes(type="notes", text=text), "the notes cannot be saved"):
            return False
        return await self.stored()

    # What the editor's connection reports

    def _show_members(self, roster: Roster) -> None:
        self.presence.show_roster(roster)

    def _show_activity(self, activity: RoomActivity) -> None:
        self.presence.show_typing(activity.typing)
        if activity.language is not None and activity.language != self.language:  # chosen here or elsewhere
            self.language = activity.language
            self._show_room_language()

    def _show_access(self, access: AccessState) -> None:
        # The role is the page's own (its link's); the room's lock and end are as last heard.
        self.access = AccessState(self.role, access.locked, access.ended)
        text = banner_text(self.role, locked=access.locked, ended=access.ended)
        self.banner.set_text(text or "")
        self.banner.set_visibility(text is not None)
        self.header.show_access(self.access, denied=self.denied)

    def _show_notes(self, text: str) -> None:
        if self.notes is not None:
            self.notes.show(text)

    def _show_question(self, question_id: str | None) -> None:
        """The room's question changed (or the page learnt it): drawn from the server's catalog."""
        changed = question_id != self.question_id
        self.question_id = question_id
        self.question_panel.show(question_id)
        shown = self.question_panel.question is not None
        if self.side_tabs is None:
            self.side.set_visibility(shown)  # nothing else is beside the editor
        elif changed:
            self.side_tabs.set_value("question" if shown else "notes")

    def _show_runs_allowed(self, allowed: bool) -> None:
        self.runs_allowed = allowed
        self.header.show_runs_allowed(allowed)

    def _show_link(self, change: LinkChange) -> None:
        """Another interviewer (or this page) revoked or renewed a link, and the room stored it:
        an open share dialog is drawn again, from the room."""
        if self.share is not None and self.share.is_open:
            background_tasks.create(self.share.update(), name="collab-share-update")

    def _show_denied(self, reason: str) -> None:
        """The room refused this page for good (its link revoked, removed, the interview ended)."""
        self.denied = True
        self.lost_reason.set_text(f"You no longer have access to this room: {reason}.")
        self.lost.set_visibility(True)
        self.header.show_access(self.access, denied=True)  # the room would refuse every control now

    def _on_lost(self, event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        text, reason = args.get("text"), args.get("reason")
        if not isinstance(text, str):
            return
        if self.lost_dialog is not None and not self.lost_dialog.is_deleted:
            self.lost_dialog.delete()  # one at a time: the newest text is what the page holds
        # What the room would take now, as the page's connection last reported it: after a
        # `read_only` refusal (a lock while a push was on its way), replacing would be refused too.
        access = self.editor.reported_access or self.access
        editable = may_edit(self.role, locked=access.locked, ended=access.ended) and not self.denied
        reason = reason if isinstance(reason, str) else ""
        self.lost_dialog = offer_lost_text(self.editor, text, reason, may_edit=editable)

    def _on_notice(self, event: GenericEventArguments) -> None:
        args = event.args if isinstance(event.args, dict) else {}
        level = args.get("level")
        ui.notify(
            str(args.get("message", ""))[:300],
            type="negative" if level == "negative" else "warning" if level == "warning" else "info",
        )
