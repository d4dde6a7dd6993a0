"""The stream log: the one place a generation's frames are written and readers follow.

`get_stream_log()` returns the backend chosen by settings: in-process by default.
"""

from __future__ import annotations

from functools import cache

from chat.streams.base import Chunk, StreamLog
from chat.streams.memory import MemoryStreamLog

__all__ = ["Chunk", "StreamLog", "get_stream_log"]


@cache
def get_stream_log() -> StreamLog:
    return MemoryStreamLog()
