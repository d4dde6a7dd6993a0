"""The interface every stream log backend implements."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from uuid import UUID

from chat.events import Outcome


@dataclass(frozen=True, slots=True)
class Chunk:
    """What a reader gets from one read.

    `text` is the answer from the reader's position up to `end`. `outcome` is set once
    the generation has finished and `end` is the answer's final length; `html` is then
    the rendering of the whole answer.
    """

    text: str
    end: int
    outcome: Outcome | None = None
    html: str = ""
    # The reader's position lies beyond what the log holds: it cannot be honoured.
    beyond: bool = False


def _wake_once(waiter: asyncio.Future[None]) -> None:
    """Let a waiting reader go on; once only (a change and its timer may both come)."""
    if not waiter.done():
        waiter.set_result(None)


class Waker:
    """A one-shot signal that readers wait for with a timeout: one future and one timer
    per wait (lighter than asyncio.wait_for on an Event: no timeout context, no second
    coroutine)."""

    __slots__ = ("_waiting", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._waiting: list[asyncio.Future[None]] = []

    def set(self) -> None:
        self.is_set = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            _wake_once(waiter)

    async def wait(self, seconds: float) -> None:
        """Until set, or for `seconds`; no error either way."""
        if self.is_set:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        timer = loop.call_later(seconds, _wake_once, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if not self.is_set:
                self._waiting.remove(waiter)  # timed out (or cancelled): not left behind


class StreamLog(ABC):
    # Called with a message id when another process asks for a Stop (set by generation).
    cancel_handler: Callable[[UUID], object] | None = None

    """Append-only text per message, plus how it ended.

    Writers (the generation) call `open`, `append` any number of times, then `finish`.
    `append` never blocks: backends that write to a server batch in the background.
    Readers call `read` with the position they have, and get what follows, waiting up to
    `wait` seconds for it.
    """

    @abstractmethod
    def open(self, message_id: UUID) -> None: ...

    @abstractmethod
    def append(self, message_id: UUID, text: str) -> None: ...

    @abstractmethod
    async def finish(self, message_id: UUID, outcome: Outcome, html: str) -> None: ...

    @abstractmethod
    async def read(
        self, message_id: UUID, after: int, wait: float, *, expected: bool = False
    ) -> Chunk | None:
        """The text after position `after`, or None when the log does not know the message.

        Returns at once when there is text or an outcome; otherwise waits up to `wait` seconds
        and returns an empty chunk whose `end` equals `after`. With `expected` (the answer
        is running somewhere, says the database) a backend whose writes arrive later than
        the generation starts waits up to `wait` for the message to appear, too.
        """

    @abstractmethod
    async def idle_seconds(self, message_id: UUID) -> float:
        """Seconds since a reader last followed this message (about 0 while one reads)."""

    @abstractmethod
    def reading(self, message_id: UUID) -> AbstractAsyncContextManager[None]:
        """Count a reader as present for as long as the block runs (see abandon timeout)."""

    @abstractmethod
    async def check_available(self) -> None:
        """Raise LogUnavailable when the log cannot take a new generation now."""

    @abstractmethod
    async def broadcast_cancel(self, message_id: UUID) -> None:
        """Ask every process to cancel this generation (a no-op within one process)."""

    @abstractmethod
    async def expire(self, message_id: UUID) -> None:
        """End a finished message's retention now: readers then use the database.

        A message still being written is left alone.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the background work and close the connections of the running loop.

        Writes not yet sent are dropped. Servers never need this (they exit); tests,
        which run one event loop each, do.
        """


class LogUnavailable(Exception):
    """The stream log's server cannot be reached."""
