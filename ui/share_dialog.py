"""The interviewer's share dialog: the candidate's and the observer's links, to copy, revoke or
replace, and the interviewer's own link, to copy.

The shared links are read from the room when the dialog opens, after each action of this page,
and when the room tells the page that a link changed (another interviewer revoked or renewed
one); the room may no longer know a live link's secret (one made before the server restarted),
and then the dialog says so rather than show nothing. Links are shown only once the room has
stored them (`ui.saving`): a new link whose commit failed never existed, and is never shown. A
Copy button checks the link with the room first, so that a link revoked since it was drawn is
never copied. The interviewer's own link is the page's own credential, the one it joined with
(its cookie's, as `ui.access.page_role` checked it when the page was made), never anything the
page's scripts send; it cannot be revoked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nicegui import background_tasks, ui

from rooms.access import SHARED_ROLES, Role
from ui.saving import NOT_SAVED, SAVING, wait_stored

ABOUT = {
    Role.CANDIDATE: "Edits the code, unless you lock the editor or end the interview.",
    Role.OBSERVER: "Watches the code, the cursors and who is here; never edits.",
}
OWN_LINK = "Interviewer link: gives full control; share only with co-interviewers"
NO_LINK = "No live link"
NOT_SHOWN = (
    "This link was made before the server restarted and cannot be shown again: copy it from where "
    "you sent it, or make a new one"
)
ENDED = "The interview has ended: no new candidate link"
REVOKED = "Link revoked: it no longer opens the room, and whoever joined through it left."
RENEWED = "A new link replaces the old one; whoever joined through the old one left."
NOT_LOADED = "The links cannot be read while the room is not loaded: reconnect, then open this again."
CHANGED = "This link changed meanwhile and was not copied: here are the room's links as they are now."


@dataclass(frozen=True, slots=True)
class SharedLink:
    """A shared role's link as the room knows it when the dialog draws it."""

    secret: str | None  # None: no live link, or one whose secret the room cannot show any more
    live: bool  # the role has a live link (not revoked)
    renewable: bool = True  # the room makes a new one (not the candidate's once the interview ended)


def share_url(origin: str, room_id: str, secret: str) -> str:
    """The address to share for a link: opening it keeps the secret in a cookie and opens the room."""
    return f"{origin}/join/{room_id}/{secret}"


