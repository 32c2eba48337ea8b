"""Every setting of collab pad, read once from the environment.

Defaults serve a single container with no setup. Each field is documented in
``docs/configuration.md``; a test checks that the two agree.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    """The application's configuration (environment variables, case-insensitive)."""

    # Inputs stay out of validation errors: DATABASE_URL and REDIS_URL may hold passwords.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log_format: LogFormat = LogFormat.CONSOLE
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    storage_secret: str | None = None
    data_dir: Path = Path("data")

    # Storage
    store: Literal["sqlite", "memory", "postgres"] = "sqlite"
    # Kept out of repr: a URL may hold a password (docs/configuration.md, the DATABASE_URL row).
    database_url: str = Field(default="", repr=False)
    database_pool_size: int = Field(default=10, ge=1)
    database_timeout_seconds: float = Field(default=10.0, gt=0)
    sqlite_synchronous: Literal["full", "normal"] = "full"
    snapshot_every: int = Field(default=500, ge=1)
    history_keep_versions: int = Field(default=0, ge=0)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)
    shutdown_drain_seconds: float = Field(default=0.0, ge=0)

    # Several processes sharing rooms (docs/configuration.md, REDIS_URL to CLUSTER_HEAD_CHECK_SECONDS)
    redis_url: str = Field(default="", repr=False)
    stream_max_length: int = Field(default=1_000, ge=10)
    cluster_head_check_seconds: float = Field(default=2.0, gt=0)
    presence_timeout_seconds: float = Field(default=10.0, ge=1)
    redis_key_prefix: str = Field(default="collab:", min_length=1, max_length=64)

    # Document
    max_document_chars: int = Field(default=100_000, ge=1)
    history_limit: int = Field(default=2_000, ge=1)
    dedup_clients: int = Field(default=10_000, ge=1)
    default_language: str = "python"

    # Per-connection limits
    rate_limit_per_second: float = Field(default=60.0, gt=0)
    rate_limit_burst: int = Field(default=300, ge=1)
    max_message_bytes: int = Field(default=0, ge=0)
    max_username_chars: int = Field(default=40, ge=1)
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Fan-out and liveness
    outbound_queue_size: int = Field(default=1_000, ge=1)
    outbound_queue_chars: int = Field(default=8_000_000, ge=1)
    send_timeout_seconds: float = Field(default=10.0, gt=0)
    heartbeat_interval_seconds: float = Field(default=30.0, gt=0)
    heartbeat_timeout_seconds: float = Field(default=90.0, gt=0)
    room_grace_seconds: float = Field(default=600.0, ge=0)
    max_members_per_room: int = Field(default=100, ge=1)
    join_timeout_seconds: float = Field(default=10.0, gt=0)
    ws_per_message_deflate: bool = False
    ws_ping_interval_seconds: float = Field(default=20.0, gt=0)
    ws_ping_timeout_seconds: float = Field(default=20.0, gt=0)
    fast_path: bool = True

    # The cost of one message (docs/configuration.md, the MAX_CHANGE_PARTS and REBASE_* rows)
    max_change_parts: int = Field(default=1_000, ge=3)
    max_rebase_versions: int = Field(default=200, ge=1)
    max_rebase_steps: int = Field(default=16_000, ge=1)
    rebase_steps_per_token: int = Field(default=500, ge=1)
    history_limit_bytes: int = Field(default=4_000_000, ge=1)
    diff_max_steps: int = Field(default=50_000, ge=1)

    # Per client address and in total
    max_connections: int = Field(default=5_000, ge=1)
    max_connections_per_address: int = Field(default=100, ge=1)
    rate_limit_per_address_per_second: float = Field(default=300.0, gt=0)
    rate_limit_per_address_burst: int = Field(default=1_500, ge=1)
    rooms_per_address_per_minute: int = Field(default=30, ge=1)
    max_loaded_rooms: int = Field(default=5_000, ge=1)
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    room_retention_days: float = Field(default=30.0, ge=0)

    # Private rooms (docs/configuration.md, the OPEN_ROOMS row; docs/operations.md, "Interview rooms")
    open_rooms: bool = True
    max_notes_chars: int = Field(default=20_000, ge=1)
    link_failures_per_address_per_minute: int = Field(default=20, ge=1)

    # Running code (docs/configuration.md, RUN_TIMEOUT_SECONDS to QUESTIONS_DIR; docs/operations.md, "Running code")
    run_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_run_output_chars: int = Field(default=20_000, ge=1)
    runs_per_minute: int = Field(default=20, ge=1)
    max_active_runs_per_room: int = Field(default=4, ge=1)
    max_stored_runs_per_room: int = Field(default=200, ge=1)
    questions_dir: Path | None = None

    # HTTP edge and the rooms API
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    request_header_timeout_seconds: float = Field(default=10.0, gt=0)
    request_body_timeout_seconds: float = Field(default=60.0, gt=0)
    api_rate_limit_per_second: float = Field(default=10.0, gt=0)
    api_rate_limit_burst: int = Field(default=60, ge=1)
    api_max_response_bytes: int = Field(default=256_000, ge=1)
    api_read_threads: int = Field(default=2, ge=1)
    api_max_pending_reads: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _postgres_has_a_database(self) -> Settings:
        # The messages never repeat the URLs: they may hold a password.
        if self.store == "postgres" and not self.database_url.strip():
            raise ValueError("DATABASE_URL must be set when STORE=postgres (a libpq URL, postgresql://...)")
        if self.redis_url.strip() and self.store != "postgres":
            raise ValueError(
                f"REDIS_URL is set but STORE={self.store}: processes that share rooms through Redis "
                "must keep them in one PostgreSQL database (set STORE=postgres and DATABASE_URL, or unset REDIS_URL)"
            )
        return self

    @model_validator(mode="after")
    def _dedup_covers_history(self) -> Settings:
        # A client forgotten by the dedup table while its pushes are still in the history
        # would have a resend applied twice.
        if self.dedup_clients < self.history_limit:
            raise ValueError(
                f"DEDUP_CLIENTS ({self.dedup_clients}) must be at least HISTORY_LIMIT ({self.history_limit})"
            )
        return self

    @model_validator(mode="after")
    def _kept_history_covers_catch_up(self) -> Settings:
        # Loading a room brings back HISTORY_LIMIT versions of history for catch-up and rebase.
        if self.history_keep_versions and self.history_keep_versions < self.history_limit:
            raise ValueError(
                f"HISTORY_KEEP_VERSIONS ({self.history_keep_versions}) must be 0 (keep all) "
                f"or at least HISTORY_LIMIT ({self.history_limit})"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # A comma-separated list reads better in an environment variable than JSON.
        if isinstance(value, str):
            return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_hosts", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value

    @field_validator("questions_dir", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        # QUESTIONS_DIR= (set, but empty) is unset, not the working directory.
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "rooms.sqlite3"

    @property
    def frame_limit_bytes(self) -> int:
        """The WebSocket frame cap: explicit, or room for a full document however it is encoded.

        It must stay well above the largest valid message so that an oversize document gets an
        ``error`` reply (checked against ``max_document_chars``) instead of a dropped connection.
        12 bytes a character covers the worst case: an astral character JSON-escaped as
        ``\\ud83d\\ude00`` by an ASCII-only encoder (4 bytes a character as raw UTF-8).
        """
        if self.max_message_bytes:
            return self.max_message_bytes
        return self.max_document_chars * 12 + 64 * 1024


class ConfigurationError(SystemExit):
    """Invalid settings: stops the start with one line per bad variable, no traceback."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            lines.append(f"  {name}: {error['msg']}")
        raise ConfigurationError("invalid configuration:\n" + "\n".join(lines)) from None
