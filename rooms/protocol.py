"""Every wire message of ``/ws/{room_id}``, as pydantic models, and the one parser for frames.

Two protocols share the endpoint (see ``docs/protocol.md``):

* the full-text protocol (``join``, ``code_change``, ``sync_request``, ``leave``, ``ping``/``pong``,
  ``user_joined``, ``user_left``, ``error``), kept verbatim for clients that exist;
* the versioned protocol (``hello``, ``welcome``, ``push``, ``update``, ``cursor``,
  ``member_joined``, ``member_left``, ``language``, ``ping``/``pong``, ``error`` with a code),
  with the messages of private rooms (below) and of running code (`rooms.run_protocol`).

Client messages ignore unknown fields, so clients may add some without breaking older servers.
Validation errors never echo the input back: it may be large, or hold what a user typed.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError, field_validator

from rooms.errors import InvalidJson, InvalidMessage, MessageTooLarge, RoomError

if TYPE_CHECKING:
    from rooms.run_protocol import RunMessage

CURSOR_POSITION_MAX_BYTES = 200

MAX_SAFE_INTEGER = 2**53 - 1
"""JavaScript's ``Number.MAX_SAFE_INTEGER``. Versions, seqs and positions beyond it cannot be
held exactly by a browser (nor stored as an integer by every store), so they are refused."""

SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
"""A count or position on the wire: 0 to 2^53 - 1."""


class WireProtocol(StrEnum):
    FULL_TEXT = "full_text"
    VERSIONED = "versioned"


class ClientMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ServerMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=True)


# Full-text protocol, client to server.


class Join(ClientMessage):
    type: Literal["join"]
    # Any value: an invalid or missing name becomes "Anonymous", it is not an error.
    username: JsonValue = None


class CodeChange(ClientMessage):
    type: Literal["code_change"]
    code: str
    # Relayed as given: full-text clients disagree on its shape (offset, or line and column).
    cursor_position: JsonValue = None

    @field_validator("cursor_position")
    @classmethod
    def _small(cls, value: JsonValue) -> JsonValue:
        # It is copied to every other full-text client: a position, not a payload.
        if len(json.dumps(value)) > CURSOR_POSITION_MAX_BYTES:
            raise ValueError(f"must be at most {CURSOR_POSITION_MAX_BYTES} bytes of JSON")
        return value


class SyncRequest(ClientMessage):
    type: Literal["sync_request"]


class Leave(ClientMessage):
    type: Literal["leave"]


class Ping(ClientMessage):
    type: Literal["ping"]


class Pong(ClientMessage):
    type: Literal["pong"]


# Versioned protocol, client to server.


class Hello(ClientMessage):
    type: Literal["hello"]
    client_id: Annotated[str, Field(min_length=1, max_length=128)]
    username: JsonValue = None
    version: SafeInt | None = None
    # The document epoch from the last `welcome`: a version of another epoch gets a snapshot.
    epoch: Annotated[str, Field(max_length=64)] | None = None
    # A secret the client keeps for as long as it lives (random, at least 16 characters): a
    # later hello with the same token takes over a connection still open under this client_id.
    resume_token: Annotated[str, Field(min_length=16, max_length=64)] | None = None
    # Opt-in: the server may then send several messages in one frame, as a JSON array.
    batch: bool = False
    # The colour the user chose (#rrggbb); without one the room picks a free one.
    color: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")] | None = None
    # The secret of a private room's link: it decides the member's role.
    token: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class Push(ClientMessage):
    type: Literal["push"]
    version: SafeInt
    seq: SafeInt
    # Parsed into a ChangeSet by the room, where a malformed one is `invalid_changes`.
    changes: list[JsonValue]


class Cursor(ClientMessage):
    type: Literal["cursor"]
    version: SafeInt
    anchor: SafeInt
    head: SafeInt


class Language(ClientMessage):
    type: Literal["language"]
    language: str


# Control of a private room: interviewers only (`rooms.access`).


class Lock(ClientMessage):
    type: Literal["lock"]
    locked: bool


class Remove(ClientMessage):
    type: Literal["remove"]
    user_id: Annotated[str, Field(min_length=1, max_length=64)]


class Revoke(ClientMessage):
    type: Literal["revoke"]
    role: Literal["candidate", "observer"]
    # True: a new link replaces the revoked one (its secret goes to interviewers in `link`).
    renew: bool = False


class End(ClientMessage):
    type: Literal["end"]


class Notes(ClientMessage):
    type: Literal["notes"]
    text: str

    @field_validator("text")
    @classmethod
    def _unicode(cls, value: str) -> str:
        # A message built on the server (a page's notes panel) is not parsed from a frame, where
        # lone surrogates are refused: they could be stored, but never encoded again.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone surrogate; notes must be valid Unicode") from None
        return value


AnyClientMessage = Annotated[
    Join
    | CodeChange
    | SyncRequest
    | Leave
    | Ping
    | Pong
    | Hello
    | Push
    | Cursor
    | Language
    | Lock
    | Remove
    | Revoke
    | End
    | Notes,
    Field(discriminator="type"),
]
_client_adapter: TypeAdapter[AnyClientMessage] = TypeAdapter(AnyClientMessage)
# Messages only the versioned protocol has: an error about one is answered in its format.
# The messages of running code (`rooms.run_protocol`, which builds on this module).
RUN_TYPES = ("run_start", "run_output", "run_end", "question", "allow_runs")
VERSIONED_ONLY = frozenset(
    {"hello", "push", "cursor", "language", "lock", "remove", "revoke", "end", "notes", *RUN_TYPES}
)
FULL_TEXT_ONLY = frozenset({"join", "code_change", "sync_request"})
CLIENT_TYPES = (
    *("join", "code_change", "sync_request", "leave", "ping", "pong"),
    *("hello", "push", "cursor", "language", "lock", "remove", "revoke", "end", "notes"),
    *RUN_TYPES,
)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(loc) for loc in item["loc"][1:]) or "message"
        parts.append(f"{where}: {item['msg'].lower()}")
    return "; ".join(parts[:3])


# JSON may spell a lone UTF-16 surrogate as an escape ("\\ud800"); decoded, it is a str that
# cannot be encoded again, so every message that echoed it (an update carrying the client_id, a
# full-text code_change) would fail after the document had changed. Refused at the door.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(data: dict[str, Any]) -> None:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(
            "message holds a lone surrogate (an unpaired \\ud800-\\udfff escape); strings must be valid Unicode"
        ) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")


# Python's decoder takes NaN, Infinity and -Infinity, which JSON has not: stored, they would make
# the store's text (and every message built from it) invalid JSON. Built once, as `_ENCODER`.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def parse_client_message(raw: str | bytes, max_bytes: int) -> AnyClientMessage | RunMessage:
    """Decode one frame into a client message, or raise a `RoomError` that says what is wrong."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise MessageTooLarge(size, max_bytes)
    if isinstance(raw, bytes):
        # Strictly: json.loads would let UTF-8-encoded surrogates through from bytes.
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"binary message is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        data = _DECODER.decode(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidJson(f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidJson(f"message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            _refuse_lone_surrogates(data)
        except InvalidMessage as surrogate:
            surrogate.message_type = kind if isinstance(kind, str) else None
            raise
    if kind == "push":
        # The commonest message, checked here as the model would: `changes` came from
        # json.loads, so it is JSON already, and validating it as JsonValue walked it again.
        version, seq, changes = data.get("version"), data.get("seq"), data.get("changes")
        if (
            type(version) is int
            and type(seq) is int
            and 0 <= version <= MAX_SAFE_INTEGER
            and 0 <= seq <= MAX_SAFE_INTEGER
            and type(changes) is list
        ):
            return Push.model_construct(type="push", version=version, seq=seq, changes=changes)
    if kind not in CLIENT_TYPES:
        unknown = InvalidMessage(f"unknown message type {str(kind)[:40]!r}; expected one of {', '.join(CLIENT_TYPES)}")
        unknown.message_type = kind if isinstance(kind, str) else None
        raise unknown
    try:
        if kind in RUN_TYPES:
            # Imported here: `rooms.run_protocol` builds its messages on this module's classes.
            from rooms.run_protocol import RUN_MESSAGES

            return RUN_MESSAGES.validate_python(data)
        return _client_adapter.validate_python(data)
    except ValidationError as exc:
        error = InvalidMessage(f"invalid {kind} message: {_describe(exc)}")
        error.message_type = kind
        run_id = data.get("run_id")
        if kind in RUN_TYPES and isinstance(run_id, str):
            from rooms.run_protocol import RUN_ID_PATTERN

            if re.fullmatch(RUN_ID_PATTERN, run_id):
                error.run_id = run_id  # an invalid run message's error names its run, as the room's do
        raise error from None


