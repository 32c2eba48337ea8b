"""Settings: environment parsing, and the documentation listing every one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from rooms.settings import ConfigurationError, Settings, load_settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", DOC.read_text(), re.MULTILINE))
    assert {name.upper() for name in Settings.model_fields} == documented


def test_allowed_origins_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://a.example/, https://b.example")
    assert ["https://a.example", "https://b.example"] == Settings().allowed_origins


def test_frame_limit_fits_a_full_escaped_document() -> None:
    settings = Settings(max_document_chars=100_000)
    assert settings.frame_limit_bytes > 100_000 * 12
    assert 5000 == Settings(max_message_bytes=5000).frame_limit_bytes


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "99999")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert "DEBUG" == Settings().log_level


def test_dedup_table_must_cover_the_history() -> None:
    with pytest.raises(ValidationError, match="DEDUP_CLIENTS"):
        Settings(dedup_clients=10, history_limit=100)


def test_a_bad_environment_stops_with_one_line_per_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "70000")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError) as stopped:
        load_settings()
    message = str(stopped.value.code)
    assert message.startswith("invalid configuration:")
    assert "  PORT: Input should be less than or equal to 65535" in message.splitlines()
    assert any(line.startswith("  LOG_FORMAT: ") for line in message.splitlines())
