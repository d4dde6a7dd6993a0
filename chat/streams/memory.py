"""The in-process stream log: a list of frames per message and an event to wake readers."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

from django.conf import settings

from chat.events import Outcome
from chat.streams.base import Chunk, StreamLog, Waker


@dataclass(eq=False)
class _Entry:
    frames: list[str] = field(default_factory=list)
    # ends[i] is the answer's length after frames[i]; strictly increasing.
    ends: list[int] = field(default_factory=list)
    outcome: Outcome | None = None
    html: str = ""
    # What readers waiting for the next change wait on; a new one after each change.
    waker: Waker = field(default_factory=Waker)
    readers: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    @property
    def length(self) -> int:
        return self.ends[-1] if self.ends else 0

    def text_after(self, after: int) -> str:
        index = bisect_right(self.ends, after)
        if index >= len(self.frames):
            return ""
        start = self.ends[index - 1] if index else 0
        head = self.frames[index][after - start :]
        return head + "".join(self.frames[index + 1 :])

    def wake(self) -> None:
        waker, self.waker = self.waker, Waker()
        waker.set()


class MemoryStreamLog(StreamLog):
    """Holds frames for the messages this process generates; only for one process."""

    def __init__(self) -> None:
        self._entries: dict[UUID, _Entry] = {}

    def open(self, message_id: UUID) -> None:
        self._entries[message_id] = _Entry()

    def holds(self, message_id: UUID) -> bool:
        """True while this log has the message (from its open to its retention's end)."""
        return message_id in self._entries

    def append(self, message_id: UUID, text: str) -> None:
        entry = self._entries[message_id]
        if not text or entry.outcome is not None:
            return
        entry.frames.append(text)
        entry.ends.append(entry.length + len(text))
        entry.wake()

    async def finish(self, message_id: UUID, outcome: Outcome, html: str) -> None:
        entry = self._entries[message_id]
        entry.outcome = outcome
        entry.html = html
        entry.wake()
        # Keep the finished stream briefly for readers that are catching up; the
        # database serves everybody after that.
        asyncio.get_running_loop().call_later(
            settings.CHAT_LOG_RETENTION, self._entries.pop, message_id, None
        )

    async def read(
        self, message_id: UUID, after: int, wait: float, *, expected: bool = False
    ) -> Chunk | None:
        # `expected` changes nothing here: a generation of this process opens its stream
        # before anybody can ask for it.
        entry = self._entries.get(message_id)
        if entry is None:
            return None
        if after < entry.length:
            return Chunk(entry.text_after(after), entry.length, entry.outcome, entry.html)
        if entry.outcome is not None or after > entry.length:
            beyond = entry.outcome is None
            return Chunk("", entry.length, entry.outcome, entry.html, beyond=beyond)
        await entry.waker.wait(wait)
        if entry.length == after and entry.outcome is None:
            return Chunk("", after)  # the time was up
        return Chunk(entry.text_after(after), entry.length, entry.outcome, entry.html)

    async def check_available(self) -> None:
        return None  # in-process: always there

    async def aclose(self) -> None:
        return None  # no connections, no background tasks

    async def expire(self, message_id: UUID) -> None:
        entry = self._entries.get(message_id)
        if entry is not None and entry.outcome is not None:
            del self._entries[message_id]

    async def broadcast_cancel(self, message_id: UUID) -> None:
        return None  # only this process can run it, and generation_cancel looked here

    async def idle_seconds(self, message_id: UUID) -> float:
        entry = self._entries.get(message_id)
        if entry is None or entry.readers:
            return 0.0
        return time.monotonic() - entry.idle_since

    @asynccontextmanager
    async def reading(self, message_id: UUID) -> AsyncIterator[None]:
        entry = self._entries.get(message_id)
        if entry is not None:
            entry.readers += 1
        try:
            yield
        finally:
            if entry is not None:
                entry.readers -= 1
                entry.idle_since = time.monotonic()