# Server to client. Built once per broadcast and serialised once for every recipient.


class MemberInfo(BaseModel):
    user_id: str
    username: str
    color: str
    role: str | None = None  # in a private room: interviewer, candidate or observer


class UserJoined(ServerMessage):
    type: Literal["user_joined"] = "user_joined"
    user_id: str
    username: str


class UserLeft(ServerMessage):
    type: Literal["user_left"] = "user_left"
    user_id: str


class CodeChangeOut(ServerMessage):
    type: Literal["code_change"] = "code_change"
    code: str
    cursor_position: JsonValue = None
    user_id: str

    def encode(self) -> str:
        # cursor_position is part of the full-text message even when it is null.
        return self.model_dump_json()


class FullTextError(ServerMessage):
    type: Literal["error"] = "error"
    message: str


class Welcome(ServerMessage):
    type: Literal["welcome"] = "welcome"
    user_id: str
    version: int
    doc: str | None = None
    members: list[MemberInfo]
    language: str
    epoch: str
    resume_token: str
    # The last seq the document applied for this client_id, when it remembers one: tells a
    # client whose state was reset whether its in-flight batch made it, and where seq goes on.
    last_seq: int | None = None
    # The most parts a push may hold: a client coarsens a larger ChangeSet before sending it.
    max_change_parts: int | None = None
    # A private room: the member's role, and whether the room is locked or ended (see `Access`).
    role: str | None = None
    locked: bool | None = None
    ended: bool | None = None
    # For interviewers: the secret of each shared role's live link (None: revoked, none now).
    links: dict[str, str | None] | None = None
    # Running code: whether members other than interviewers may, and the limits of a run.
    runs_allowed: bool | None = None
    run_timeout_seconds: float | None = None
    max_run_output_chars: int | None = None


