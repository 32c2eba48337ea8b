"""A test's own connection to the Redis the tests use, and the cleaning of its keys."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError


async def redis_admin(url: str, variable: str) -> Redis:
    """A connection to ``url``; the test is skipped, saying which variable names another, when
    Redis does not answer there."""
    client = Redis.from_url(url, socket_timeout=5)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"Redis does not answer at {url} ({type(exc).__name__}); set {variable}")
    return client


async def delete_keys(admin: Redis, prefix: str) -> None:
    """What FLUSHDB does to one test's keys, without touching the others'."""
    keys = [key async for key in admin.scan_iter(match=f"{prefix}*")]
    if keys:
        await admin.delete(*keys)
