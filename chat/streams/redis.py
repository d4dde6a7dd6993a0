"""The Redis stream log: any process serves any reader and honours any Stop.

Each message is a Redis Stream whose entry ids are positions in the answer, as the
event ids are: a text frame ending at position E has id `E-0` and carries its start
`s` and text `t`; the opening entry is `0-1`; the outcome entry has id `L+3-0` (the
`final` event's id). A reader at position P asks for the entries after `P-0`, and the
first one it gets contains P, so any position resumes without the writer's help.

The process that runs a generation also keeps its frames in memory (an in-process log)
and serves its own readers from there: they cost Redis nothing. Writes never block the
generation: `append` queues the frame, and one background writer per process sends what
all its answers queued at most every `WRITE_TICK` seconds (at once when it was idle), an
answer's frames of one tick joined into one entry. A tick is one command: a Lua script
that adds every entry, sets the expiries and PUBLISHes the answers' ids to wake readers
in the other processes (one command rather than one per entry: the client's packing and
reply reading per command was most of the Redis log's CPU). Readers wait on a
per-process subscription, not on a blocking read per reader. Stop travels on a second
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast
from uuid import UUID, uuid4

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from chat.events import FINAL_OFFSET, Outcome
from chat.streams.base import Chunk, LogUnavailable, StreamLog, Waker
from chat.streams.memory import MemoryStreamLog

logger = logging.getLogger(__name__)

# A reader refreshes its presence this often; the generation counts it as reading while
# the mark is younger than twice that (a reader whose process died stops counting then).
PRESENCE_EVERY = 5.0
# The field of the presence hash that says when a reader last left; the others are
# readers' own marks.
LEFT = "left"
# Longest single wait for a wake-up; a missed one costs at most this much delay.
WAKE_SLICE = 5.0
# The writer's round trips are at least this far apart: under load, one carries the
# frames of every answer of the process. Readers in other processes see a frame at most
# this much later; the generating process's own readers, at once.
WRITE_TICK = 0.02
# While writes fail, the writer reports them at most this often (seconds).
FAILURES_EVERY = 10.0
# A send checks that Redis answers (a PING) unless the writer's last round trip, this
# recent, has shown it already.
PROVEN_FOR = 1.0

# One tick of the writer. KEYS are the entries' streams, in order; ARGV holds the wake-up
# channel and its message, and the entries as one JSON array of [id, expiry to set (0:
# none), [field, value, ...]] (one argument for all: the client packs each argument in
# Python). An entry Redis refuses (an id not above the stream's last, say) does not stop
# the others; the first refusal is returned.
WRITE_SCRIPT = """
local entries, refused = cjson.decode(ARGV[3]), false
for i = 1, #KEYS do
  local id, ttl, fields = entries[i][1], entries[i][2], entries[i][3]
  local added = redis.pcall('XADD', KEYS[i], id, unpack(fields))
  if type(added) == 'table' and added.err and not refused then
    refused = KEYS[i] .. ' ' .. id .. ': ' .. added.err
  end
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return refused
"""

# A read: the entries after a position (ARGV[1], an exclusive start) and, only when there
# are none, the stream's last entry (is it there, finished, shorter than the reader
# thinks?). One call, and one moment: a tick written between two commands could show an
# outcome whose text the first one missed.
READ_SCRIPT = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+')
if #entries > 0 then return {entries} end
return {entries, redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)}
"""

Fields = dict[FieldT, EncodableT]


@dataclasses.dataclass(slots=True)
class _Writing:
    """An answer this process generates, as its writer keeps it."""

    sid: str  # its id as keys and wake-ups spell it (a UUID's str() is not free)
    length: int = 0  # of its text so far


Op = tuple[str, str, Fields, asyncio.Future[None] | None]


