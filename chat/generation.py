"""The generation task: run a provider, coalesce its deltas into frames, log and flush.

A generation belongs to no HTTP connection. It is started once its message is committed,
writes frames to the stream log, saves its text to the database on a timer, and always
ends by recording exactly one terminal status, whatever happens to it.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Literal

from django.conf import settings

from chat import metrics, services
from chat.db import release_connections
from chat.events import Outcome
from chat.logs import log_event
from chat.models import Message
from chat.providers.base import Finish, ProviderError, TextDelta, Usage
from chat.providers.registry import model_choice, provider_for
from chat.rendering import render_markdown
from chat.streams import LogUnavailable, get_stream_log
from chat.titles import title_start

logger = logging.getLogger(__name__)

CancelReason = Literal["stopped", "interrupted"]

# Generations write from their own small pool: Django's shared thread-sensitive thread
# would serialise every stream's writes behind request work.
_db_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chat-db")

_running: dict[uuid.UUID, Generation] = {}


def _closing[**P, R](fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return fn(*args, **kwargs)
    finally:
        # Outside the request cycle nobody else closes this thread's connection. The
        # pool's few threads keep SQLite's open: a flush would otherwise reopen the file.
        release_connections(keep_sqlite=True)


async def run_db[**P, R](fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_pool, partial(_closing, fn, *args, **kwargs))


def is_running(message_id: uuid.UUID) -> bool:
    return message_id in _running


# --- Flushing ---------------------------------------------------------------------------
# One timer per event loop saves the text and heartbeat of every running generation of
# this process together, in one statement run for each (services.message_flush_many):
# a write of its own per generation per second, each a thread hop and a commit, made the
# database the bottleneck past ~80 streams on one core. The rows written are the same.

_flushing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FlushTimer] = (
    weakref.WeakKeyDictionary()
)


class _FlushTimer:
    def __init__(self) -> None:
        self.generations: set[Generation] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, generation: Generation) -> None:
        self.generations.add(generation)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), context=contextvars.Context())

    async def _run(self) -> None:
        while self.generations:
            await asyncio.sleep(settings.CHAT_FLUSH_INTERVAL)
            # An answer younger than one interval waits for the next tick: each is
            # saved at most once per interval of its life, wherever the ticks fall.
            born_before = time.monotonic() - settings.CHAT_FLUSH_INTERVAL
            due = [g for g in self.generations if not g.finishing and g.started <= born_before]
            if due:
                await self._flush(due)
                await self._abandon_unread(due)

    async def _flush(self, generations: list[Generation]) -> None:
        flushes = [g.flush_state() for g in generations]
        try:
            await run_db(services.message_flush_many, flushes=flushes)
        except Exception:
            # A missed flush costs only freshness; the final write carries all.
            log_event(
                logger,
                "generation_flush_failed",
                level=logging.ERROR,
                exc_info=True,
                messages=len(flushes),
            )

    async def _abandon_unread(self, generations: list[Generation]) -> None:
        """Stop the answers that nobody has read for CHAT_ABANDON_AFTER (the flush has
        just saved their text). Here rather than in a task per answer: one less task and
        timer for every open stream."""
        abandon_after = settings.CHAT_ABANDON_AFTER
        if not abandon_after:
            return
        idle = await asyncio.gather(
            *(g.idle_seconds() for g in generations), return_exceptions=True
        )
        for generation, seconds in zip(generations, idle, strict=True):
            if isinstance(seconds, BaseException):
                # Unknown: never abandon on a failed look (it is tried again next tick).
                log_event(
                    logger,
                    "generation_idle_check_failed",
                    level=logging.ERROR,
                    exc_info=seconds,
                    message_id=generation.message_id,
                )
            elif seconds > abandon_after:
                log_event(logger, "generation_abandoned", message_id=generation.message_id)
                generation.cancel("interrupted")


def _flush_timer() -> _FlushTimer:
    loop = asyncio.get_running_loop()
    timer = _flushing.get(loop)
    if timer is None:
        timer = _flushing[loop] = _FlushTimer()
    return timer


def generation_start(plan: services.GenerationPlan) -> Generation:
    """Start the generation of a committed `streaming` message on the running loop."""
    generation = Generation(plan)
    log = get_stream_log()
    log.cancel_handler = generation_cancel  # a Stop said to another process reaches us
    log.open(plan.message_id)
    _running[plan.message_id] = generation
    # A fresh context: the request's context (and its thread-sensitive executor) ends
    # with the request, while the generation goes on. The same for the callback, which
    # would otherwise keep a copy of the request's context as long as the answer runs:
    # its database and cache connections (a Redis one holds a 64 KiB read buffer).
    generation.task = asyncio.create_task(generation.run(), context=contextvars.Context())
    generation.task.add_done_callback(
        lambda _task: _running.pop(plan.message_id, None), context=contextvars.Context()
    )
    return generation


def generation_cancel(message_id: uuid.UUID, reason: CancelReason = "stopped") -> bool:
    """Cancel a generation running in this process; False when there is none here."""
    generation = _running.get(message_id)
    if generation is None:
        return False
    generation.cancel(reason)
    return True


async def generation_stop(message_id: uuid.UUID, seconds: float) -> bool:
    """Stop a generation wherever it runs; wait (at most `seconds`) if it runs here.

    Returns False when it does not run in this process: the Stop was broadcast, and the
    process that runs it (if any) records the end.
    """
    if generation_cancel(message_id, "stopped"):
        await generation_wait(message_id, seconds)
        return True
    await get_stream_log().broadcast_cancel(message_id)
    return False


async def generation_ready() -> None:
    """Refuse a new answer up front when it could not be delivered (its log is down)."""
    try:
        await get_stream_log().check_available()
    except LogUnavailable:
        raise services.Unavailable(
            "The server cannot stream answers right now; try again shortly."
        ) from None


async def answer_stop(message_id: uuid.UUID, seconds: float) -> None:
    """Stop an answer wherever it runs, waiting (at most `seconds`) for its recorded end."""
    if await generation_stop(message_id, seconds):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await run_db(services.message_status, message_id=message_id) != Message.Status.STREAMING:
            return
        await asyncio.sleep(0.05)
    # A generation's log stays open from its start to its end, in every process's view:
    # a log that does not know the answer, or knows its end, means nobody is writing it.
    written = await get_stream_log().read(message_id, 0, 0)
    if written is None or written.outcome is not None:
        await run_db(
            services.message_end_orphan, message_id=message_id, status=Message.Status.STOPPED
        )


async def generation_wait(message_id: uuid.UUID, seconds: float) -> None:
    """Wait (at most `seconds`) for a generation of this process to record its end."""
    generation = _running.get(message_id)
    if generation is not None and generation.task is not None:
        await asyncio.wait([generation.task], timeout=seconds)


class Generation:
    def __init__(self, plan: services.GenerationPlan) -> None:
        self.plan = plan
        self.message_id = plan.message_id
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: CancelReason | None = None
        self._log = get_stream_log()
        self._parts: list[str] = []
        self._length = 0
        self._flushed_length = 0
        self._pending: list[str] = []
        self._last_frame = float("-inf")
        self._frame_interval: float = settings.CHAT_FRAME_INTERVAL  # read at every delta
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._ttft_ms: int | None = None
        self._finishing = False

    def cancel(self, reason: CancelReason) -> None:
        # Once the answer is being recorded, a late Stop has nothing left to stop.
        if self.task is None or self._finishing or self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        # A task cancelled before its first step would never run its own clean-up;
        # one that has not started yet sees the reason and ends at once instead.
        if self._started:
            self.task.cancel()

    # --- Frames ---------------------------------------------------------------------

    def _add(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        if self._ttft_ms is None:
            self._ttft_ms = int((time.monotonic() - self._started) * 1000)
        if "\x00" in text:
            # PostgreSQL cannot store NUL in text; replace it before anyone reads it, so
            # the log and the database always hold the same answer.
            text = text.replace("\x00", "\ufffd")
        self._pending.append(text)
        if loop.time() - self._last_frame >= self._frame_interval:
            self._emit()
        elif self._timer is None:
            self._timer = loop.call_at(self._last_frame + self._frame_interval, self._emit)

    def _emit(self) -> None:
        """Append everything pending as one frame. The first delta goes out at once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        frame = "".join(self._pending)
        self._pending.clear()
        self._parts.append(frame)
        self._length += len(frame)
        self._log.append(self.message_id, frame)
        metrics.CHARS_RELAYED.inc(len(frame))
        self._last_frame = asyncio.get_running_loop().time()

    def _content(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    # --- The task -------------------------------------------------------------------

    async def run(self) -> None:
        self._started = time.monotonic()
        metrics.STREAMS_STARTED.labels(self.plan.model).inc()
        metrics.STREAMS_ACTIVE.inc()
        flusher = _flush_timer()
        flusher.add(self)
        try:
            outcome = await self._generate()
        finally:
            metrics.STREAMS_ACTIVE.dec()
            flusher.generations.discard(self)
        self._finishing = True
        self._emit()
        content = self._content()
        duration_ms = int((time.monotonic() - self._started) * 1000)
        outcome = dataclasses.replace(outcome, ttft_ms=self._ttft_ms, duration_ms=duration_ms)
        try:
            await run_db(
                services.message_finish,
                message_id=self.message_id,
                content=content,
                outcome=outcome,
                ttft_ms=self._ttft_ms,
                duration_ms=duration_ms,
            )
        finally:
            await self._log.finish(self.message_id, outcome, render_markdown(content))
        self._record_metrics(outcome, duration_ms)
        if outcome.status == Message.Status.COMPLETE:
            title_start(self.plan, content)  # a task of its own; the answer is done
        log_event(
            logger,
            "generation_end",
            message_id=self.message_id,
            user_id=self.plan.user_id,
            model=self.plan.model,
            status=outcome.status,
            finish_reason=outcome.finish_reason,
            error_code=outcome.error_code,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            ttft_ms=self._ttft_ms,
            duration_ms=duration_ms,
            chars=len(content),
        )

    def _cancel_reason(self) -> CancelReason | None:
        return self.cancel_reason

    def _record_metrics(self, outcome: Outcome, duration_ms: int) -> None:
        model = self.plan.model
        metrics.STREAMS_FINISHED.labels(model, outcome.status).inc()
        metrics.STREAM_SECONDS.labels(model, outcome.status).observe(duration_ms / 1000)
        if self._ttft_ms is not None:
            metrics.TTFT_SECONDS.labels(model).observe(self._ttft_ms / 1000)
        if outcome.completion_tokens:
            metrics.TOKENS_RELAYED.labels(model).inc(outcome.completion_tokens)
        if outcome.error_code:
            metrics.PROVIDER_ERRORS.labels(outcome.error_code).inc()

    async def _generate(self) -> Outcome:
        log_event(
            logger,
            "generation_start",
            message_id=self.message_id,
            user_id=self.plan.user_id,
            model=self.plan.model,
        )
        usage = Usage(None, None)
        finish_reason = ""
        if self.cancel_reason is not None:
            return Outcome(self.cancel_reason, self.cancel_reason)
        try:
            choice = model_choice(self.plan.model)
            if choice is None:
                raise ProviderError("internal", f"The model {self.plan.model!r} is not available.")
            stream = provider_for(choice).stream(self.plan.request)
            async with asyncio.timeout(settings.CHAT_GENERATION_TIMEOUT):
                try:
                    async for item in stream:
                        if isinstance(item, TextDelta):
                            if item.text:
                                self._add(item.text)
                        elif isinstance(item, Usage):
                            usage = item
                        elif isinstance(item, Finish):
                            finish_reason = item.reason
                finally:
                    # Closing the provider's iterator closes its HTTP response.
                    await stream.aclose()
            return Outcome(Message.Status.COMPLETE, finish_reason, *usage_fields(usage))
        except asyncio.CancelledError:
            # Read again: the reason was set by Stop or abandonment while we awaited.
            reason = self._cancel_reason()
            if reason is None:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return Outcome(reason, reason, *usage_fields(usage))
        except TimeoutError:
            return Outcome(
                Message.Status.ERROR,
                "timeout",
                *usage_fields(usage),
                error_code="timeout",
                error_message="The answer took longer than the time allowed.",
                retryable=True,
            )
        except ProviderError as error:
            return Outcome(
                Message.Status.ERROR,
                "error",
                *usage_fields(usage),
                error_code=error.code,
                error_message=error.message,
                retryable=error.retryable,
            )
        except Exception:
            log_event(
                logger,
                "generation_failed",
                level=logging.ERROR,
                exc_info=True,
                message_id=self.message_id,
            )
            return Outcome(
                Message.Status.ERROR,
                "error",
                *usage_fields(usage),
                error_code="internal",
                error_message="The server failed while writing this answer.",
                retryable=True,
            )

    @property
    def finishing(self) -> bool:
        return self._finishing

    @property
    def started(self) -> float:
        return self._started

    def flush_state(self) -> services.Flush:
        """What the next flush saves: the text when it grew since the last, and ttft."""
        changed = self._length != self._flushed_length
        self._flushed_length = self._length
        return services.Flush(
            message_id=self.message_id,
            content=self._content() if changed else None,
            ttft_ms=self._ttft_ms,
        )

    async def idle_seconds(self) -> float:
        """How long the answer has had no reader, in any process."""
        return await self._log.idle_seconds(self.message_id)


def usage_fields(usage: Usage) -> tuple[int | None, int | None]:
    return usage.prompt_tokens, usage.completion_tokens
