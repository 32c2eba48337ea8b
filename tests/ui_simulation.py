"""The pieces of NiceGUI `user`-simulation tests: a started registry, simulated users of
``tests/ui_main.py`` served by it, and a raw client's transport that records what it is sent.

``tests/conftest.py`` loads this module as a plugin, so every test module can ask for the fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from nicegui import core
from nicegui.testing import User
from nicegui.testing.user_simulation import user_simulation

from rooms.registry import RoomRegistry
from rooms.settings import Settings
from tests import ui_services
from ui.pages import Services

MAIN = Path(__file__).with_name("ui_main.py")


class Recorder:
    """A raw client's transport: keeps what the room sends it."""

    name = "test"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


@pytest.fixture
async def registry() -> AsyncIterator[RoomRegistry]:
    registry = RoomRegistry(Settings(room_grace_seconds=60))
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
async def users(registry: RoomRegistry) -> AsyncIterator[Callable[[], User]]:
    ui_services.provide(Services(registry=lambda: registry, settings=registry.settings))
    try:
        async with user_simulation(main_file=MAIN) as first:
            made = [first]

            def next_user() -> User:
                if made:
                    return made.pop()
                return User(httpx.AsyncClient(transport=httpx.ASGITransport(core.app), base_url="http://test"))

            yield next_user
    finally:
        ui_services.provide(None)