class RedisStreamLog(StreamLog):
    def __init__(self, url: str, *, prefix: str, retention: float, max_lifetime: float) -> None:
        self._url = url
        self._prefix = prefix
        self._retention = int(retention)
        self._max_lifetime = int(max_lifetime)
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- Per-loop state --------------------------------------------------------------
    # redis-py's asyncio connections belong to the loop that made them; tests run one
    # loop per test, servers one loop per process.

    def _state(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._redis = aioredis.Redis.from_url(
            self._url, decode_responses=True, socket_timeout=10, socket_connect_timeout=2
        )
        self._write = self._redis.register_script(WRITE_SCRIPT)
        self._read = self._redis.register_script(READ_SCRIPT)
        # The answers this process generates, for its own readers.
        self._local = MemoryStreamLog()
        self._writing: dict[UUID, _Writing] = {}
        self._answered_at = float("-inf")  # when Redis last answered the writer
        self._ping: asyncio.Future[None] | None = None  # the one in flight, if any
        self._queue: list[Op] = []
        self._queued = asyncio.Event()
        self._wakers: dict[str, Waker] = {}
        # (message, position) -> the waker taken before the read that ended there.
        self._armed: dict[tuple[str, int], Waker] = {}
        # Empty contexts: these live as long as the process, and would otherwise keep a
        # copy of the context of the request that first used the log.
        self._writer = loop.create_task(self._write_forever(), context=contextvars.Context())
        self._listener = loop.create_task(self._listen_forever(), context=contextvars.Context())

    def _key(self, message_id: UUID | str) -> str:
        return f"{self._prefix}log:{message_id}"

    # --- Writing ---------------------------------------------------------------------

    def open(self, message_id: UUID) -> None:
        self._state()
        self._local.open(message_id)
        writing = self._writing[message_id] = _Writing(str(message_id))
        self._enqueue(writing.sid, "0-1", {"open": "1"})

    def append(self, message_id: UUID, text: str) -> None:
        if not text:
            return
        self._local.append(message_id, text)
        writing = self._writing[message_id]
        start = writing.length
        writing.length = end = start + len(text)
        self._enqueue(writing.sid, f"{end}-0", {"s": start, "t": text})

    async def finish(self, message_id: UUID, outcome: Outcome, html: str) -> None:
        writing = self._writing.pop(message_id, None) or _Writing(str(message_id))
        length = writing.length
        fields: Fields = {"o": json.dumps(dataclasses.asdict(outcome)), "h": html, "n": length}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(writing.sid, f"{length + FINAL_OFFSET}-0", fields, done)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, 5.0)
        # Last, as the in-process log does it: a reader given the end finds the
        # generation over, in every process.
        if self._local.holds(message_id):
            await self._local.finish(message_id, outcome, html)

    def _enqueue(
        self,
        message_id: str,
        entry_id: str,
        fields: Fields,
        done: asyncio.Future[None] | None = None,
    ) -> None:
        self._queue.append((message_id, entry_id, fields, done))
        self._queued.set()

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last = -WRITE_TICK
        failed, reported = 0, float("-inf")  # failed ticks since the last report
        while True:
            await self._queued.wait()
            pause = last + WRITE_TICK - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._queued.clear()
            ops, self._queue = _joined(self._queue), []
            last = loop.time()
            try:
                refused = await self._write(*self._tick(ops))
                self._answered_at = time.monotonic()
            except Exception:
                # Whatever failed, only this tick's entries are lost, and the writer goes
                # on: readers fall back to the database, which the generation keeps current.
                # While Redis is down that is every tick: one report per FAILURES_EVERY.
                failed += 1
                if last - reported >= FAILURES_EVERY:
                    logger.exception(
                        "stream log write failed for %d entries (%d failed writes since the "
                        "last report)",
                        len(ops),
                        failed,
                    )
                    failed, reported = 0, last
            else:
                if refused:
                    logger.error("stream log refused an entry: %s", refused)
            for *_, done in ops:
                if done is not None and not done.done():
                    done.set_result(None)

    def _tick(self, ops: list[Op]) -> tuple[list[str], list[EncodableT]]:
        """The write script's KEYS and ARGV for `ops`."""
        keys: list[str] = []
        entries: list[tuple[str, int, list[Any]]] = []
        woken: dict[str, None] = {}
        for message_id, entry_id, fields, done in ops:
            keys.append(self._key(message_id))
            if entry_id == "0-1":
                ttl = self._max_lifetime + self._retention
            elif done is not None:
                ttl = self._retention
            else:
                ttl = 0
            # Strings only: Lua would write a number as "12", but take no chances.
            flat = [str(part) for pair in fields.items() for part in pair]
            entries.append((entry_id, ttl, flat))
            woken[message_id] = None
        return keys, [f"{self._prefix}wake", " ".join(woken), orjson.dumps(entries)]

    # --- Wake-ups and Stop -----------------------------------------------------------

    async def _listen_forever(self) -> None:
        wake, cancel = f"{self._prefix}wake", f"{self._prefix}cancel"
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(wake, cancel)
                    async for item in pubsub.listen():
                        if item.get("type") != "message":
                            continue
                        if item["channel"] == wake:
                            if self._wakers:
                                for message_id in str(item["data"]).split():
                                    waker = self._wakers.pop(message_id, None)
                                    if waker is not None:
                                        waker.set()
                        elif self.cancel_handler is not None:
                            self.cancel_handler(UUID(str(item["data"])))
            except RedisError:
                logger.warning("stream log subscription lost; retrying", exc_info=True)
                # Wake every waiting reader: they re-read rather than miss a frame.
                for waker in self._wakers.values():
                    waker.set()
                self._wakers.clear()
                await asyncio.sleep(1.0)

    async def broadcast_cancel(self, message_id: UUID) -> None:
        self._state()
        await self._redis.publish(f"{self._prefix}cancel", str(message_id))

    async def check_available(self) -> None:
        self._state()
        if time.monotonic() - self._answered_at < PROVEN_FOR:
            return  # the writer's last round trip says it all, without one more
        # One ping answers for every send that asks while it is out: a burst of sends
        # would otherwise take a connection each, and wait for them all to be opened.
        if self._ping is None:
            self._ping = asyncio.ensure_future(self._ping_once())
        await asyncio.shield(self._ping)

    async def _ping_once(self) -> None:
        try:
            await asyncio.wait_for(self._redis.ping(), 2.0)
        except (RedisError, OSError, TimeoutError) as error:
            raise LogUnavailable(str(error)) from error
        finally:
            self._ping = None
        self._answered_at = time.monotonic()

    async def expire(self, message_id: UUID) -> None:
        self._state()
        await self._local.expire(message_id)
        key = self._key(message_id)
        last = await self._redis.xrevrange(key, "+", "-", count=1)
        if last and "o" in (last[0][1] or {}):
            await self._redis.delete(key)

    async def aclose(self) -> None:
        if self._loop is None or self._loop is not asyncio.get_running_loop():
            return
        self._loop = None
        for task in (self._writer, self._listener):
            task.cancel()
        await asyncio.gather(self._writer, self._listener, return_exceptions=True)
        await self._redis.aclose()

    # --- Reading ---------------------------------------------------------------------

    async def read(
        self, message_id: UUID, after: int, wait: float, *, expected: bool = False
    ) -> Chunk | None:
        self._state()
        if self._local.holds(message_id):
            local = await self._local.read(message_id, after, wait, expected=expected)
            if local is not None:
                return local
        key = self._key(message_id)
        deadline = time.monotonic() + wait
        # A reader comes back for what follows the text it just read. While the waker taken
        # before that read is unset, nothing was written since: wait for a wake-up before
        # asking Redis, so that a frame costs its reader one round trip, not two.
        armed = self._armed.pop((str(message_id), after), None)
        if armed is not None and wait > 0:
            await armed.wait(min(wait, WAKE_SLICE))
        while True:
            # Take the waker before reading, so a frame written meanwhile still wakes us.
            waker = self._wakers.get(str(message_id))
            if waker is None:
                waker = self._wakers[str(message_id)] = Waker()
            try:
                # From `(after-1`: past the opening entry (`0-1`) and every entry that ends
                # at or before `after`; the first one left contains `after`.
                found = await self._read([key], [f"({after}-1"])
            except RedisError:
                logger.warning("stream log read failed; using the database", exc_info=True)
                return None
            remaining = deadline - time.monotonic()
            entries = [_entry(entry) for entry in found[0]]
            last = _entry(found[1][0]) if len(found) > 1 and found[1] else None
            if not entries and last is None:
                # Not written yet (its generation's first write is on its way, and wakes
                # us), or gone. Only the caller knows which.
                if not expected or remaining <= 0:
                    return None
                await waker.wait(min(remaining, WAKE_SLICE))
                continue
            chunk = _chunk(entries, last, after)
            if chunk is not None:
                if chunk.text and chunk.outcome is None:
                    if len(self._armed) >= 4096:  # readers that left never come back for theirs
                        del self._armed[next(iter(self._armed))]
                    self._armed[str(message_id), chunk.end] = waker
                return chunk
            if remaining <= 0:
                return Chunk("", after)
            await waker.wait(min(remaining, WAKE_SLICE))

    # --- Presence ----------------------------------------------------------------------

    # Each reader, in any process, keeps its own field of one hash per message fresh, and
    # deletes it when it leaves, writing the time it left: the idle clock then starts at
    # the last departure, exactly as the in-process count does.

    async def idle_seconds(self, message_id: UUID) -> float:
        self._state()
        # The generation asks where it runs: this process's readers are counted in
        # memory (their clock starts at its open, or at the last one's departure), the
        # other processes' ones by their marks.
        here = await self._local.idle_seconds(message_id)
        if self._local.holds(message_id) and not here:
            return 0.0
        try:
            marks = await self._redis.hgetall(self._presence_key(message_id))
        except RedisError:
            return 0.0  # unknown: never abandon on a Redis hiccup
        now = time.time()
        left = float(marks.pop(LEFT, 0.0))
        seen = [float(mark) for mark in marks.values()]
        if any(now - mark < 2 * PRESENCE_EVERY for mark in seen):
            return 0.0
        last = max([left, *seen])
        if self._local.holds(message_id):
            return min(now - last, here) if last else here
        return now - last if last else 0.0

    @contextlib.asynccontextmanager
    async def reading(self, message_id: UUID) -> AsyncIterator[None]:
        self._state()
        if self._local.holds(message_id):
            # Its generation runs in this process and looks here first.
            async with self._local.reading(message_id):
                yield
            return
        key = self._presence_key(message_id)
        reader = uuid4().hex

        async def mark(field: str, *, leave: bool = False) -> None:
            with contextlib.suppress(RedisError):
                async with self._redis.pipeline(transaction=True) as pipe:
                    if leave:
                        pipe.hdel(key, reader)
                    pipe.hset(key, field, str(time.time()))
                    pipe.expire(key, self._max_lifetime)
                    await pipe.execute()

        async def keep_marking() -> None:
            while True:
                await mark(reader)
                await asyncio.sleep(PRESENCE_EVERY)

        task = asyncio.get_running_loop().create_task(keep_marking())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.shield(mark(LEFT, leave=True))

    def _presence_key(self, message_id: UUID) -> str:
        return f"{self._prefix}seen:{message_id}"


