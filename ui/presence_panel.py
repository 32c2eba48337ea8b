"""The room page's side panel: who is in the room, who is typing, and a notice when someone
joins or leaves. In a private room each member shows their role, observers are listed apart,
and an interviewer's panel can remove a candidate or an observer.

The member list is the one the page's editor connection was given (`Roster`), so the panel and
the editor's cursors never disagree, and a page that lost its connection does not pretend to
know who is there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set

from nicegui import ui

from rooms.access import SHARED_ROLES, Role
from ui.reports import Roster, RosterEntry

NOTICE_MILLISECONDS = 2500
# Narrower than this (a phone), the panel is closed until asked for and then lies over the
# editor; wider, it sits beside it.
DRAWER_BREAKPOINT_PX = 700


def comings_and_goings(
    before: Mapping[str, str], after: Mapping[str, str], own: Set[str]
) -> tuple[list[str], list[str]]:
    """The names of who joined and who left between two member lists (user id -> name).

    This page's own members (``own``) are never news, and neither is a reconnect: a leave and
    a join under one name.
    """
    joined = [name for user_id, name in after.items() if user_id not in before and user_id not in own]
    left = [name for user_id, name in before.items() if user_id not in after and user_id not in own]
    for name in set(joined) & set(left):
        joined.remove(name)
        left.remove(name)
    return joined, left


class PresencePanel:
    """The right drawer of the room page. `show_roster` and `show_typing` update it, with what the
    editor's connection reports. ``on_remove`` (for interviewers) removes a member."""

    def __init__(self, on_remove: Callable[[RosterEntry], None] | None = None) -> None:
        self.on_remove = on_remove
        self.roster = Roster(own_id="", members=())
        self.typing: frozenset[str] = frozenset()
        # The last list of a live connection (user id -> name): what notices compare with, so
        # that a reconnect's new list announces only who came or went meanwhile.
        self._known: dict[str, str] = {}
        self._own_ids: set[str] = set()  # this page's members, past and present
        # None: open where the screen is wide enough (see `DRAWER_BREAKPOINT_PX`).
        self.drawer = ui.right_drawer(value=None, fixed=True)
        self.drawer.props(f"width=240 bordered breakpoint={DRAWER_BREAKPOINT_PX}")
        with self.drawer.classes("p-3 gap-2 collab-presence"):
            self.render()

    @ui.refreshable_method
    def render(self) -> None:
        members = self.roster.members
        if not members:
            ui.label("Waiting for the room…").classes("font-medium collab-member-count").mark("member-count")
            return
        taking_part = [member for member in members if member.role is not Role.OBSERVER]
        observers = [member for member in members if member.role is Role.OBSERVER]
        ui.label(f"In this room ({len(taking_part)})").classes("font-medium collab-member-count").mark("member-count")
        for member in taking_part:
            self._member(member)
        if observers:
            ui.label(f"Observers ({len(observers)})").classes("font-medium mt-2 collab-observer-count")
            for member in observers:
                self._member(member)

    def _member(self, member: RosterEntry) -> None:
        mine = member.user_id == self.roster.own_id
        with ui.row().classes("w-full items-center gap-2 no-wrap collab-member"):
            dot = ui.element("span").classes("inline-block w-3 h-3 rounded-full shrink-0")
            dot.style(f"background: {member.color}")
            ui.label(member.username).classes("truncate collab-member-name").mark("member-name")
            if mine:
                ui.label("(you)").classes("text-xs text-gray-500")
            elif member.user_id in self.typing:
                ui.label("typing…").classes("text-xs italic text-gray-500 collab-typing")
            ui.space()
            if member.role is not None:
                badge = ui.label(member.role.value).classes("text-xs px-1 rounded bg-slate-200 text-slate-700")
                badge.classes("collab-role-badge").mark("role-badge")
            remove = self.on_remove
            if remove is not None and not mine and member.role in SHARED_ROLES:
                button = ui.button(icon="person_remove", on_click=lambda member=member: remove(member))
                button.props("flat dense round size=sm").classes("collab-remove").mark("remove")
                button.tooltip(f"Remove from the room (revokes the {member.role.value} link)")

    def show_roster(self, roster: Roster) -> None:
        """The editor's connection has a new member list (empty while it is not connected)."""
        if roster == self.roster:
            return
        self.roster = roster
        if roster.members:
            if roster.own_id:
                self._own_ids.add(roster.own_id)
            now = {member.user_id: member.username for member in roster.members}
            if self._known:  # the first list is who was there already: not news
                joined, left = comings_and_goings(self._known, now, self._own_ids)
                for name in joined:
                    ui.notify(f"{name} joined", position="bottom-left", timeout=NOTICE_MILLISECONDS)
                for name in left:
                    ui.notify(f"{name} left", position="bottom-left", timeout=NOTICE_MILLISECONDS)
            self._known = now
        self.render.refresh()

    def show_typing(self, typing: frozenset[str]) -> None:
        """The user ids of the members whose updates the editor's connection received lately."""
        if typing == self.typing:
            return
        self.typing = typing
        self.render.refresh()
