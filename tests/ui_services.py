"""Hands the registry of a `user`-simulation test to ``tests/ui_main.py``."""

from __future__ import annotations

from ui.pages import Services

_services: Services | None = None


def provide(services: Services | None) -> None:
    global _services
    _services = services


def current() -> Services:
    assert _services is not None, "the test sets the services before the simulation starts"
    return _services
