"""The generation task: coalescing, timed flushes, timeouts, abandonment, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db.backends.utils import CursorWrapper

from chat import generation, services
from chat.models import Message
from chat.providers.base import Finish, Usage
from chat.streams import get_stream_log
from tests.helpers import BLOCK, ChatApi, Pause, ScriptedProvider, eventually

pytestmark = pytest.mark.django_db(transaction=True)


async def status_of(message_id: str) -> str:
    return (await Message.objects.aget(id=message_id)).status


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> Counter[str]:
    """Count calls to `module.name` by wrapping (not replacing) it."""
    calls: Counter[str] = Counter()
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def count_message_updates(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count rows UPDATEd on the message table (one per row of an executemany), from
    every thread."""
    updates: Counter[str] = Counter()
    original, original_many = CursorWrapper.execute, CursorWrapper.executemany

    def is_update(sql: str) -> bool:
        return sql.lstrip().upper().startswith("UPDATE") and '"chat_message"' in sql

    def execute(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        if is_update(sql):
            updates["update"] += 1
        return original(self, sql, params)

    def executemany(self: CursorWrapper, sql: str, param_list: Any) -> Any:
        param_list = list(param_list)
        if is_update(sql):
            updates["update"] += len(param_list)
        return original_many(self, sql, param_list)

    monkeypatch.setattr(CursorWrapper, "execute", execute)
    monkeypatch.setattr(CursorWrapper, "executemany", executemany)
    return updates


# --- Frames and writes ---------------------------------------------------------------------


async def test_tiny_deltas_are_coalesced_into_few_frames(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    go = asyncio.Event()
    deltas = [f"{i} " for i in range(500)]
    # Each delta in its own turn of the event loop, as fast as the loop goes.
    scripted.script = [go, *(step for d in deltas for step in (d, Pause(0)))]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(events=1)  # a live reader, attached before the first token
        go.set()
        await stream.read_to_end()
    finally:
        await stream.close()

    assert stream.text == "".join(deltas)
    assert stream.final is not None and stream.final["content"] == "".join(deltas)
    assert 1 <= len(stream.tokens) <= 50, len(stream.tokens)


async def test_a_steady_stream_gets_about_one_frame_per_frame_interval(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    go = asyncio.Event()
    deltas = [f"w{i} " for i in range(100)]
    scripted.script = [go, *(step for d in deltas for step in (d, Pause(0.003)))]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(events=1)
        started = asyncio.get_running_loop().time()
        go.set()
        await stream.read_to_end()
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await stream.close()

    assert stream.text == "".join(deltas)
    # At most one frame per interval, plus the first delta sent at once and the last.
    assert len(stream.tokens) <= elapsed / settings.CHAT_FRAME_INTERVAL + 3
    assert len(stream.tokens) < len(deltas)


@pytest.mark.parametrize("tokens", [200, 2000])
async def test_database_writes_are_per_flush_interval_not_per_token(
    api: ChatApi,
    scripted: ScriptedProvider,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tokens: int,
) -> None:
    settings.CHAT_FLUSH_INTERVAL = 0.1
    flushes = count_calls(monkeypatch, services, "message_flush_many")
    finishes = count_calls(monkeypatch, services, "message_finish")
    updates = count_message_updates(monkeypatch)
    # The same ~0.5 s answer, whatever its number of tokens: a pause every 2% of them.
    every = tokens // 50
    scripted.script = [f"t{i} " if i % every else Pause(0.01) for i in range(tokens)]
    scripted.script += [Usage(5, tokens), Finish("stop")]
    message = await api.ask(model=scripted.model_id)

    stream = await api.read(message["id"])
    stored = await api.finished(message["id"])

    expected = "".join(f"t{i} " for i in range(tokens) if i % every)
    assert stored["content"] == stream.text == expected
    assert finishes["message_finish"] == 1
    # One flush per interval of the answer's life (~5), however many tokens it has.
    # (One answer runs: each flush saves it alone.)
    assert 1 <= flushes["message_flush_many"] <= stored["duration_ms"] / 100 + 2
    assert flushes["message_flush_many"] <= 15
    assert updates["update"] <= flushes["message_flush_many"] + finishes["message_finish"] + 2


async def test_the_answers_of_a_process_are_flushed_together_in_one_transaction(
    api: ChatApi, scripted: ScriptedProvider, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CHAT_FLUSH_INTERVAL = 0.05
    settings.CHAT_MAX_CONCURRENT_STREAMS = 5
    batches: list[list[services.Flush]] = []
    original = services.message_flush_many

    def recorded(*, flushes: Any) -> None:
        batches.append(list(flushes))
        original(flushes=flushes)

    monkeypatch.setattr(services, "message_flush_many", recorded)
    gate = asyncio.Event()
    scripted.script = ["Some ", "words", gate, " and the end", Usage(2, 3), Finish("stop")]
    messages = [await api.ask(f"Question {n}", model=scripted.model_id) for n in range(3)]
    ids = {uuid.UUID(message["id"]) for message in messages}

    async def all_saved() -> bool:
        rows = await sync_to_async(list)(Message.objects.filter(id__in=ids, content="Some words"))
        return len(rows) == 3

    await eventually(all_saved)
    await asyncio.sleep(0.2)  # a few more ticks while all three wait
    gate.set()
    for message in messages:
        assert (await api.finished(message["id"]))["content"] == "Some words and the end"

    together = [batch for batch in batches if {f.message_id for f in batch} == ids]
    assert len(together) >= 3, "each tick saves the three answers in one batch"
    # Text is only sent again when it grew; the heartbeat goes with every flush.
    unchanged = [f for batch in together[1:] for f in batch if f.content is None]
    assert unchanged


async def test_the_stored_text_follows_the_stream_between_flushes(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_FLUSH_INTERVAL = 0.05
    scripted.script = ["Saved ", "before ", "the end", BLOCK]
    message = await api.ask(model=scripted.model_id)

    async def stored_text() -> bool:
        return (await Message.objects.aget(id=message["id"])).content == "Saved before the end"

    await eventually(stored_text)
    row = await Message.objects.aget(id=message["id"])
    assert row.status == "streaming"
    assert row.heartbeat_at is not None
    assert row.ttft_ms is not None
    await api.stop(message["id"])


# --- How a generation ends -----------------------------------------------------------------


async def test_usage_and_finish_reason_are_recorded(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Done", Usage(12, 1), Finish("length")]
    message = await api.ask(model=scripted.model_id)

    stream = await api.read(message["id"])
    stored = await api.finished(message["id"])

    assert stored["usage"] == {"prompt_tokens": 12, "completion_tokens": 1}
    assert stored["finish_reason"] == "length"
    assert stream.event("usage").data == {"prompt_tokens": 12, "completion_tokens": 1}
    assert stream.final is not None and stream.final["finish_reason"] == "length"


async def test_the_demo_stops_at_the_output_cap_with_finish_reason_length(
    api: ChatApi, settings: Any
) -> None:
    settings.CHAT_MAX_OUTPUT_TOKENS = 5
    message = await api.ask()
    stored = await api.finished(message["id"])

    assert stored["status"] == "complete"
    assert stored["finish_reason"] == "length"
    assert stored["usage"]["completion_tokens"] == 5


async def test_a_generation_past_its_time_limit_ends_in_a_timeout_error(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_GENERATION_TIMEOUT = 0.3
    scripted.script = ["Slow ", "start", BLOCK]
    message = await api.ask(model=scripted.model_id)

    stream = await api.read(message["id"], timeout=5)
    stored = await api.finished(message["id"])

    assert stored["status"] == "error"
    assert stored["error"]["code"] == "timeout"
    assert stored["content"] == "Slow start"
    assert stream.event("error").data["code"] == "timeout"
    assert stream.event("error").data["retryable"] is True
    assert stream.final is not None and stream.final["status"] == "error"
    assert scripted.runs[0].closed


async def test_an_answer_nobody_reads_is_abandoned_as_interrupted(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_ABANDON_AFTER = 0.5
    settings.CHAT_FLUSH_INTERVAL = 0.05
    scripted.script = ["Nobody ", "reads this", BLOCK]
    message = await api.ask(model=scripted.model_id)

    await generation.generation_wait(uuid.UUID(message["id"]), 5)

    stored = await api.message(message["id"])
    assert stored["status"] == "interrupted"
    assert stored["content"] == "Nobody reads this"
    assert scripted.runs[0].closed
    replay = await api.read(message["id"])
    assert replay.final is not None and replay.final["status"] == "interrupted"


async def test_an_answer_being_read_is_not_abandoned_until_its_reader_leaves(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_ABANDON_AFTER = 0.3
    settings.CHAT_FLUSH_INTERVAL = 0.05
    scripted.script = ["Someone ", "reads this", BLOCK]
    message = await api.ask(model=scripted.model_id)
    message_id = uuid.UUID(message["id"])
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(until=lambda s: s.text == "Someone reads this")
        # Three times the abandon timeout with a reader attached: still running.
        await asyncio.sleep(0.9)
        assert generation.is_running(message_id)
        assert await status_of(message["id"]) == "streaming"
    finally:
        await stream.close()

    await generation.generation_wait(message_id, 5)
    assert await status_of(message["id"]) == "interrupted"


async def test_an_answer_whose_readers_cannot_be_counted_is_not_abandoned(
    api: ChatApi, scripted: ScriptedProvider, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CHAT_ABANDON_AFTER = 0.1
    settings.CHAT_FLUSH_INTERVAL = 0.05
    scripted.script = ["Nobody reads this", BLOCK]
    log = get_stream_log()

    async def unknown(message_id: uuid.UUID) -> float:
        raise ConnectionError("the log is out of reach")

    monkeypatch.setattr(log, "idle_seconds", unknown)
    message = await api.ask(model=scripted.model_id)
    message_id = uuid.UUID(message["id"])

    # Many ticks past the abandon timeout, unread: it runs on, and its text is saved.
    await asyncio.sleep(0.6)
    assert generation.is_running(message_id)
    assert (await api.message(message["id"]))["content"] == "Nobody reads this"
    await api.stop(message["id"])
    await generation.generation_wait(message_id, 5)
    assert await status_of(message["id"]) == "stopped"


async def test_a_running_answer_keeps_nothing_of_the_request_that_started_it(
    scripted: ScriptedProvider, user: Any
) -> None:
    """What the request's context holds (its database and cache connections, say) goes
    with the request, not with the answer, which runs on."""
    held: contextvars.ContextVar[object] = contextvars.ContextVar("held")

    class RequestThing:
        pass

    scripted.script = ["Still going", BLOCK]

    def send() -> services.GenerationPlan:
        conversation = services.conversation_create(user=user)
        _, _, plan = services.message_send(
            user=user, conversation=conversation, content="Hi", model=scripted.model_id
        )
        assert plan is not None
        return plan

    plan = await sync_to_async(send)()
    thing = RequestThing()
    gone = weakref.ref(thing)
    request_context = contextvars.Context()  # as each ASGI request has one of its own
    request_context.run(held.set, thing)
    request_context.run(generation.generation_start, plan)
    del thing, request_context  # the request ends
    await eventually(lambda: scripted.runs and scripted.runs[0].yielded)
    gc.collect()
    message_id = plan.message_id
    assert generation.is_running(message_id)
    assert gone() is None
    assert generation.generation_cancel(message_id, "stopped")
    await generation.generation_wait(message_id, 5)


async def test_stop_before_the_task_runs_ends_it_stopped(api: ChatApi, user: Any) -> None:
    def send() -> services.GenerationPlan:
        conversation = services.conversation_create(user=user)
        _, _, plan = services.message_send(user=user, conversation=conversation, content="Hi")
        return plan

    plan = await sync_to_async(send)()
    generation.generation_start(plan)
    assert generation.generation_cancel(plan.message_id, "stopped")  # before its first step

    await generation.generation_wait(plan.message_id, 5)

    row = await Message.objects.aget(id=plan.message_id)
    assert row.status == "stopped"
    assert row.content == ""
    assert row.heartbeat_at is None
    assert not generation.is_running(plan.message_id)
    stream = await api.read(str(plan.message_id))
    assert stream.names == ["start", "final"]


async def test_a_second_stop_and_a_cancel_of_nothing_are_harmless(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["x", BLOCK]
    message = await api.ask(model=scripted.model_id)
    await asyncio.wait_for(scripted.runs[0].started.wait(), 5)

    first, second = await asyncio.gather(api.stop(message["id"]), api.stop(message["id"]))

    assert first.json()["status"] == second.json()["status"] == "stopped"
    assert not generation.generation_cancel(uuid.UUID(message["id"]))
    assert not generation.generation_cancel(uuid.uuid4())


async def test_every_answer_reaches_exactly_one_terminal_status(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_MAX_CONCURRENT_STREAMS = 10
    scripted.script = ["a", "b", BLOCK]
    demo = [await api.ask(f"question {i}") for i in range(3)]
    blocked = [await api.ask(model=scripted.model_id) for _ in range(2)]
    await asyncio.gather(*(api.stop(m["id"]) for m in blocked))
    for message in demo:
        await api.finished(message["id"])

    statuses = [await status_of(m["id"]) for m in demo + blocked]
    assert statuses == ["complete"] * 3 + ["stopped"] * 2
    assert not generation._running
    assert not await Message.objects.filter(status="streaming").aexists()
    assert not await Message.objects.filter(heartbeat_at__isnull=False).aexists()