class ShareDialog:
    """``read`` gives each shared role's link as the room knows it now, stored or not (nothing:
    the room is not loaded); ``stored`` waits until the room has stored every change it made so
    far and says whether it did (`RoomRegistry.durable`); ``revoke`` sends the interviewer's
    revoke (``renew``: with a new link) and says whether the room took it (if not, it tells the
    user why); ``own_secret`` is the page's own interviewer link."""

    def __init__(
        self,
        origin: str,
        room_id: str,
        read: Callable[[], dict[Role, SharedLink]],
        stored: Callable[[], Awaitable[bool]],
        revoke: Callable[[Role, bool], bool],
        *,
        own_secret: str | None = None,
    ) -> None:
        self.origin = origin
        self.room_id = room_id
        self.read = read
        self.stored = stored
        self.revoke = revoke
        self.own_secret = own_secret
        self.shown: dict[Role, SharedLink] | None = None  # the links drawn (None: not read yet)
        with ui.dialog() as self.dialog, ui.card().classes("w-[40rem] max-w-full gap-4 collab-share"):
            with ui.row().classes("w-full items-center no-wrap"):
                ui.label("Share this room").classes("text-lg font-medium")
                ui.space()
                ui.button(icon="close", on_click=self.dialog.close).props("flat dense round")
            ui.label("Send each person the link of their role.").classes("text-sm")
            self.saving = ui.label(SAVING).classes("text-sm text-gray-500 italic collab-share-saving")
            self.saving.mark("share-saving").set_visibility(False)
            self.links()

    @property
    def is_open(self) -> bool:
        return bool(self.dialog.value)

    async def open(self) -> None:
        self.dialog.open()
        await self.update()

    async def update(self) -> bool:
        """Draw the links as the room has them now, once it has stored them: True then. False
        when it could not store them (its commit failed: it was reset), or took too long: the
        dialog keeps what it showed, and what the room could not store is never shown."""
        links = self.read()  # now: every change that made these is one the wait below covers
        if links and not await wait_stored(self.stored(), self._show_saving):
            return False
        self.shown = links
        self.links.refresh()
        return True

    def _show_saving(self, saving: bool) -> None:
        if not self.saving.is_deleted:
            self.saving.set_visibility(saving)

    @ui.refreshable_method
    def links(self) -> None:
        links = self.shown
        if links is None:
            return
        if not links:
            ui.label(NOT_LOADED).classes("text-sm text-gray-500 italic collab-links-not-loaded")
        for role, link in links.items():
            with ui.column().classes(f"w-full gap-1 collab-share-{role.value}"):
                ui.label(f"{role.value.capitalize()} link").classes("font-medium")
                ui.label(ABOUT[role]).classes("text-xs text-gray-500")
                with ui.row().classes("w-full items-center gap-1 no-wrap"):
                    self._link(role, link)
        if self.own_secret is not None:
            with ui.column().classes("w-full gap-1 collab-share-interviewer"):
                ui.label(OWN_LINK).classes("font-medium")
                with ui.row().classes("w-full items-center gap-1 no-wrap"):
                    self._link_field(Role.INTERVIEWER, self.own_secret)

    def _link(self, role: Role, link: SharedLink) -> None:
        if link.secret is not None:
            self._link_field(role, link.secret)
        else:
            text = NOT_SHOWN if link.live else NO_LINK if link.renewable else ENDED
            none = ui.label(text).classes(f"grow text-gray-500 italic collab-no-link-{role.value}")
            none.mark(f"no-link-{role.value}")
        if link.live:
            revoke = ui.button("Revoke", on_click=lambda: self.act(role, renew=False))
            revoke.props("flat dense color=negative no-caps").classes(f"collab-revoke-{role.value}")
            revoke.mark(f"revoke-{role.value}")
        if link.renewable:
            renew = ui.button("New link", on_click=lambda: self.act(role, renew=True))
            renew.props("flat dense no-caps").classes(f"collab-renew-{role.value}").mark(f"renew-{role.value}")

    def _link_field(self, role: Role, secret: str) -> None:
        url = share_url(self.origin, self.room_id, secret)
        field = ui.input(value=url).props("readonly outlined dense").classes("grow font-mono text-xs")
        field.classes(f"collab-link-{role.value}").mark(f"link-{role.value}")
        copy = ui.button(icon="content_copy", on_click=lambda: self.copy(role, secret))
        copy.props("flat dense round").classes(f"collab-copy-{role.value}").mark(f"copy-{role.value}")
        copy.tooltip("Copy the link")

    def copy(self, role: Role, secret: str) -> None:
        """Copy a link, unless the room no longer has it as the role's live link (revoked or
        renewed since the dialog drew it, stored or not yet): then the dialog is drawn again."""
        if role in SHARED_ROLES:
            now = self.read().get(role)
            if now is None or not now.live or now.secret != secret:
                ui.notify(CHANGED, type="warning")
                background_tasks.create(self.update(), name="collab-share-update")
                return
        ui.clipboard.write(share_url(self.origin, self.room_id, secret))
        ui.notify("Link copied.", type="positive")

    async def act(self, role: Role, *, renew: bool) -> None:
        accepted = self.revoke(role, renew)
        stored = await self.update()  # as the room has it now, taken or not
        with self.dialog:  # the button clicked was drawn again
            if accepted and stored:
                ui.notify(RENEWED if renew else REVOKED, type="info")
            elif accepted:
                ui.notify(NOT_SAVED, type="negative")
