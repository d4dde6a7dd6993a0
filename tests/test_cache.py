"""The Redis cache of several processes: one connection pool per process, not per request."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.core.cache import cache

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_cache(settings: Any) -> Any:
    probe = redis.Redis.from_url(URL, socket_connect_timeout=2)
    try:
        probe.ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis is needed: {error}")
    prefix = f"chat-test-{secrets.token_hex(4)}:"
    settings.CACHES = {
        "default": {
            "BACKEND": "chat.cache.RedisCache",
            "LOCATION": URL,
            "KEY_PREFIX": prefix,
        }
    }
    yield probe
    for key in probe.scan_iter(f"{prefix}*"):
        probe.delete(key)


def _count() -> int:
    cache.add("sends", 0, timeout=60)
    return cache.incr("sends")


async def test_requests_share_the_processes_redis_connections(redis_cache: Any) -> None:
    opened_before = redis_cache.info("stats")["total_connections_received"]

    # Each task has a context of its own, as each ASGI request does, and with it cache
    # objects of its own.
    counts = await asyncio.gather(
        *(asyncio.create_task(sync_to_async(_count)()) for _ in range(20))
    )

    assert sorted(counts) == list(range(1, 21))
    opened = redis_cache.info("stats")["total_connections_received"] - opened_before
    assert opened <= 2, f"{opened} connections for 20 requests"
