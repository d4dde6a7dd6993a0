"""The Redis stream log against a real Redis, and what a send does when Redis is down."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from chat.events import Outcome
from chat.models import Message
from chat.streams import get_stream_log
from chat.streams.base import LogUnavailable
from chat.streams.redis import READ_SCRIPT, WRITE_SCRIPT, RedisStreamLog
from tests.helpers import ChatApi, eventually

REDIS = "redis://127.0.0.1:6379/0"
DONE = Outcome("complete", "stop", 3, 4)


def _redis_or_skip() -> None:
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis is needed: {error}")


@pytest.fixture
def prefix() -> Iterator[str]:
    _redis_or_skip()
    prefix = f"chat-test-{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@pytest.fixture
async def log(prefix: str) -> AsyncIterator[RedisStreamLog]:
    """The log as the process that runs the generations sees it."""
    log = RedisStreamLog(REDIS, prefix=prefix, retention=60, max_lifetime=60)
    yield log
    await log.aclose()


@pytest.fixture
async def other(prefix: str) -> AsyncIterator[RedisStreamLog]:
    """The same log as another process sees it: everything it reads comes from Redis."""
    log = RedisStreamLog(REDIS, prefix=prefix, retention=60, max_lifetime=60)
    yield log
    await log.aclose()


class RedisCalls:
    """Counts the commands sent to Redis, by name, pipelined or not; the log's scripts as
    `log write` and `log read`."""

    SCRIPTS = {
        hashlib.sha1(WRITE_SCRIPT.encode(), usedforsecurity=False).hexdigest(): "log write",
        hashlib.sha1(READ_SCRIPT.encode(), usedforsecurity=False).hexdigest(): "log read",
    }

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.client import Pipeline, Redis

        self.commands: list[str] = []
        self.round_trips = 0
        execute, command = Pipeline.execute, Redis.execute_command

        async def counted_execute(pipe: Pipeline, raise_on_error: bool = True) -> Any:
            self.round_trips += 1
            self.commands += [str(args[0]) for args, _options in pipe.command_stack]
            return await execute(pipe, raise_on_error)

        async def counted_command(client: Redis, *args: Any, **options: Any) -> Any:
            self.round_trips += 1
            name = self.SCRIPTS.get(args[1], "EVALSHA") if args[0] == "EVALSHA" else args[0]
            self.commands.append(str(name))
            return await command(client, *args, **options)

        monkeypatch.setattr(Pipeline, "execute", counted_execute)
        monkeypatch.setattr(Redis, "execute_command", counted_command)

    def count(self, name: str) -> int:
        return self.commands.count(name)


def _entries(prefix: str, message_id: uuid.UUID) -> int:
    """How many entries the message's stream holds in Redis."""
    return int(redis.Redis.from_url(REDIS).xlen(f"{prefix}log:{message_id}"))


async def _opened(log: RedisStreamLog, other: RedisStreamLog) -> uuid.UUID:
    """A new answer's stream, opened by `log` and seen by `other` in Redis."""
    message_id = uuid.uuid4()
    log.open(message_id)
    await _flushed(other, message_id, 0)
    return message_id


async def _flushed(log: RedisStreamLog, message_id: uuid.UUID, length: int) -> None:
    async def arrived() -> bool:
        chunk = await log.read(message_id, 0, 0)
        return chunk is not None and chunk.end >= length

    await eventually(arrived, timeout=3)


@pytest.mark.parametrize("where", ["generating process", "other process"])
async def test_any_position_resumes_even_inside_a_frame(
    log: RedisStreamLog, other: RedisStreamLog, where: str
) -> None:
    reader = log if where == "generating process" else other
    message_id = uuid.uuid4()
    assert await reader.read(message_id, 0, 0) is None  # unknown until opened
    log.open(message_id)
    for frame in ["Hello", ", wor", "ld ✨\r\n", "data: x"]:
        log.append(message_id, frame)
    whole = "Hello, world ✨\r\ndata: x"
    await _flushed(reader, message_id, len(whole))

    for after in range(len(whole)):
        chunk = await reader.read(message_id, after, 0)
        assert chunk is not None
        assert (chunk.text, chunk.end, chunk.outcome) == (whole[after:], len(whole), None)

    beyond = await reader.read(message_id, len(whole) + 1, 0)
    assert beyond is not None and beyond.beyond

    await log.finish(message_id, DONE, "<p>html</p>")
    ended = await reader.read(message_id, len(whole), 0)
    assert ended is not None
    assert (ended.text, ended.end, ended.outcome, ended.html) == (
        "",
        len(whole),
        DONE,
        "<p>html</p>",
    )
    # Past the text (the client saw `usage`), only the outcome remains.
    past = await reader.read(message_id, len(whole) + 3, 0)
    assert past is not None and past.outcome == DONE and past.text == ""


async def test_only_a_finished_stream_can_be_expired_at_once(
    log: RedisStreamLog, other: RedisStreamLog
) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    log.append(message_id, "still going")
    await _flushed(other, message_id, len("still going"))
    await log.expire(message_id)
    assert await log.read(message_id, 0, 0) is not None
    assert await other.read(message_id, 0, 0) is not None

    await log.finish(message_id, DONE, "")
    await log.expire(message_id)
    assert await log.read(message_id, 0, 0) is None
    assert await other.read(message_id, 0, 0) is None


