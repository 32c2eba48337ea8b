"""The Origin check of browser WebSocket handshakes."""

from __future__ import annotations

import pytest

from api.origins import is_loopback, origin_allowed


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (None, "pad.example.com"),
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("https://pad.example.com", "pad.example.com"),
        ("https://pad.example.com", "pad.example.com:443"),
        ("https://PAD.example.com", "pad.example.com"),
        ("http://localhost:8080/", "localhost:8080"),
    ],
)
def test_same_origin_is_allowed_by_default(origin: str | None, host: str) -> None:
    assert origin_allowed(origin, host, [])


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "pad.example.com"),
        ("http://127.0.0.1:9999", "127.0.0.1:8080"),
        ("null", "pad.example.com"),
        ("file://", "pad.example.com"),
        ("http://pad.example.com:bad", "pad.example.com"),
        ("https://pad.example.com.evil.example", "pad.example.com"),
        ("http://127.0.0.1:8080", None),
    ],
)
def test_other_origins_are_refused_by_default(origin: str, host: str | None) -> None:
    assert not origin_allowed(origin, host, [])


def test_allow_list_replaces_the_same_origin_rule() -> None:
    allowed = ["https://pad.example.com"]
    assert origin_allowed("https://pad.example.com", "internal:8080", allowed)
    assert not origin_allowed("http://internal:8080", "internal:8080", allowed)


def test_wildcard_allows_every_origin() -> None:
    assert origin_allowed("https://anything.example", "pad.example.com", ["*"])


def test_a_loopback_server_accepts_only_loopback_names_from_browsers() -> None:
    # A page on rebind.example that re-resolves its name to 127.0.0.1 is "same-origin".
    assert origin_allowed("http://rebind.example:8080", "rebind.example:8080", [])
    assert not origin_allowed("http://rebind.example:8080", "rebind.example:8080", [], loopback_only=True)
    assert origin_allowed("http://localhost:8080", "localhost:8080", [], loopback_only=True)
    assert origin_allowed("http://[::1]:8080", "[::1]:8080", [], loopback_only=True)
    assert origin_allowed(None, "rebind.example:8080", [], loopback_only=True)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("pad.example", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert expected == is_loopback(host)
