"""structlog configuration: one pipeline for our logs and for uvicorn's and NiceGUI's.

``LOG_FORMAT=json`` writes one JSON object a line (for log shippers); ``console`` is readable
locally. Room code binds ``room_id`` and ``user_id`` on every line about a room or a client;
message contents are never logged.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# Loggers of our dependencies that configure handlers of their own; they are routed to ours.
FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "nicegui", "fastapi", "websockets")

# Fields that must never reach a log line, whatever code put them into an event.
REDACTED_KEYS = frozenset(
    {"storage_secret", "secret", "password", "token", "authorization", "cookie", "code", "doc", "changes", "text"}
)


def redact(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Replace secrets and document contents with a marker, keeping the key visible."""
    for key in REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    """Configure structlog and the standard library once; safe to call again (tests do)."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

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
