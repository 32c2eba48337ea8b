"""``/api/rooms/...``: a room's committed text, the text at any kept version, and its history.

Only what is durable is shown. The store holds every committed update (the registry shows an
update to no one before its commit), so text, versions and history are read from the store,
never from the document in memory, which may be ahead by updates still being committed. What
only memory knows is taken from the loaded room: its language (a change is committed with the
next batch) and its member count. A room that is loaded but has committed nothing yet exists, at
version 0 with an empty text.

An open room is read with its id and nothing else: the id is the room's secret (a 96-bit token
in its link), and whoever has it can read the room through its page anyway. A private room
answers only requests with one of its links' secrets (``Authorization: Bearer`` or the room's
cookie: `api.credentials`): its text for every role, its versions and history for interviewers
only (a candidate's deleted text is in them). That is checked against the loaded room, or the
access state in the store; nothing here makes or loads a room. Browsers on other sites are
refused by the same ``Origin`` rule as ``/ws``.

Every error is ``{"error": code, "message": ...}`` with the HTTP status (see docs/api.md), and
every response carries ``Cache-Control: no-store``: room texts must not linger in caches.

What one client may cost is bounded: requests per client address by a token bucket
(``API_RATE_LIMIT_*``, 429 beyond), requests in progress at once (``API_MAX_PENDING_READS``, 503
beyond), and the body of a history page (``API_MAX_RESPONSE_BYTES``). A room's text is bounded
by ``MAX_DOCUMENT_CHARS`` and always sent whole.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from api.credentials import client_address, credential
from api.health import running_registry
from api.origins import is_loopback, origin_allowed
from rooms.access import Act, allowed
from rooms.addresses import AddressTable
from rooms.errors import Forbidden, RateLimited, RoomError, UnknownRoom
from rooms.limits import ROOM_ID
from rooms.registry import RoomRegistry
from rooms.settings import Settings
from rooms.store import HistoryUnavailable, Record

log = structlog.get_logger("collab.api")

# `limit` of a history page: its default, and the most one request may ask for.
DEFAULT_HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000

# Reading a room's text reads its head and then the text at that head: a commit that prunes
# the head's text in between (only with a tiny HISTORY_KEEP_VERSIONS) is met by reading again.
TEXT_READ_ATTEMPTS = 3

# Records read from the store at a time while a history page fills up to its byte budget, so
# a page of large updates never holds many more of them in memory than it sends.
HISTORY_READ_CHUNK = 50

# Where a request's client address is not known: such requests share one allowance.
UNKNOWN_ADDRESS = "unknown"

# Seconds a client refused for too many reads in progress is asked to wait.
BUSY_RETRY_AFTER_SECONDS = 1

_INTEGER = re.compile(r"-?[0-9]+")
ECHO_CHARS = 40  # how much of a bad parameter an error message repeats

T = TypeVar("T")


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status)


class Refused(ApiError):
    """A refusal that says when to try again (``Retry-After``, whole seconds)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        response = super().response()
        response.headers["Retry-After"] = str(self.retry_after)
        return response


def invalid_parameter(message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message)


def out_of_range(message: str) -> ApiError:
    return ApiError(400, "out_of_range", message)


def not_found(room_id: str) -> ApiError:
    return ApiError(404, "not_found", f"room {room_id!r} does not exist")


def storage_unavailable() -> ApiError:
    return ApiError(503, "storage_unavailable", "storage unavailable; try again in a moment")


def server_unavailable() -> ApiError:
    return ApiError(503, "server_unavailable", "the server is starting or stopping; try again in a moment")


