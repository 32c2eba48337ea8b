"""collab pad: the FastAPI application with NiceGUI mounted. ``python app.py`` serves it.

``app`` can be imported without starting a server (``TestClient(app)`` works); the room
registry starts and stops with the app's lifespan, not on import.
"""

from __future__ import annotations

import asyncio
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

from api import edge, health, rooms, ws
from api.http_timeouts import http_protocol
from api.origins import is_loopback, origin_allowed
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


def create_app(settings: Settings, store: Store) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = RoomRegistry(settings, store=store)
        await registry.start()  # opens the store, if `main` has not already
        app.state.registry = registry
        log.info("started", host=settings.host, port=settings.port)
        try:
            yield
        finally:
            await registry.stop()
            log.info("stopped")

    application = FastAPI(title="collab pad", lifespan=lifespan, docs_url=None, redoc_url=None)
    application.state.settings = settings
    edge.install(application, settings)  # around everything below, whichever server runs it
    # API routes first: NiceGUI is mounted at "/" and would otherwise shadow them.
    application.include_router(health.router)
    application.include_router(ws.router)
    application.include_router(rooms.router)
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
    return application


# Room ids are logged as tags keyed by the storage secret: the same tag after a restart.
set_room_log_key(storage_secret(settings))
store = make_store(settings)
app = create_app(settings, store)


# The cyclic garbage collector, tuned for a server that keeps thousands of long-lived objects
# (sessions, queues, documents): a full collection that walks them all stalled every room for
# tens of milliseconds at a time (p99 edit latency at 500 clients: about 120 ms, against about
# 35 ms with this; bench/load.py, medians of four runs each).
GC_THRESHOLDS = (10_000, 50, 100)


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
            # Recorded as uvicorn does, so that the signal is raised again once stopped.
            self._captured_signals.append(sig)
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


def main() -> None:
    # Everything built at start-up (modules, the app, NiceGUI's pages) is never garbage: keep it
    # out of every collection, and collect young objects less often.
    try:
        # Before serving anything: a damaged room database stops the start with one clear line.
        asyncio.run(store.open())
    except StoreError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    config = uvicorn.Config(
        ws.DirectWrites(app),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # The request head must arrive within REQUEST_HEADER_TIMEOUT_SECONDS (api/http_timeouts.py).
        http=http_protocol(settings.request_header_timeout_seconds, settings.request_body_timeout_seconds),
        # A client address from X-Forwarded-For only from the proxies listed: uvicorn's default
        # trusts 127.0.0.1, and any local process could then pick its address at will.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        # The sans-I/O websockets implementation applies back-pressure on send (wsproto buffers
        # without limit), which is what lets the registry spot and drop a slow client; it also
        # costs less CPU per frame than the legacy one (p99 35 ms against 70 ms at 500 clients).
        ws="websockets-sansio",
        ws_max_size=settings.frame_limit_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        # Protocol-level pings find dead sockets of every client, full-text clients included.
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        # Half of the stop's deadline for connections to close; the lifespan's flush of the
        # store has the other half (`RoomRegistry.stop`).
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_seconds / 2)),
    )
    Server(config).run()


if __name__ == "__main__":
    main()
