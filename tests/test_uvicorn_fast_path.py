"""The switch of the uvicorn fast path and the check of how the server was started, as plain
functions (tests/test_ws_direct.py drives the fast path and its fallback on a real server)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import MutableMapping
from typing import Any

import pytest
import uvicorn
from structlog.testing import capture_logs
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.uvicorn_fast_path import (
    TESTED_UVICORN_VERSIONS,
    TESTED_WEBSOCKETS_VERSIONS,
    FastPath,
    fast_path,
    http_protocol,
    report_server,
    server_differences,
    server_options,
)
from rooms.settings import Settings


async def app(scope: Any, receive: Any, send: Any) -> None:  # what the configs below load
    pass


def loaded(**options: Any) -> uvicorn.Config:
    config = uvicorn.Config(app, log_config=None, **options)
    config.load()
    return config


def events(logs: list[MutableMapping[str, Any]], level: str | None = None) -> list[str]:
    return [entry["event"] for entry in logs if level is None or entry["log_level"] == level]


def test_the_installed_versions_are_the_tested_ones() -> None:
    """The pins in pyproject.toml and the guard move together: a bump must be tested first."""
    assert uvicorn.__version__ in TESTED_UVICORN_VERSIONS
    assert importlib.metadata.version("websockets") in TESTED_WEBSOCKETS_VERSIONS
    assert FastPath(enabled=True) == fast_path(True)


@pytest.mark.parametrize(
    ("decision", "reason"),
    [
        (fast_path(False), "FAST_PATH is false"),
        (fast_path(True, uvicorn_version="0.99.0"), "uvicorn 0.99.0 is not a tested version"),
        (fast_path(True, websockets_version="18.0"), "websockets 18.0 is not a tested version"),
    ],
    ids=["setting-off", "untested-uvicorn", "untested-websockets"],
)
def test_the_fast_path_is_off_for_the_setting_and_for_untested_versions(decision: FastPath, reason: str) -> None:
    assert (False, reason) == (decision.enabled, decision.reason)


def test_request_deadlines_apply_only_to_a_tested_uvicorn_and_are_one_class_per_setting() -> None:
    protocol = http_protocol(1.0, 2.0)
    assert isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol)
    assert protocol is http_protocol(1.0, 2.0)
    assert "auto" == http_protocol(1.0, 2.0, uvicorn_version="0.99.0")


def test_python_app_py_options_leave_nothing_to_report() -> None:
    expected = server_options(Settings())
    assert {} == server_differences(loaded(**expected), expected)
    with capture_logs() as logs:
        report_server(loaded(**expected), fast_path(True), expected)
    assert [("fast_path", True)] == [(entry["event"], entry["enabled"]) for entry in logs]


def test_uvicorn_defaults_are_reported_by_name() -> None:
    """What ``uvicorn app:app`` gets: uvicorn's defaults (its WebSocket implementation is still
    the sans-I/O one, so the fast path stays on)."""
    expected = server_options(Settings())
    with capture_logs() as logs:
        report_server(loaded(), fast_path(True), expected)
    assert ["server_options_differ"] == events(logs, "warning")
    differences = logs[-1]["options"]
    assert {"http", "proxy_headers", "forwarded_allow_ips", "ws_max_size", "ws_per_message_deflate"} <= set(differences)
    assert {"expected": False, "actual": True} == differences["proxy_headers"]
    assert {"expected": "HeadDeadlineProtocol", "actual": "HttpToolsProtocol"} == differences["http"]
    assert [True] == [entry["enabled"] for entry in logs if entry["event"] == "fast_path"]


def test_trusted_proxies_are_compared_as_a_set() -> None:
    expected = server_options(Settings(forwarded_allow_ips=["10.0.0.2", "10.0.0.1"]))
    config = loaded(**{**expected, "forwarded_allow_ips": "10.0.0.1, 10.0.0.2"})
    assert {} == server_differences(config, expected)
    config = loaded(**{**expected, "forwarded_allow_ips": "*"})
    assert {"forwarded_allow_ips"} == set(server_differences(config, expected))


def test_another_websocket_implementation_turns_the_fast_path_off_with_a_warning() -> None:
    expected = server_options(Settings())
    with capture_logs() as logs:
        report_server(loaded(**{**expected, "ws": "wsproto"}), fast_path(True), expected)
    assert ["fast_path", "server_options_differ"] == events(logs, "warning")
    assert "uvicorn's WebSocket implementation is WSProtocol" == logs[0]["reason"]


def test_another_server_serves_without_the_fast_path_and_says_so() -> None:
    with capture_logs() as logs:
        report_server(None, fast_path(True), server_options(Settings()))
    assert [("fast_path", "warning", "not served by uvicorn")] == [
        (entry["event"], entry["log_level"], entry["reason"]) for entry in logs
    ]


def test_the_fast_path_turned_off_is_said_without_a_warning() -> None:
    expected = server_options(Settings())
    with capture_logs() as logs:
        report_server(loaded(**expected), fast_path(False), expected)
    assert [] == events(logs, "warning")
    assert [("fast_path", False, "FAST_PATH is false")] == [
        (entry["event"], entry["enabled"], entry["reason"]) for entry in logs
    ]


def test_an_untested_uvicorn_has_neither_fast_path_nor_request_deadlines() -> None:
    expected = server_options(Settings(), uvicorn_version="0.99.0")
    with capture_logs() as logs:
        report_server(loaded(), fast_path(True, uvicorn_version="0.99.0"), expected, uvicorn_version="0.99.0")
    # Its options are not compared: only what the guard itself decided is reported.
    assert ["fast_path", "request_header_timeout_unsupported"] == events(logs, "warning")
    assert "uvicorn 0.99.0 is not a tested version" == logs[0]["reason"]