def _joined(ops: list[Op]) -> list[Op]:
    """The queue with each run of an answer's text frames joined into one entry.

    An entry says where its text starts, and a reader resumes inside any entry: the
    joined frame serves every position its parts did.
    """
    out: list[Op] = []
    tails: dict[str, int] = {}  # message -> index in `out` of its last text frame
    for op in ops:
        message_id, entry_id, fields, _ = op
        index = tails.get(message_id)
        if "t" in fields and index is not None:
            _, _, head, _ = out[index]
            text = cast(str, head["t"]) + cast(str, fields["t"])  # queued by `append`
            joined: Fields = {"s": head["s"], "t": text}
            out[index] = (message_id, entry_id, joined, None)
            continue
        tails.pop(message_id, None)
        if "t" in fields:
            tails[message_id] = len(out)
        out.append(op)
    return out


def _entry(raw: list[Any]) -> tuple[str, dict[str, str]]:
    """An entry as a script returns it, `[id, [field, value, ...]]`: its id and fields."""
    entry_id, flat = raw
    return entry_id, dict(zip(flat[::2], flat[1::2], strict=True))


def _outcome(fields: dict[str, str]) -> tuple[Outcome, str, int]:
    """The outcome entry's outcome, the answer's HTML and its length."""
    return Outcome(**json.loads(fields["o"])), fields["h"], int(fields["n"])


def _chunk(
    entries: list[tuple[str, dict[str, str]]], last: tuple[str, dict[str, str]] | None, after: int
) -> Chunk | None:
    """The chunk after `after`, from the entries that end past it or, when there are none,
    from the stream's last entry; None to wait for more."""
    parts = []
    end = after
    outcome: Outcome | None = None
    html = ""
    for entry_id, fields in entries:
        if "t" in fields:
            start = int(fields["s"])
            parts.append(fields["t"][max(after - start, 0) :])
            end = int(entry_id.split("-")[0])
        elif "o" in fields:
            outcome, html, end = _outcome(fields)
    if parts or outcome is not None:
        return Chunk("".join(parts), end, outcome, html)
    if last is None:
        return None
    last_id, last_fields = last
    if "o" in last_fields:
        # Finished, and the reader is past the text: the outcome is all there is.
        outcome, html, end = _outcome(last_fields)
        return Chunk("", end, outcome, html)
    length = int(last_id.split("-")[0])
    if after > length:
        return Chunk("", length, beyond=True)
    return None
