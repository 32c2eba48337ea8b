"""``/healthz`` (the process answers), ``/readyz`` (it can take rooms) and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from rooms.registry import RoomRegistry

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    """Liveness: the event loop runs. A container that fails this should be restarted."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: rooms can be joined. Fails while starting or shutting down."""
    registry: RoomRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None or not registry.accepting:
        return JSONResponse({"status": "unavailable", "reason": "not accepting connections"}, status_code=503)
    return JSONResponse({"status": "ready", "rooms": len(registry.rooms)})


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
