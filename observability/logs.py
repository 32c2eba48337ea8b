"""structlog configuration: one pipeline for our logs and for uvicorn's and NiceGUI's.

``LOG_FORMAT=json`` writes one JSON object a line (for log shippers); ``console`` is readable
locally. Room code binds ``room_id`` and ``user_id`` on every line about a room or a client;
message contents are never logged.

An open room's id is its only secret: whoever knows it can read and edit the room (a private
room's links are its secrets, and are never logged). So no line carries a room id in clear. A
``room_id`` field is replaced by ``room``, the room's *tag* (the first 12 hex digits of
HMAC-SHA256 over the id, keyed with a key derived from the storage secret), and a room id in a
path (``/ws/<id>``, ``/room/<id>``, ``/api/rooms/<id>/...``: uvicorn's access lines, a request's
``path``) becomes ``~<tag>``. Every line about one room carries the same tag, so operators can
follow it; only whoever holds the storage secret can tell which room a tag is (``python -m
observability.logs tag <room_id>``).

Secrets never reach a line either: fields named like one (``resume_token``, ``storage_secret``)
are redacted, and so are the payloads of the frames and the cookie headers that the WebSocket
library shows at ``LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import logging
import re
import secrets
import sys
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, ExceptionRenderer, ExcInfo, Processor, WrappedLogger

# Loggers of our dependencies that configure handlers of their own; they are routed to ours.
FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "nicegui", "fastapi", "websockets")

# Fields that must never reach a log line, whatever code put them into an event.
REDACTED_KEYS = frozenset(
    {
        "storage_secret",
        "secret",
        "password",
        "token",
        "resume_token",
        "authorization",
        "cookie",
        "code",
        "doc",
        "changes",
        "text",
    }
)
# And any field named like one of them (``session_token``, ``api_secret``...).
REDACTED_SUFFIXES = ("_secret", "_token", "_password")

# Where a room id appears in a URL path: the segment after one of these prefixes. Any segment
# is tagged, a malformed id too (the server refuses it, but its author may still mean it).
ROOM_PATH = re.compile(r"(/(?:ws|room|join|api/rooms)/)([^/?#\s\"'~][^/?#\s\"']*)")
# A link's secret, after its room in a ``/join/<room>/<secret>`` path: never logged at all.
LINK_SECRET = re.compile(r"(/join/[^/?#\s\"']+/)[^/?#\s\"']+")
# A WebSocket library's debug lines show each frame's first and last bytes (a resume token, a
# document's text) and each header (a session cookie): the payload goes, the frame's kind and
# size stay.
WIRE_FRAME = re.compile(r"^([<>] (?:TEXT|BINARY|CONT)) .* (\[[^\]]*bytes[^\]]*\])$", re.DOTALL)
WIRE_HEADER = re.compile(r"^([<>] (?:cookie|set-cookie|authorization|proxy-authorization): ).*$", re.IGNORECASE)
TAG_CHARS = 12  # 48 bits: no two rooms of one server share a tag in practice
TAG_MARK = "~"  # before a tag in a path; never in a room id (`rooms.limits.ROOM_ID`)
_KEY_CONTEXT = b"collab pad room log tag"

# Until the app sets the key from its storage secret: random, so tags still follow a room
# within this process and reveal nothing.
_room_key: bytes = secrets.token_bytes(32)


def set_room_log_key(secret: str | bytes) -> None:
    """Key room tags with ``secret`` (the app's storage secret), so that they stay the same
    across restarts and ``python -m observability.logs tag`` can compute them."""
    global _room_key
    raw = secret.encode() if isinstance(secret, str) else secret
    # A key of its own, derived from the secret, rather than the secret itself: a tag is then
    # never an HMAC made with the key that signs the session cookies.
    _room_key = hmac.new(raw.strip(), _KEY_CONTEXT, hashlib.sha256).digest()


def room_tag(room_id: str) -> str:
    """The room's tag in logs: 12 hex digits, the same for every line about the room."""
    return _tag(_room_key, room_id)


@functools.lru_cache(maxsize=4096)
def _tag(key: bytes, room_id: str) -> str:
    return hmac.new(key, room_id.encode(), hashlib.sha256).hexdigest()[:TAG_CHARS]


def redact_room_paths(text: str) -> str:
    """``text`` with every room id in a path replaced by ``~`` and its tag."""
    if "/" not in text:
        return text
    text = LINK_SECRET.sub(r"\1[redacted]", text)
    return ROOM_PATH.sub(lambda match: f"{match[1]}{TAG_MARK}{room_tag(match[2])}", text)


def redact(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Replace secrets and document contents with a marker, keeping the key visible."""
    for key in event_dict:
        if key in REDACTED_KEYS or (isinstance(key, str) and key.lower().endswith(REDACTED_SUFFIXES)):
            event_dict[key] = "[redacted]"
    return event_dict


def redact_wire(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Drop frame payloads and credential headers from a WebSocket library's debug lines."""
    event = event_dict.get("event")
    if isinstance(event, str) and event[:2] in ("< ", "> "):
        event = WIRE_FRAME.sub(r"\1 [redacted] \2", event)
        event_dict["event"] = WIRE_HEADER.sub(r"\1[redacted]", event)
    return event_dict


def tag_rooms(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Replace ``room_id`` by ``room`` (its tag), and room ids in paths in any text by tags.

    Foreign lines (uvicorn's access log) arrive as their formatted message in ``event``."""
    room_id = event_dict.pop("room_id", None)
    if room_id is not None:
        event_dict["room"] = room_tag(str(room_id))
    for key, value in event_dict.items():
        if isinstance(value, str) and key != "room":
            event_dict[key] = redact_room_paths(value)
    return event_dict


def _redacting(formatter: ExceptionRenderer) -> ExceptionRenderer:
    """A console traceback with room ids in paths tagged, as in the rest of the line."""

    def render(sio: TextIO, exc_info: ExcInfo) -> None:
        buffer = StringIO()
        formatter(buffer, exc_info)
        sio.write(redact_room_paths(buffer.getvalue()))

    return render


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    """Configure structlog and the standard library once; safe to call again (tests do)."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        redact_wire,
        tag_rooms,
    ]
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        # The traceback is text by now, and tagged like every other field.
        shared.extend([structlog.processors.format_exc_info, tag_rooms])
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=_redacting(structlog.dev.default_exception_formatter),
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: nothing logs per message, and tests can then capture any logger's events.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_collab_pad", False):
            root.removeHandler(old)
    handler._collab_pad = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Warnings (a dependency's deprecation notice, say) become log events too, so a JSON log
    # stays one JSON object a line.
    logging.captureWarnings(True)
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.propagate = True


def storage_secret_from_environment() -> str:
    """The storage secret as the app reads it: ``STORAGE_SECRET``, else ``DATA_DIR/storage-secret``.

    Never creates one (the app does, on its first start)."""
    from rooms.settings import load_settings  # only the command line needs the settings

    settings = load_settings()
    if settings.storage_secret:
        return settings.storage_secret
    path = settings.data_dir / "storage-secret"
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        secret = ""
    if not secret:
        raise SystemExit(
            f"no storage secret: set STORAGE_SECRET, or DATA_DIR to the server's data directory "
            f"({Path(path).resolve()} does not hold one)"
        )
    return secret


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m observability.logs",
        description="Room tags as they appear in collab pad's logs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tag = commands.add_parser(
        "tag",
        help="print a room's tag",
        description="Print the tag that stands for a room in the logs, keyed with the storage "
        "secret read as the server reads it (STORAGE_SECRET, else DATA_DIR/storage-secret).",
    )
    tag.add_argument("room_ids", nargs="+", metavar="room_id")
    args: Any = parser.parse_args(argv)
    set_room_log_key(storage_secret_from_environment())
    for room_id in args.room_ids:
        print(room_tag(room_id))


if __name__ == "__main__":
    main()