class ApiLimits:
    """The rooms API's limits for one application: a token bucket per client address and a
    count of requests in progress.

    The buckets are kept in an `AddressTable`, as the rooms' own are: bounded, idle addresses
    forgotten first (a forgotten address starts again with a full bucket).
    """

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.api_rate_limit_per_second
        self.burst = settings.api_rate_limit_burst
        self.max_pending = settings.api_max_pending_reads
        self.addresses = AddressTable(self.rate, self.burst)
        self.pending = 0

    def take(self, address: str, now: float) -> None:
        """Spend one request of ``address``'s allowance, or raise a 429 `Refused`."""
        entry = self.addresses.get(address or UNKNOWN_ADDRESS, now)
        assert entry is not None  # only "" has none
        try:
            entry.bucket.take(now)
        except RateLimited as exc:
            raise Refused(
                429,
                "rate_limited",
                f"too many requests from your address; at most {self.rate:g} a second "
                f"(bursts of {self.burst}), retry in {exc.retry_after:.2f} s",
                retry_after=max(1, math.ceil(exc.retry_after)),
            ) from None

    def begin(self) -> None:
        """Count one more request in progress, or raise a 503 `Refused` when too many are."""
        if self.pending >= self.max_pending:
            raise Refused(
                503,
                "server_busy",
                f"too many reads are in progress ({self.max_pending}); try again in a moment",
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        self.pending += 1

    def end(self) -> None:
        self.pending -= 1


def api_limits(request: Request) -> ApiLimits:
    """The application's `ApiLimits`, made from its settings on first use."""
    state = request.app.state
    limits: ApiLimits | None = getattr(state, "api_limits", None)
    if limits is None:
        limits = state.api_limits = ApiLimits(state.settings)
    return limits


class JsonErrorRoute(APIRoute):
    """This router's routes: `ApiError` answered in its JSON shape, and no response cached.

    Scoped to these routes, so the rest of the application keeps FastAPI's default answers.
    The endpoints take their parameters as strings and parse them themselves, so FastAPI's
    validation (a 422 in another shape) never answers here. Every request, whatever its
    answer, is charged to its client address's rate limit first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            limits = api_limits(request)
            try:
                limits.take(client_address(request), time.monotonic())
                limits.begin()
            except ApiError as error:
                refused = error.response()
                refused.headers["Cache-Control"] = "no-store"
                return refused
            try:
                response = await handler(request)
            except ApiError as error:
                response = error.response()
            except HTTPException:
                raise  # Starlette's own answers (none are raised here today)
            except Exception:
                log.exception("api_request_failed", path=request.url.path)
                response = ApiError(500, "internal_error", "internal error; the server has logged it").response()
            finally:
                limits.end()
            response.headers["Cache-Control"] = "no-store"
            return response

        return handle


router = APIRouter(prefix="/api/rooms", route_class=JsonErrorRoute)


def check_origin(request: Request) -> None:
    """`ApiError` 403 for a request a page of another site made (the rule of ``/ws``)."""
    settings: Settings = request.app.state.settings
    origin = request.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, request.headers.get("host"), settings.allowed_origins, loopback_only=is_loopback(settings.host)
    ):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"pages from {origin[:100]!r} may not use the rooms API; add the origin to ALLOWED_ORIGINS to allow it",
        )


def _registry(request: Request, room_id: str) -> RoomRegistry:
    """The running registry, once the request's origin and room id have passed."""
    check_origin(request)
    if not ROOM_ID.fullmatch(room_id):
        raise ApiError(400, "invalid_room_id", "room id must be 1 to 64 letters, digits, '-' or '_'")
    registry = running_registry(request.app)
    if registry is None:
        raise server_unavailable()
    return registry


def _integer(raw: str | None, name: str, default: int) -> int:
    """A parameter that must be a whole number of 0 or more, parsed strictly (no ``+1``, ``1_0``)."""
    if raw is None:
        return default
    try:
        if not _INTEGER.fullmatch(raw):
            raise ValueError(raw)
        value = int(raw)
    except ValueError:  # not digits, or more digits than int() converts
        raise invalid_parameter(f"{name} must be a whole number, got {raw[:ECHO_CHARS]!r}") from None
    if value < 0:
        raise invalid_parameter(f"{name} must be 0 or more, got {value}")
    return value


async def _authorize(request: Request, registry: RoomRegistry, room_id: str, act: Act | None) -> None:
    """Let the request on unless the room is private and its credential does not allow ``act``
    (None: reading the text, which every role may)."""
    token = credential(request, room_id)
    try:
        role = await registry.role_for(room_id, token, client_address(request))
    except UnknownRoom:
        raise not_found(room_id) from None
    except RateLimited as limited:
        raise Refused(429, limited.code, str(limited), max(1, math.ceil(limited.retry_after))) from None
    except Forbidden as refused:
        raise ApiError(403, refused.code, str(refused)) from None
    except RoomError:
        raise storage_unavailable() from None
    # Whether the room is loaded or not: reading the history depends on the role alone.
    if act is not None and not allowed(role, act):
        raise ApiError(403, "forbidden", f"only interviewers may read this room's {act.value}")


async def _read(call: Awaitable[T], room_id: str) -> T:
    """The store's answer; its failures (other than a missing room or version) become a 503."""
    try:
        return await call
    except (KeyError, HistoryUnavailable):
        raise
    except Exception as exc:
        # The traceback, never the arguments: they may be a room's text.
        log.exception("api_store_failed", room_id=room_id)
        raise storage_unavailable() from exc


@dataclass(frozen=True, slots=True)
class RoomState:
    """What the API says about a room besides its text, as of one read of the store."""

    epoch: str
    head: int  # the last committed version
    oldest: int  # the oldest version whose text is kept
    language: str
    members: int
    stored: bool  # False: loaded in memory, nothing committed yet


async def _state(registry: RoomRegistry, room_id: str) -> RoomState:
    info = await _read(registry.store.info(room_id), room_id)
    room = registry.rooms.get(room_id)
    if info is None:
        if room is None:
            raise not_found(room_id)
        return RoomState(room.document.epoch, 0, 0, room.language, len(room.sessions), stored=False)
    if room is None:
        return RoomState(info.epoch, info.version, info.oldest, info.language, 0, stored=True)
    return RoomState(info.epoch, info.version, info.oldest, room.language, len(room.sessions), stored=True)


async def _text_at(registry: RoomRegistry, room_id: str, state: RoomState, version: int) -> str:
    if not state.stored:
        return ""  # only version 0 exists, and it is empty
    try:
        return await _read(registry.store.text_at(room_id, version), room_id)
    except KeyError:
        raise not_found(room_id) from None


def iso_time(unix: float) -> str:
    """``2026-11-25T19:48:51.954Z``: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# As `JSONResponse` renders JSON, built once.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def history_entry(record: Record) -> str:
    """One update of a history page, as JSON text.

    The changes are put in as stored: they are the JSON the server encoded when it applied
    them, so encoding them again (most of a page's cost) would give the same text. They are
    still parsed, so that a damaged row is an error rather than a broken page.
    """
    if not isinstance(record.changes, str):
        raise TypeError(f"update {record.version} holds {type(record.changes).__name__}, not JSON text")
    json.loads(record.changes, parse_constant=_refuse_constant)
    # No `client_id`: it identifies a browser tab's session, and with it a connection could be
    # resumed in someone else's name (docs/protocol.md); `user_id` is what other members see.
    fields = _JSON.encode(
        {
            "version": record.version,
            "user_id": record.user_id,
            "author": record.author,
            "color": record.color,
            "time": iso_time(record.time),
            "unix_time": record.time,
        }
    )
    return f'{fields[:-1]},"changes":{record.changes}}}'


async def _current(registry: RoomRegistry, room_id: str) -> tuple[RoomState, str]:
    """The room's state and the text at its head."""
    attempts = 0
    while True:
        state = await _state(registry, room_id)
        try:
            return state, await _text_at(registry, room_id, state, state.head)
        except HistoryUnavailable:
            attempts += 1
            if attempts == TEXT_READ_ATTEMPTS:
                raise storage_unavailable() from None


@router.get("/{room_id}")
async def room_info(request: Request, room_id: str) -> JSONResponse:
    """The room's committed text and version, its language and how many members are in it."""
    registry = _registry(request, room_id)
    await _authorize(request, registry, room_id, None)
    state, text = await _current(registry, room_id)
    return JSONResponse(
        {
            "room_id": room_id,
            "epoch": state.epoch,
            "version": state.head,
            "oldest": state.oldest,
            "language": state.language,
            "members": state.members,
            "text": text,
        }
    )


@router.get("/{room_id}/versions/{version}")
async def text_at_version(request: Request, room_id: str, version: str) -> JSONResponse:
    """The room's text at one kept version."""
    registry = _registry(request, room_id)
    number = _integer(version, "version", 0)
    await _authorize(request, registry, room_id, Act.HISTORY)
    state = await _state(registry, room_id)
    # The store's own error, so that both checks (this one, and the store's after a prune
    # that raced with us) give one message naming the kept range.
    try:
        if not state.oldest <= number <= state.head:
            raise HistoryUnavailable(number, state.oldest, state.head)
        text = await _text_at(registry, room_id, state, number)
    except HistoryUnavailable as exc:
        raise out_of_range(str(exc)) from None
    return JSONResponse({"room_id": room_id, "epoch": state.epoch, "version": number, "text": text})


@router.get("/{room_id}/history")
async def history(request: Request, room_id: str, since: str | None = None, limit: str | None = None) -> Response:
    """Up to ``limit`` committed updates after version ``since``, oldest first, in at most
    ``API_MAX_RESPONSE_BYTES`` (always at least one update: ``next`` says where to go on)."""
    registry = _registry(request, room_id)
    settings: Settings = request.app.state.settings
    after = _integer(since, "since", 0)
    count = _integer(limit, "limit", DEFAULT_HISTORY_PAGE)
    if not 1 <= count <= MAX_HISTORY_PAGE:
        raise invalid_parameter(f"limit must be 1 to {MAX_HISTORY_PAGE}, got {count}")
    await _authorize(request, registry, room_id, Act.HISTORY)
    state = await _state(registry, room_id)
    if after > state.head:
        raise out_of_range(f"since {after} is past the last version: since must be 0 to {state.head}")
    page = {"room_id": room_id, "epoch": state.epoch, "head": state.head, "oldest": state.oldest}
    start = _JSON.encode(page)[:-1] + ',"updates":['
    # The longest `next` there can be, for the budget.
    budget = settings.api_max_response_bytes - len(start.encode()) - len(f'],"next":{max(state.head, 1000)}}}')
    updates: list[str] = []
    cursor = after
    full = not (state.stored and after < state.head)
    while not full:
        try:
            want = min(HISTORY_READ_CHUNK, count - len(updates))
            records = await _read(registry.store.history(room_id, cursor, want), room_id)
        except KeyError:
            raise not_found(room_id) from None
        # Updates committed after the head was read are left to the next page: this one is
        # consistent with the `head` it reports.
        records = [record for record in records if record.version <= state.head]
        for record in records:
            entry = history_entry(record)
            size = len(entry.encode()) + (1 if updates else 0)  # and its comma
            if updates and size > budget:
                full = True
                break
            updates.append(entry)
            budget -= size
            cursor = record.version
        full = full or not records or len(updates) == count or cursor >= state.head
    last = cursor if updates else state.head
    following = str(last) if last < state.head else "null"
    return Response(f'{start}{",".join(updates)}],"next":{following}}}', media_type="application/json")


# Anything else under /api/rooms answers in the same shape, rather than with the web page's
# "not found" (NiceGUI serves every other path) or FastAPI's default 405.
@router.api_route("", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False)
@router.api_route(
    "/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False
)
async def elsewhere(request: Request) -> JSONResponse:
    if request.method != "GET":
        creating = request.url.path.rstrip("/") == "/api/rooms"
        response = ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here: "
            + ("POST makes a private room" if creating else "the rooms API reads rooms with GET"),
        ).response()
        response.headers["Allow"] = "POST" if creating else "GET"
        return response
    raise ApiError(
        404,
        "not_found",
        f"no endpoint at {request.url.path[:200]!r}: see /api/rooms/{{room_id}}, "
        "/api/rooms/{room_id}/versions/{n} and /api/rooms/{room_id}/history",
    )
