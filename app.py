"""collab pad: the FastAPI application with NiceGUI mounted. ``python app.py`` serves it.

``app`` can be imported without starting a server (``TestClient(app)`` works); the room
registry starts and stops with the app's lifespan, not on import.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from nicegui import app as nicegui_app
from nicegui import core, ui
from nicegui.storage import Storage
from starlette.types import ASGIApp, Receive, Scope, Send

from api import edge, health, links, rooms, runner_files, ws
from api.origins import is_loopback, origin_allowed
from api.uvicorn_fast_path import DirectWrites, fast_path, server_options
from observability.logs import configure_logging, set_room_log_key
from rooms.registry import RoomRegistry
from rooms.settings import Settings, load_settings
from rooms.store import Store, StoreError, make_store
from ui import pages

settings = load_settings()
configure_logging(settings.log_format, settings.log_level)
log = structlog.get_logger("collab.app")


def storage_secret(settings: Settings) -> str:
    """``STORAGE_SECRET``, or a random one made once and kept in ``DATA_DIR`` (mode 0600).

    Kept, so that the signed session cookies (and with them each browser's name and colour)
    outlive a restart.
    """
    if settings.storage_secret:
        return settings.storage_secret
    path = settings.data_dir / "storage-secret"
    try:
        return path.read_text(encoding="ascii").strip() or _new_secret(path)
    except FileNotFoundError:
        return _new_secret(path)


def private_directory(path: Path) -> Path:
    """``path``, created when missing with mode 0700: room texts and secrets are kept below it.

    An existing directory keeps its mode (a mounted volume's owner decides it).
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _new_secret(path: Path) -> str:
    private_directory(path.parent)
    secret = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secret + "\n")
    return secret


def restrict_socketio_origins(settings: Settings) -> None:
    """NiceGUI's socket.io endpoint accepts every origin; apply the same rule as ``/ws``."""

    def allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        return origin_allowed(
            origin, environ.get("HTTP_HOST"), settings.allowed_origins, loopback_only=is_loopback(settings.host)
        )

    core.sio.eio.cors_allowed_origins = allowed


# The cyclic garbage collector, tuned for a server that keeps thousands of long-lived objects
# (sessions, queues, documents): a full collection that walks them all stalled every room for
# tens of milliseconds at a time (p99 edit latency at 500 clients: about 120 ms, against about
# 35 ms with this; bench/load.py, medians of four runs each).
GC_THRESHOLDS = (10_000, 50, 100)


@functools.cache
def tune_collector() -> None:
    """Once a process: everything built at start-up (modules, the app, NiceGUI's pages, the
    registry) is never garbage, so keep it out of every collection, and collect young objects
    less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class CollabPad(FastAPI):
    """FastAPI with a layer in ``front`` of all of its own: `DirectWrites` must see the server's
    ``send`` and ``receive`` as they are, and FastAPI wraps the lifespan's ``receive``."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.behind if self.front is None else self.front)(scope, receive, send)

    async def behind(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, store: Store) -> CollabPad:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = RoomRegistry(settings, store=store)
        await registry.start()  # opens the store, if `main` has not already
        app.state.registry = registry
        tune_collector()  # here, not in `main`: `uvicorn app:app` gets it too
        log.info("started", host=settings.host, port=settings.port)
        try:
            yield
        finally:
            await registry.stop()
            log.info("stopped")

    application = CollabPad(title="collab pad", lifespan=lifespan, docs_url=None, redoc_url=None)
    application.state.settings = settings
    edge.install(application, settings)  # around everything below, whichever server runs it
    # API routes first: NiceGUI is mounted at "/" and would otherwise shadow them.
    application.include_router(health.router)
    application.include_router(ws.router)
    application.include_router(links.router)
    application.include_router(links.create_router)  # before `rooms.router`, which answers the rest
    application.include_router(rooms.router)
    application.include_router(runner_files.router)  # Pyodide and the workers that run code
    pages.register(pages.Services(registry=lambda: application.state.registry, settings=settings))
    # NiceGUI's per-browser storage (names, colours, theme) lives in DATA_DIR too.
    Storage.path = private_directory(private_directory(settings.data_dir) / "nicegui").resolve()
    nicegui_app.storage = Storage()
    restrict_socketio_origins(settings)
    ui.run_with(
        application,
        title="collab pad",
        storage_secret=storage_secret(settings),
        show_welcome_message=False,
    )
    application.front = DirectWrites(
        application.behind, decision=fast_path(settings.fast_path), expected=server_options(settings)
    )
    return application


# Room ids are logged as tags keyed by the storage secret: the same tag after a restart.
set_room_log_key(storage_secret(settings))
store = make_store(settings)
app = create_app(settings, store)


class Server(uvicorn.Server):
    """uvicorn's server with a graceful stop in two steps.

    On SIGTERM or SIGINT the registry turns unready at once (``/readyz`` answers 503, new
    connections are refused) while connected clients are served for ``SHUTDOWN_DRAIN_SECONDS``;
    then uvicorn stops listening and closes every WebSocket with 1012 (service restart), and the
    app's lifespan commits every applied update and closes the store. A second signal skips
    the drain.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        registry: RoomRegistry | None = getattr(app.state, "registry", None)
        if registry is not None:
            registry.accepting = False  # only a flag: this runs inside a signal handler
        if self.drain_until is None and settings.shutdown_drain_seconds > 0:
            self.drain_until = time.monotonic() + settings.shutdown_drain_seconds
            # uvicorn's handler records the signal, to raise it again once stopped, and stops:
            # keep the record, postpone the stop to the end of the drain (`on_tick`).
            super().handle_exit(sig, frame)
            self.should_exit = False
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None:
            registry: RoomRegistry | None = getattr(app.state, "registry", None)
            if registry is not None:
                registry.begin_shutdown()  # logs it, once, from the event loop
            if time.monotonic() >= self.drain_until:
                self.should_exit = True
        return await super().on_tick(counter)


async def _open_to_check(store: Store) -> None:
    await store.open()
    if store.bound_to_loop:
        await store.close()  # opened again by the app's lifespan, in the loop that serves


def main() -> None:
    """Serve with the uvicorn options that cannot travel with the app (`server_options`) and the
    graceful stop of `Server`: the command to deploy with. ``uvicorn app:app`` serves too, and
    logs a warning at start for each option it lacks."""
    try:
        # Before serving anything: a damaged room database stops the start with one clear line.
        asyncio.run(_open_to_check(store))
    except StoreError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        **server_options(settings),
    )
    Server(config).run()


if __name__ == "__main__":
    main()
