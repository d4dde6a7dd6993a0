"""Django's Redis cache, with one connection pool per process.

Under ASGI, `django.core.cache.caches` is context-local: every request gets cache objects
of its own, and Django's Redis cache makes its client, and with it its connection pool,
per cache object. Each request that touches the cache (every send does: its rate limit)
would then open a connection to Redis, with a 64 KiB read buffer, and drop it. Here the
cache objects of one location and options share one client; redis-py's pools are
thread-safe, and start afresh in a forked child.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

_clients: dict[tuple[tuple[str, ...], str], Any] = {}
_lock = threading.Lock()


class RedisCache(DjangoRedisCache):
    # Set by Django's __init__ (its type stubs leave them out).
    _servers: list[str]
    _options: dict[str, Any]
    _class: type[Any]

    @cached_property
    def _cache(self) -> Any:
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._class(self._servers, **self._options)
        return client
