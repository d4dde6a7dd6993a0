"""The Redis stream log against a real Redis, and what a send does when Redis is down."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from chat.events import Outcome
from chat.models import Message
from chat.streams import get_stream_log
from chat.streams.redis import RedisStreamLog
from tests.helpers import ChatApi, eventually

REDIS = "redis://127.0.0.1:6379/0"
DONE = Outcome("complete", "stop", 3, 4)


def _redis_or_skip() -> None:
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis is needed: {error}")


@pytest.fixture
async def log() -> AsyncIterator[RedisStreamLog]:
    _redis_or_skip()
    prefix = f"chat-test-{secrets.token_hex(4)}:"
    log = RedisStreamLog(REDIS, prefix=prefix, retention=60, max_lifetime=60)
    yield log
    await log.aclose()
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


async def _flushed(log: RedisStreamLog, message_id: uuid.UUID, length: int) -> None:
    async def arrived() -> bool:
        chunk = await log.read(message_id, 0, 0)
        return chunk is not None and chunk.end >= length

    await eventually(arrived, timeout=3)


async def test_any_position_resumes_even_inside_a_frame(log: RedisStreamLog) -> None:
    message_id = uuid.uuid4()
    assert await log.read(message_id, 0, 0) is None  # unknown until opened
    log.open(message_id)
    for frame in ["Hello", ", wor", "ld ✨\r\n", "data: x"]:
        log.append(message_id, frame)
    whole = "Hello, world ✨\r\ndata: x"
    await _flushed(log, message_id, len(whole))

    for after in range(len(whole)):
        chunk = await log.read(message_id, after, 0)
        assert chunk is not None
        assert (chunk.text, chunk.end, chunk.outcome) == (whole[after:], len(whole), None)

    beyond = await log.read(message_id, len(whole) + 1, 0)
    assert beyond is not None and beyond.beyond

    await log.finish(message_id, DONE, "<p>html</p>")
    ended = await log.read(message_id, len(whole), 0)
    assert ended is not None
    assert (ended.text, ended.end, ended.outcome, ended.html) == (
        "",
        len(whole),
        DONE,
        "<p>html</p>",
    )
    # Past the text (the client saw `usage`), only the outcome remains.
    past = await log.read(message_id, len(whole) + 3, 0)
    assert past is not None and past.outcome == DONE and past.text == ""


async def test_only_a_finished_stream_can_be_expired_at_once(log: RedisStreamLog) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    log.append(message_id, "still going")
    await _flushed(log, message_id, len("still going"))
    await log.expire(message_id)
    assert await log.read(message_id, 0, 0) is not None

    await log.finish(message_id, DONE, "")
    await log.expire(message_id)
    assert await log.read(message_id, 0, 0) is None


async def test_a_waiting_reader_wakes_at_the_next_frame(log: RedisStreamLog) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    await _flushed(log, message_id, 0)
    waiting = asyncio.create_task(log.read(message_id, 0, 10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    started = asyncio.get_running_loop().time()
    log.append(message_id, "wake")
    chunk = await asyncio.wait_for(waiting, 2)
    assert chunk is not None and chunk.text == "wake"
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_a_following_reader_asks_redis_once_per_frame(
    log: RedisStreamLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader back for what follows the frame it just read waits for the next wake-up
    rather than asking Redis at once for a frame that is not there yet."""
    from redis.asyncio.client import Pipeline

    message_id = uuid.uuid4()
    log.open(message_id)
    await _flushed(log, message_id, 0)
    reads = 0
    execute = Pipeline.execute

    async def counted(self: Pipeline, raise_on_error: bool = True) -> Any:
        nonlocal reads
        reads += any(args[0] == "XRANGE" for args, _options in self.command_stack)
        return await execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", counted)

    async def follow() -> str:
        text, position = "", 0
        while len(text) < len("first-mid-last."):
            chunk = await log.read(message_id, position, 5)
            assert chunk is not None
            text, position = text + chunk.text, chunk.end
        return text

    reader = asyncio.create_task(follow())
    for frame in ("first", "-mid-", "last."):
        await asyncio.sleep(0.1)  # the reader has its frame and waits for the next
        log.append(message_id, frame)
    assert await asyncio.wait_for(reader, 3) == "first-mid-last."
    assert reads == 4  # one per frame, and the first, which found nothing yet


async def test_a_silent_read_returns_empty_after_its_wait(log: RedisStreamLog) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    await _flushed(log, message_id, 0)
    chunk = await log.read(message_id, 0, 0.2)
    assert chunk is not None and (chunk.text, chunk.end, chunk.outcome) == ("", 0, None)


async def test_stop_is_broadcast_to_the_handler(log: RedisStreamLog) -> None:
    received: list[uuid.UUID] = []
    log.cancel_handler = received.append
    message_id = uuid.uuid4()
    log.open(message_id)  # starts the subscription
    await _flushed(log, message_id, 0)
    await log.broadcast_cancel(message_id)
    await eventually(lambda: received == [message_id], timeout=3)


async def test_presence_of_a_reader_resets_the_idle_clock(log: RedisStreamLog) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    await asyncio.sleep(0.2)
    assert await log.idle_seconds(message_id) >= 0.2
    async with log.reading(message_id):
        await asyncio.sleep(0.05)
        assert await log.idle_seconds(message_id) == 0.0
        async with log.reading(message_id):
            await asyncio.sleep(0.05)
        assert await log.idle_seconds(message_id) == 0.0  # one reader is still there
    # The clock restarted when the last reader left, not when its mark would go stale.
    assert 0.0 < await log.idle_seconds(message_id) < 0.2


@pytest.mark.django_db(transaction=True)
async def test_a_send_fails_fast_with_503_when_redis_is_down(api: ChatApi, settings: Any) -> None:
    conversation = await api.create_conversation()
    configured = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    get_stream_log.cache_clear()
    try:
        response = await api.post(
            f"/api/conversations/{conversation['id']}/messages", {"content": "Hi"}
        )
    finally:
        await get_stream_log().aclose()
        settings.REDIS_URL = configured
        get_stream_log.cache_clear()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 0


@pytest.mark.django_db
def test_readiness_reports_redis(client: Any, settings: Any) -> None:
    _redis_or_skip()
    settings.REDIS_URL = REDIS
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["checks"] == {"database": True, "redis": True}
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["redis"] is False


async def test_a_reader_told_to_expect_an_answer_gets_its_first_text_as_it_is_written(
    log: RedisStreamLog,
) -> None:
    message_id = uuid.uuid4()
    # Unknown, and not expected: the reader learns it at once and asks the database.
    assert await log.read(message_id, 0, 2.0) is None

    loop = asyncio.get_running_loop()
    reading = asyncio.create_task(log.read(message_id, 0, 5.0, expected=True))
    await asyncio.sleep(0.1)
    assert not reading.done(), "an expected answer is waited for"
    written = loop.time()
    log.open(message_id)
    log.append(message_id, "First words")
    chunk = await asyncio.wait_for(reading, 2.0)

    assert chunk is not None and chunk.text == "First words"
    # Woken by the write itself, not by a later poll.
    assert loop.time() - written < 0.5
    await log.finish(message_id, Outcome("complete"), "")
