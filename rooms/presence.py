"""Who is in a room: members, their colours, and their selections kept at the current version.

A selection travels with the version it refers to. The room maps it to the current version when
it arrives, and maps every stored selection through each later update, so a member who joins
late still sees everyone's cursor in the right place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NewType

from rooms.changes import ChangeSet

UserId = NewType("UserId", str)

# Twelve colours that stay distinct on light and dark backgrounds and from each other.
PALETTE: tuple[str, ...] = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#9a6324",
    "#469990",
    "#808000",
    "#000075",
    "#bfef45",
)


@dataclass(frozen=True, slots=True)
class Selection:
    """An anchor and a head in UTF-16 units; equal for a plain cursor."""

    anchor: int
    head: int

    def mapped(self, changes: ChangeSet) -> Selection:
        # Both ends stick to the text before them (assoc -1), as CodeMirror maps a cursor
        # through a remote insertion at the cursor: the remote text goes after it.
        return Selection(changes.map_pos(self.anchor, -1), changes.map_pos(self.head, -1))


@dataclass(slots=True)
class Member:
    user_id: UserId
    username: str
    color: str
    selection: Selection | None = None
    role: str | None = None  # in a private room: interviewer, candidate or observer

    def describe(self) -> dict[str, str]:
        described = {"user_id": self.user_id, "username": self.username, "color": self.color}
        if self.role is not None:
            described["role"] = self.role
        return described


def pick_color(taken: Iterable[str]) -> str:
    """The first palette colour nobody in the room has; when all are taken, the least used."""
    counts = dict.fromkeys(PALETTE, 0)
    for color in taken:
        if color in counts:
            counts[color] += 1
    return min(PALETTE, key=lambda color: counts[color])


@dataclass(slots=True)
class Presence:
    """The members of one room, in the order they joined."""

    members: dict[UserId, Member] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.members

    def add(self, user_id: UserId, username: str, color: str | None = None, role: str | None = None) -> Member:
        member = Member(user_id, username, color or pick_color(m.color for m in self), role=role)
        self.members[user_id] = member
        return member

    def remove(self, user_id: UserId) -> Member | None:
        return self.members.pop(user_id, None)

    def get(self, user_id: UserId) -> Member | None:
        return self.members.get(user_id)

    def set_selection(self, user_id: UserId, selection: Selection) -> None:
        member = self.members.get(user_id)
        if member is not None:
            member.selection = selection

    def map_selections(self, changes: ChangeSet) -> None:
        """Keep every stored selection at the document's new version."""
        for member in self.members.values():
            if member.selection is not None:
                member.selection = member.selection.mapped(changes)

    def describe(self) -> list[dict[str, str]]:
        return [member.describe() for member in self.members.values()]
