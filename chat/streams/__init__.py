"""The stream log: the one place a generation's frames are written and readers follow.

`get_stream_log()` returns the backend chosen by settings: in-process by default, Redis
when `REDIS_URL` is set.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings

from chat.streams.base import Chunk, LogUnavailable, StreamLog
from chat.streams.memory import MemoryStreamLog

__all__ = ["Chunk", "LogUnavailable", "StreamLog", "get_stream_log"]


@cache
def get_stream_log() -> StreamLog:
    if settings.REDIS_URL:
        from chat.streams.redis import RedisStreamLog

        return RedisStreamLog(
            settings.REDIS_URL,
            prefix=settings.CHAT_REDIS_PREFIX,
            retention=settings.CHAT_REDIS_LOG_RETENTION,
            max_lifetime=settings.CHAT_GENERATION_TIMEOUT + 60,
        )
    return MemoryStreamLog()
