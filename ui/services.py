"""What every page is given: the room registry (made by the app's lifespan, so asked for when
needed), the settings, and through the registry the server's catalog of questions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rooms.questions import Questions
from rooms.registry import RoomRegistry
from rooms.settings import Settings


@dataclass(frozen=True)
class Services:
    registry: Callable[[], RoomRegistry]
    settings: Settings

    def questions(self) -> Questions:
        """The questions a room may pick, as the server loaded them."""
        return self.registry().questions