async def test_a_waiting_reader_wakes_at_the_next_frame(
    log: RedisStreamLog, other: RedisStreamLog
) -> None:
    message_id = await _opened(log, other)
    waiting = asyncio.create_task(other.read(message_id, 0, 10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    started = asyncio.get_running_loop().time()
    log.append(message_id, "wake")
    chunk = await asyncio.wait_for(waiting, 2)
    assert chunk is not None and chunk.text == "wake"
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_a_following_reader_asks_redis_once_per_frame(
    log: RedisStreamLog, other: RedisStreamLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader in another process, back for what follows the frame it just read, waits
    for the next wake-up rather than asking Redis at once for a frame not there yet."""
    message_id = await _opened(log, other)
    calls = RedisCalls(monkeypatch)

    async def follow() -> str:
        text, position = "", 0
        while len(text) < len("first-mid-last."):
            chunk = await other.read(message_id, position, 5)
            assert chunk is not None
            text, position = text + chunk.text, chunk.end
        return text

    reader = asyncio.create_task(follow())
    for frame in ("first", "-mid-", "last."):
        await asyncio.sleep(0.1)  # the reader has its frame and waits for the next
        log.append(message_id, frame)
    assert await asyncio.wait_for(reader, 3) == "first-mid-last."
    # One read per frame, and the first, which found nothing yet.
    assert calls.count("log read") == 4


@pytest.mark.parametrize("where", ["generating process", "other process"])
async def test_a_silent_read_returns_empty_after_its_wait(
    log: RedisStreamLog, other: RedisStreamLog, where: str
) -> None:
    reader = log if where == "generating process" else other
    message_id = uuid.uuid4()
    log.open(message_id)
    await _flushed(reader, message_id, 0)
    chunk = await reader.read(message_id, 0, 0.2)
    assert chunk is not None and (chunk.text, chunk.end, chunk.outcome) == ("", 0, None)


async def test_stop_is_broadcast_to_the_handler(log: RedisStreamLog, other: RedisStreamLog) -> None:
    received: list[uuid.UUID] = []
    log.cancel_handler = received.append
    message_id = uuid.uuid4()
    log.open(message_id)  # starts the subscription
    await _flushed(other, message_id, 0)
    await other.broadcast_cancel(message_id)
    await eventually(lambda: received == [message_id], timeout=3)


@pytest.mark.parametrize("where", ["generating process", "other process"])
async def test_presence_of_a_reader_resets_the_idle_clock(
    log: RedisStreamLog, other: RedisStreamLog, where: str
) -> None:
    reader = log if where == "generating process" else other
    message_id = await _opened(log, other)
    await asyncio.sleep(0.2)
    assert await log.idle_seconds(message_id) >= 0.2
    async with reader.reading(message_id):
        await asyncio.sleep(0.05)
        assert await log.idle_seconds(message_id) == 0.0
        async with reader.reading(message_id):
            await asyncio.sleep(0.05)
        assert await log.idle_seconds(message_id) == 0.0  # one reader is still there
    # The clock restarted when the last reader left, not when its mark would go stale.
    assert 0.0 < await log.idle_seconds(message_id) < 0.2


async def test_readers_in_the_generating_process_cost_redis_nothing(
    log: RedisStreamLog, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    await _flushed(log, message_id, 0)
    calls = RedisCalls(monkeypatch)
    frames = [f"word{i} " for i in range(20)]

    async def follow() -> str:
        text, position = "", 0
        async with log.reading(message_id):
            while True:
                chunk = await log.read(message_id, position, 5)
                assert chunk is not None
                text, position = text + chunk.text, chunk.end
                # The generation's check for readers (once a flush interval) too.
                assert await log.idle_seconds(message_id) == 0.0
                if chunk.outcome is not None:
                    return text

    reader = asyncio.create_task(follow())
    for frame in frames:
        await asyncio.sleep(0.005)
        log.append(message_id, frame)
    await log.finish(message_id, DONE, "")
    assert await asyncio.wait_for(reader, 3) == "".join(frames)
    reads = ("log read", "XRANGE", "XREVRANGE", "XREAD", "HSET", "HDEL", "HGETALL")
    assert [name for name in calls.commands if name in reads] == []
    # The writer still keeps Redis current for the other processes: the opening entry,
    # the text in fewer entries than frames (one per tick), then the outcome.
    assert 3 <= _entries(prefix, message_id) < len(frames) + 2
    assert 1 <= calls.count("log write") < len(frames)


async def test_a_tick_of_frames_is_one_round_trip_for_every_answer(
    log: RedisStreamLog, other: RedisStreamLog, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [uuid.uuid4() for _ in range(3)]
    for message_id in answers:
        log.open(message_id)
    for message_id in answers:
        await _flushed(other, message_id, 0)
    calls = RedisCalls(monkeypatch)
    for i in range(50):
        for message_id in answers:
            log.append(message_id, f"{i},")
    whole = "".join(f"{i}," for i in range(50))
    for message_id in answers:
        await _flushed(other, message_id, len(whole))
        chunk = await other.read(message_id, 7, 0)  # inside the joined entry
        assert chunk is not None and chunk.text == whole[7:]
    # One command for 150 frames: an entry per answer (after its opening one), and the
    # wake-up for all three in it.
    assert calls.count("log write") == 1
    assert [_entries(prefix, message_id) for message_id in answers] == [2, 2, 2]


async def test_any_text_reaches_the_other_processes_as_it_was_written(
    log: RedisStreamLog, other: RedisStreamLog
) -> None:
    message_id = uuid.uuid4()
    log.open(message_id)
    frames = ['"quoted" \\ back', "\n\ttabs\r\n", "é 漢字 😀", "\x01\x1f\u2028", "[1, {}]", " "]
    for frame in frames:
        log.append(message_id, frame)
        await asyncio.sleep(0.03)  # a tick each, most of them
    html = "<p>café</p>"
    await log.finish(message_id, DONE, html)
    chunk = await other.read(message_id, 0, 0)
    assert chunk is not None
    assert (chunk.text, chunk.outcome, chunk.html) == ("".join(frames), DONE, html)


async def test_the_writer_goes_on_after_redis_forgets_its_script(
    log: RedisStreamLog, other: RedisStreamLog
) -> None:
    """A restarted Redis (or SCRIPT FLUSH) knows no scripts: the writer loads its own again."""
    message_id = await _opened(log, other)
    redis.Redis.from_url(REDIS).script_flush()
    log.append(message_id, "after the flush")
    await _flushed(other, message_id, len("after the flush"))


async def test_a_writer_without_redis_reports_its_failures_not_each_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RedisStreamLog("redis://127.0.0.1:1/0", prefix="nowhere:", retention=60, max_lifetime=60)
    try:
        message_id = uuid.uuid4()
        log.open(message_id)
        for word in ("one ", "two ", "three ", "four "):
            await asyncio.sleep(0.05)  # a tick, and a failed write, each
            log.append(message_id, word)
        await log.finish(message_id, DONE, "")
        # Its own readers never needed Redis.
        chunk = await log.read(message_id, 0, 0)
        assert chunk is not None and chunk.text == "one two three four "
    finally:
        await log.aclose()
    reports = [r for r in caplog.records if "stream log write failed" in r.getMessage()]
    assert len(reports) == 1 and reports[0].exc_info is not None


async def test_an_entry_redis_refuses_is_logged_and_the_rest_of_the_tick_written(
    log: RedisStreamLog, other: RedisStreamLog, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    spoiled, fine = uuid.uuid4(), uuid.uuid4()
    for message_id in (spoiled, fine):
        log.open(message_id)
        await _flushed(other, message_id, 0)
    # An entry far ahead: the next frame's id is not above the stream's last one.
    redis.Redis.from_url(REDIS).xadd(f"{prefix}log:{spoiled}", {"s": 0, "t": "x"}, id="999-0")
    log.append(spoiled, "lost")
    log.append(fine, "kept")
    await _flushed(other, fine, 4)
    assert _entries(prefix, spoiled) == 2
    assert any(
        "stream log refused an entry" in record.getMessage() and str(spoiled) in record.getMessage()
        for record in caplog.records
    )


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
    log: RedisStreamLog, other: RedisStreamLog
) -> None:
    message_id = uuid.uuid4()
    # Unknown, and not expected: the reader learns it at once and asks the database.
    assert await other.read(message_id, 0, 2.0) is None

    loop = asyncio.get_running_loop()
    reading = asyncio.create_task(other.read(message_id, 0, 5.0, expected=True))
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


async def test_sends_at_once_share_one_ping(
    log: RedisStreamLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = RedisCalls(monkeypatch)
    await asyncio.gather(*(log.check_available() for _ in range(50)))
    assert calls.count("PING") == 1


async def test_sends_at_once_all_hear_that_redis_is_down() -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    log = RedisStreamLog(
        f"redis://127.0.0.1:{port}/0", prefix="chat-test-down:", retention=60, max_lifetime=60
    )
    try:
        results = await asyncio.gather(
            *(log.check_available() for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, LogUnavailable) for result in results), results
        # Asked again later, it asks Redis again (a failure is not remembered).
        with pytest.raises(LogUnavailable):
            await log.check_available()
    finally:
        await log.aclose()


async def test_a_send_pings_redis_only_when_no_write_has_just_shown_it_answers(
    log: RedisStreamLog, other: RedisStreamLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chat.streams.redis.PROVEN_FOR", 0.3)
    calls = RedisCalls(monkeypatch)
    await log.check_available()
    assert calls.count("PING") == 1  # nothing written yet: it asks
    await asyncio.sleep(0.4)  # and that answer is stale now

    await _opened(log, other)  # a write, just now
    await log.check_available()
    await log.check_available()
    assert calls.count("PING") == 1  # the write a moment ago answered for it
