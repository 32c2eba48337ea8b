"""collab pad: the FastAPI application with NiceGUI mounted. ``python app.py`` serves it.

``app`` can be imported without starting a server (``TestClient(app)`` works); the room
registry starts and stops with the app's lifespan, not on import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import uvicorn
from fastapi import FastAPI
from nicegui import ui

from api import health, ws
from observability.logs import configure_logging
from rooms.registry import RoomRegistry
from rooms.settings import Settings, load_settings
from ui import home  # noqa: F401  (registers the pages)

settings = load_settings()
configure_logging(settings.log_format, settings.log_level)
log = structlog.get_logger("collab.app")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = RoomRegistry(settings)
        app.state.registry = registry
        await registry.start()
        log.info("started", host=settings.host, port=settings.port)
        try:
            yield
        finally:
            await registry.stop()
            log.info("stopped")

    application = FastAPI(title="collab pad", lifespan=lifespan, docs_url=None, redoc_url=None)
    application.state.settings = settings
    # API routes first: NiceGUI is mounted at "/" and would otherwise shadow them.
    application.include_router(health.router)
    application.include_router(ws.router)
    ui.run_with(
        application,
        title="collab pad",
        storage_secret=settings.storage_secret,
        show_welcome_message=False,
    )
    return application


app = create_app(settings)


def main() -> None:
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        # The sans-I/O websockets implementation applies back-pressure on send (wsproto buffers
        # without limit), which is what lets the registry spot and drop a slow client; it also
        # costs less CPU per frame than the legacy one (p99 35 ms against 70 ms at 500 clients).
        ws="websockets-sansio",
        ws_max_size=settings.frame_limit_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        # Protocol-level pings find dead sockets of every client, seed clients included.
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
