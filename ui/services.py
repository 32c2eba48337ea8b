"""What every page is given: the room registry (made by the app's lifespan, so asked for when
needed) and the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rooms.registry import RoomRegistry
from rooms.settings import Settings


@dataclass(frozen=True)
class Services:
    registry: Callable[[], RoomRegistry]
    settings: Settings
