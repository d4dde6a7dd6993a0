"""The in-process stream log: append-only text per message, waiting readers, expiry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from chat.events import Outcome
from chat.streams import get_stream_log
from chat.streams.base import Waker
from chat.streams.memory import MemoryStreamLog
from chat.streams.redis import RedisStreamLog
from tests.helpers import eventually

DONE = Outcome("complete", "stop", 1, 2)


@pytest.fixture
def log() -> MemoryStreamLog:
    return MemoryStreamLog()


@pytest.fixture
def message_id() -> uuid.UUID:
    return uuid.uuid4()


def test_the_log_is_in_process_unless_redis_is_configured(settings: Any) -> None:
    settings.REDIS_URL = ""
    get_stream_log.cache_clear()
    assert isinstance(get_stream_log(), MemoryStreamLog)
    assert get_stream_log() is get_stream_log()  # one per process

    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    get_stream_log.cache_clear()
    assert isinstance(get_stream_log(), RedisStreamLog)
    get_stream_log.cache_clear()


async def test_an_unknown_message_is_none(log: MemoryStreamLog) -> None:
    assert await log.read(uuid.uuid4(), 0, 0) is None


async def test_reads_return_the_text_after_any_position(
    log: MemoryStreamLog, message_id: uuid.UUID
) -> None:
    log.open(message_id)
    for frame in ("Hello", ", ", "wörld 😀", "!"):
        log.append(message_id, frame)
    text = "Hello, wörld 😀!"

    for position in range(len(text) + 1):
        chunk = await log.read(message_id, position, 0)
        assert chunk is not None
        assert chunk.text == text[position:]
        assert chunk.end == len(text)
        assert chunk.outcome is None
        assert not chunk.beyond


async def test_empty_appends_are_ignored(log: MemoryStreamLog, message_id: uuid.UUID) -> None:
    log.open(message_id)
    log.append(message_id, "")
    log.append(message_id, "a")
    log.append(message_id, "")
    chunk = await log.read(message_id, 0, 0)
    assert chunk is not None and (chunk.text, chunk.end) == ("a", 1)


async def test_a_reader_at_the_end_waits_then_gets_an_empty_chunk(
    log: MemoryStreamLog, message_id: uuid.UUID
) -> None:
    log.open(message_id)
    log.append(message_id, "abc")
    loop = asyncio.get_running_loop()

    started = loop.time()
    chunk = await log.read(message_id, 3, 0.05)

    assert loop.time() - started >= 0.04
    assert chunk is not None
    assert (chunk.text, chunk.end, chunk.outcome, chunk.beyond) == ("", 3, None, False)


async def test_waiting_readers_wake_on_append(log: MemoryStreamLog, message_id: uuid.UUID) -> None:
    log.open(message_id)
    readers = [asyncio.create_task(log.read(message_id, 0, 5)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(reader.done() for reader in readers)

    log.append(message_id, "wake up")
    chunks = await asyncio.wait_for(asyncio.gather(*readers), 1)

    assert [(c.text, c.end) for c in chunks if c is not None] == [("wake up", 7)] * 3


async def test_waiting_readers_wake_on_finish(log: MemoryStreamLog, message_id: uuid.UUID) -> None:
    log.open(message_id)
    log.append(message_id, "all")
    reader = asyncio.create_task(log.read(message_id, 3, 5))
    await asyncio.sleep(0.01)

    await log.finish(message_id, DONE, "<p>all</p>")
    chunk = await asyncio.wait_for(reader, 1)

    assert chunk is not None
    assert (chunk.text, chunk.end, chunk.outcome, chunk.html) == ("", 3, DONE, "<p>all</p>")


async def test_a_finished_log_reports_its_outcome_and_ignores_late_appends(
    log: MemoryStreamLog, message_id: uuid.UUID
) -> None:
    log.open(message_id)
    log.append(message_id, "final text")
    await log.finish(message_id, DONE, "<p>final text</p>")
    log.append(message_id, " and more")

    chunk = await log.read(message_id, 6, 0)
    assert chunk is not None
    assert (chunk.text, chunk.end, chunk.outcome) == ("text", 10, DONE)
    # Past the end of a finished answer: nothing more, and no need for a reset.
    past = await log.read(message_id, 12, 0)
    assert past is not None
    assert (past.text, past.end, past.outcome, past.beyond) == ("", 10, DONE, False)


async def test_a_position_beyond_a_live_answer_is_flagged(
    log: MemoryStreamLog, message_id: uuid.UUID
) -> None:
    log.open(message_id)
    log.append(message_id, "short")

    chunk = await log.read(message_id, 99, 5)

    assert chunk is not None
    assert chunk.beyond
    assert chunk.end == 5


async def test_a_finished_stream_expires_after_the_retention(
    log: MemoryStreamLog, message_id: uuid.UUID, settings: Any
) -> None:
    settings.CHAT_LOG_RETENTION = 0.05
    log.open(message_id)
    log.append(message_id, "soon gone")
    await log.finish(message_id, DONE, "")
    assert await log.read(message_id, 0, 0) is not None

    async def expired() -> bool:
        return await log.read(message_id, 0, 0) is None

    await eventually(expired, timeout=2)


async def test_only_a_finished_stream_can_be_expired_at_once(
    log: MemoryStreamLog, message_id: uuid.UUID
) -> None:
    log.open(message_id)
    log.append(message_id, "still going")
    await log.expire(message_id)
    assert await log.read(message_id, 0, 0) is not None

    await log.finish(message_id, DONE, "")
    await log.expire(message_id)
    assert await log.read(message_id, 0, 0) is None


async def test_idle_time_counts_only_without_readers(
    log: MemoryStreamLog, message_id: uuid.UUID
) -> None:
    log.open(message_id)
    await asyncio.sleep(0.05)
    assert await log.idle_seconds(message_id) >= 0.04

    async with log.reading(message_id):
        assert await log.idle_seconds(message_id) == 0
        async with log.reading(message_id):
            assert await log.idle_seconds(message_id) == 0
        assert await log.idle_seconds(message_id) == 0  # one reader is still there
    assert await log.idle_seconds(message_id) < 0.04  # the clock restarted when the last left
    assert await log.idle_seconds(uuid.uuid4()) == 0.0


async def test_a_waker_lets_every_waiting_reader_go_and_forgets_those_that_gave_up() -> None:
    waker = Waker()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await waker.wait(0.05)  # nobody sets it: back after the time
    assert loop.time() - started >= 0.04
    assert not waker._waiting  # the reader that gave up left nothing behind

    readers = [asyncio.create_task(waker.wait(5)) for _ in range(3)]
    await asyncio.sleep(0.01)
    started = loop.time()
    waker.set()
    await asyncio.wait_for(asyncio.gather(*readers), 1)
    assert loop.time() - started < 0.5
    await asyncio.wait_for(waker.wait(5), 0.1)  # once set, a wait returns at once
