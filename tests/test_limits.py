"""Token bucket, username and language cleaning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rooms.errors import InvalidMessage, RateLimited
from rooms.limits import TokenBucket, clean_language, clean_username


def test_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket.full(rate=10, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    with pytest.raises(RateLimited) as refused:
        bucket.take(0.0)
    assert pytest.approx(0.1) == refused.value.retry_after


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    bucket = TokenBucket.full(rate=10, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    bucket.take(0.1)
    bucket.take(100.0)
    assert 2.0 == bucket.tokens


def test_bucket_sustains_its_rate_forever() -> None:
    bucket = TokenBucket.full(rate=30, burst=1, now=0.0)
    for step in range(1, 3001):
        bucket.take(step / 30)


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket.full(rate=1, burst=1, now=10.0)
    bucket.take(10.0)
    with pytest.raises(RateLimited):
        bucket.take(5.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  ann  ", "ann"),
        ("a\nb\tc", "a b c"),
        ("x\u202ey\u200bz", "xyz"),
        ("", "Anonymous"),
        ("\u200b\n", "Anonymous"),
        (None, "Anonymous"),
        (42, "Anonymous"),
        (["ann"], "Anonymous"),
        ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),
        ("名前😀", "名前😀"),
    ],
)
def test_clean_username(raw: object, expected: str) -> None:
    assert expected == clean_username(raw, 40)


def test_clean_username_cuts_to_the_limit_without_trailing_space() -> None:
    assert "ab" == clean_username("ab cdef", 3)


@given(st.text())
def test_clean_username_is_short_printable_and_never_empty(raw: str) -> None:
    name = clean_username(raw, 10)
    assert 1 <= len(name) <= 10
    assert name == name.strip()
    assert all(char.isprintable() for char in name)


@pytest.mark.parametrize("raw", ["python", "C++", "C#", "objective-c", "Plain Text"])
def test_clean_language_accepts_names(raw: str) -> None:
    assert raw == clean_language(raw)


@pytest.mark.parametrize("raw", ["", "<b>", "x" * 41, 5, "a;b"])
def test_clean_language_refuses_others(raw: object) -> None:
    with pytest.raises(InvalidMessage):
        clean_language(raw)