class UpdateOut(ServerMessage):
    type: Literal["update"] = "update"
    version: int
    # Only in the author's copy: a client_id is a credential of its client (see `encode_update`).
    client_id: str | None = None
    seq: int
    changes: list[Any]
    user_id: str | None = None


# `json.dumps` with options builds a new encoder per call, a large part of encoding a small
# update; these are built once. `encode_string` is the encoder's own string step.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
encode_string = json.encoder.encode_basestring


def encode_changes(changes: list[Any]) -> str:
    """A ChangeSet's JSON as it goes on the wire and into the store (one encoding serves both)."""
    return _ENCODER.encode(changes)


def encode_update(version: int, client_id: str | None, seq: int, changes: str, user_id: str | None) -> str:
    """``UpdateOut(...).encode()``, the same text, around ``changes`` already encoded.

    ``client_id`` is given for the author's copy only (None leaves the field out): whoever
    knows a client's id could otherwise try to speak for that client.

    Every update is encoded once per broadcast; through the pydantic model that cost ten times
    the encoding itself under load. ``tests/test_protocol.py`` keeps the two identical.
    """
    tail = f',"user_id":{encode_string(user_id)}}}' if user_id else "}"
    author = f'"client_id":{encode_string(client_id)},' if client_id is not None else ""
    return f'{{"type":"update","version":{version:d},{author}"seq":{seq:d},"changes":{changes}{tail}'


class AckOut(ServerMessage):
    """The answer to a push that changed nothing: its seq is confirmed, no version was made."""

    type: Literal["ack"] = "ack"
    seq: int
    version: int


def encode_ack(seq: int, version: int) -> str:
    """``AckOut(seq=seq, version=version).encode()``, without the model."""
    return f'{{"type":"ack","seq":{seq:d},"version":{version:d}}}'


class CursorOut(ServerMessage):
    type: Literal["cursor"] = "cursor"
    user_id: str
    anchor: int
    head: int
    version: int


class MemberJoined(ServerMessage):
    type: Literal["member_joined"] = "member_joined"
    user_id: str
    username: str
    color: str
    role: str | None = None


class LockedOut(ServerMessage):
    """The room was locked or unlocked (by ``user_id``)."""

    type: Literal["locked"] = "locked"
    locked: bool
    user_id: str


class EndedOut(ServerMessage):
    """The interview was ended (by ``user_id``): a read-only record for all but interviewers."""

    type: Literal["ended"] = "ended"
    user_id: str


class NotesOut(ServerMessage):
    """The interviewers' notes, to interviewers only."""

    type: Literal["notes"] = "notes"
    text: str
    user_id: str | None = None


class LinkOut(ServerMessage):
    """A shared role's link changed, to interviewers only: its secret, or None once revoked."""

    type: Literal["link"] = "link"
    role: str
    token: str | None = None


class MemberLeft(ServerMessage):
    type: Literal["member_left"] = "member_left"
    user_id: str


class LanguageOut(ServerMessage):
    type: Literal["language"] = "language"
    language: str
    user_id: str | None = None


class PingOut(ServerMessage):
    type: Literal["ping"] = "ping"


class PongOut(ServerMessage):
    type: Literal["pong"] = "pong"


class ErrorOut(ServerMessage):
    type: Literal["error"] = "error"
    code: str
    message: str
    retry_after: float | None = None
    # The seq of the push refused, for the errors that answer one (`too_complex`, `resync`):
    # a client tells a late answer to an earlier send from one about its batch in flight.
    seq: int | None = None
    # The run a refused run message was about (like ``seq`` for a push).
    run_id: str | None = None

    @classmethod
    def of(cls, error: RoomError) -> ErrorOut:
        return cls(
            code=error.code,
            message=str(error),
            retry_after=getattr(error, "retry_after", None),
            seq=getattr(error, "seq", None),
            run_id=error.run_id,
        )


PING = PingOut().encode()
PONG = PongOut().encode()
