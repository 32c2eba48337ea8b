"""``/healthz`` (the process answers), ``/readyz`` (it can take rooms) and ``/metrics``."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from observability import metrics
from rooms.registry import RoomRegistry

log = structlog.get_logger("collab.health")

router = APIRouter()

# Longest `/readyz` waits for the store's check: a probe that hangs tells an orchestrator
# nothing, a 503 tells it to send traffic elsewhere. Probes usually give up after 1 s.
READY_CHECK_TIMEOUT_SECONDS = 0.8


def running_registry(app: FastAPI) -> RoomRegistry | None:
    """The room registry while it accepts connections; None while starting or stopping."""
    registry: RoomRegistry | None = getattr(app.state, "registry", None)
    if registry is None or not registry.accepting:
        return None
    return registry


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    """Liveness: the event loop runs. A container that fails this should be restarted."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: rooms can be joined. Fails while starting or shutting down."""
    registry = running_registry(request.app)
    if registry is None:
        return JSONResponse({"status": "unavailable", "reason": "not accepting connections"}, status_code=503)
    # The store's check has a thread of its own: it never waits behind API reads or commits.
    try:
        await asyncio.wait_for(registry.store.check(), READY_CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return JSONResponse({"status": "unavailable", "reason": "store: not answering"}, status_code=503)
    except Exception as exc:
        # The detail (a database's host, user, its own words) is for the logs, not for whoever asks.
        log.warning("store_check_failed", error=str(exc))
        return JSONResponse({"status": "unavailable", "reason": "store: cannot be read"}, status_code=503)
    if not registry.committer.store_ok:
        return JSONResponse({"status": "unavailable", "reason": "store: the last commit failed"}, status_code=503)
    return JSONResponse({"status": "ready", "rooms": len(registry.rooms), "store": registry.store.name})


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    # Readiness is read when scraped, so `collab_ready` is exactly what /readyz would answer now.
    metrics.READY.set(running_registry(request.app) is not None)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
