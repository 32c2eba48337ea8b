"""The interviewer's share dialog: the candidate's and the observer's links, to copy, revoke or
replace.

The links are read from the room when the dialog opens and after each action of this page (a
link's secret is derived by the room, never kept by the page); the interviewer's own link is
never shown.
"""

from __future__ import annotations

from collections.abc import Callable

from nicegui import ui

from rooms.access import SHARED_ROLES, Role

ABOUT = {
    Role.CANDIDATE: "Edits the code, unless you lock the editor or end the interview.",
    Role.OBSERVER: "Watches the code, the cursors and who is here; never edits.",
}


def link_url(origin: str, room_id: str, secret: str) -> str:
    """The address of a link: opening it keeps the secret in a cookie and opens the room."""
    return f"{origin}/join/{room_id}/{secret}"


class ShareDialog:
    """``secret_of`` reads a role's live link from the room (None: revoked); ``revoke`` sends
    the interviewer's revoke (``renew``: with a new link) and says whether it was sent."""

    def __init__(
        self,
        origin: str,
        room_id: str,
        secret_of: Callable[[Role], str | None],
        revoke: Callable[[Role, bool], bool],
    ) -> None:
        self.origin = origin
        self.room_id = room_id
        self.secret_of = secret_of
        self.revoke = revoke
        with ui.dialog() as self.dialog, ui.card().classes("w-[40rem] max-w-full gap-4 collab-share"):
            with ui.row().classes("w-full items-center no-wrap"):
                ui.label("Share this room").classes("text-lg font-medium")
                ui.space()
                ui.button(icon="close", on_click=self.dialog.close).props("flat dense round")
            ui.label("Send each person the link of their role. Your own link stays yours.").classes("text-sm")
            self.links()

    def open(self) -> None:
        self.links.refresh()
        self.dialog.open()

    @ui.refreshable_method
    def links(self) -> None:
        for role in SHARED_ROLES:
            secret = self.secret_of(role)
            with ui.column().classes(f"w-full gap-1 collab-share-{role.value}"):
                ui.label(f"{role.value.capitalize()} link").classes("font-medium")
                ui.label(ABOUT[role]).classes("text-xs text-gray-500")
                with ui.row().classes("w-full items-center gap-1 no-wrap"):
                    if secret is None:
                        none = ui.label("No live link").classes(
                            f"grow text-gray-500 italic collab-no-link-{role.value}"
                        )
                        none.mark(f"no-link-{role.value}")
                    else:
                        url = link_url(self.origin, self.room_id, secret)
                        link = ui.input(value=url).props("readonly outlined dense").classes("grow font-mono text-xs")
                        link.classes(f"collab-link-{role.value}").mark(f"link-{role.value}")
                        copy = ui.button(icon="content_copy", on_click=lambda url=url: self.copy(url))
                        copy.props("flat dense round").classes(f"collab-copy-{role.value}").mark(f"copy-{role.value}")
                        copy.tooltip("Copy the link")
                        revoke = ui.button("Revoke", on_click=lambda role=role: self.act(role, renew=False))
                        revoke.props("flat dense color=negative no-caps").classes(f"collab-revoke-{role.value}")
                        revoke.mark(f"revoke-{role.value}")
                    renew = ui.button("New link", on_click=lambda role=role: self.act(role, renew=True))
                    renew.props("flat dense no-caps").classes(f"collab-renew-{role.value}").mark(f"renew-{role.value}")

    def copy(self, url: str) -> None:
        ui.clipboard.write(url)
        ui.notify("Link copied.", type="positive")

    def act(self, role: Role, *, renew: bool) -> None:
        if self.revoke(role, renew):
            self.links.refresh()
            done = "A new link replaces the old one" if renew else "The link no longer opens the room"
            ui.notify(f"{done}; whoever joined through the old one left.", type="info")
