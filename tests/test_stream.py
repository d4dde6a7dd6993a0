"""The SSE stream (CONTRACT §5): what a reader sees, live, resumed, replayed, stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat import generation, services
from chat.models import Conversation, Message
from chat.providers.base import Finish, ProviderError, Usage
from chat.streams import get_stream_log
from tests.helpers import BLOCK, ChatApi, ScriptedProvider, SSEStream, assert_ids_increase

pytestmark = pytest.mark.django_db(transaction=True)


async def log_expired(message_id: str) -> bool:
    return await get_stream_log().read(uuid.UUID(message_id), 0, 0) is None


async def expire_log(message_id: str) -> None:
    """Drop a finished stream from the log, so the database serves its readers."""
    assert not generation.is_running(uuid.UUID(message_id))
    await get_stream_log().expire(uuid.UUID(message_id))
    assert await log_expired(message_id)


def gated_script(deltas: list[str], gates: list[asyncio.Event], per_gate: int) -> list[Any]:
    """`deltas` with a gate after every `per_gate` of them, then usage and finish."""
    script: list[Any] = []
    for index, delta in enumerate(deltas):
        script.append(delta)
        gate_index = (index + 1) // per_gate - 1
        if (index + 1) % per_gate == 0 and gate_index < len(gates):
            script.append(gates[gate_index])
    return [*script, Usage(7, len(deltas)), Finish("stop")]


# --- One read ------------------------------------------------------------------------------


async def test_headers_of_an_event_stream(api: ChatApi) -> None:
    message = await api.ask()
    stream = await api.open_stream(message["id"])
    try:
        assert stream.status == 200
        assert stream.response.streaming
        assert stream.headers["Content-Type"].split(";")[0] == "text/event-stream"
        assert stream.headers["Cache-Control"] == "no-cache"
        assert stream.headers["X-Accel-Buffering"] == "no"
        assert "Content-Length" not in stream.headers
        assert "Content-Encoding" not in stream.headers
        await stream.read_to_end()
    finally:
        await stream.close()
    assert stream.final is not None


async def test_a_live_read_gets_start_tokens_usage_final_with_offset_ids(api: ChatApi) -> None:
    message = await api.ask()
    stream = await api.read(message["id"])

    assert stream.names[0] == "start"
    assert stream.names[-2:] == ["usage", "final"]
    assert set(stream.names[1:-2]) == {"token"}
    assert_ids_increase(stream.events)
    assert stream.events[0].id == 0
    assert stream.events[0].data == {"message_id": message["id"], "model": "demo:demo"}

    stored = await api.finished(message["id"])
    content = stored["content"]
    assert content
    assert stream.final is not None
    assert stream.text == stream.final["content"] == content
    # A token's id is the answer's length after it.
    length = 0
    for event in stream.events[1:-2]:
        length += len(event.data["text"])
        assert event.id == length
    usage = stream.event("usage")
    assert usage.id == len(content) + 1
    assert usage.data == stored["usage"]
    assert usage.data["completion_tokens"] > 0
    final = stream.event("final")
    assert final.id == len(content) + 3
    assert final.data["status"] == "complete"
    assert final.data["finish_reason"] == "stop"
    assert "<h2>" in final.data["html"]
    assert stream.ended


async def test_a_finished_answer_replays_the_same_way_from_the_log_and_the_database(
    api: ChatApi,
) -> None:
    message = await api.ask()
    stored = await api.finished(message["id"])

    from_log = await api.read(message["id"])
    await expire_log(message["id"])
    from_db = await api.read(message["id"])

    for stream in (from_log, from_db):
        assert stream.names[0] == "start"
        assert stream.names[-2:] == ["usage", "final"]
        assert set(stream.names[1:-2]) == {"token"}
        assert_ids_increase(stream.events)
        assert stream.text == stored["content"]
    ending = [(e.id, e.name, e.data) for e in from_log.events if e.name != "token"]
    assert ending == [(e.id, e.name, e.data) for e in from_db.events if e.name != "token"]


async def test_a_long_answer_replays_from_the_database_in_several_tokens(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    answer = "".join(f"{i:05d} 漢字 😀\n" for i in range(6000))  # ~60k code points
    scripted.script = [answer[i : i + 5000] for i in range(0, len(answer), 5000)]
    message = await api.ask(model=scripted.model_id)
    await api.finished(message["id"])
    await expire_log(message["id"])

    stream = await api.read(message["id"])

    assert stream.names[0] == "start"
    assert stream.names.count("token") >= 3
    assert stream.names[-1] == "final"
    assert_ids_increase(stream.events)
    assert stream.text == answer


# --- Resume --------------------------------------------------------------------------------


async def test_five_resumed_pieces_while_streaming_equal_one_read_and_the_stored_text(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gates = [asyncio.Event() for _ in range(4)]
    deltas = [f"word{i} " if i % 7 else f"line {i}\n" for i in range(40)]
    scripted.script = gated_script(deltas, gates, per_gate=8)
    message = await api.ask(model=scripted.model_id)
    message_id = message["id"]
    whole = await api.open_stream(message_id)  # one reader that never drops
    whole_read = asyncio.create_task(whole.read_to_end())

    pieces: list[SSEStream] = []
    last_id = None
    for index in range(5):
        if index == 0:
            stream = await api.open_stream(message_id)
        elif index % 2:
            stream = await api.open_stream(message_id, last_event_id=last_id)
        else:
            stream = await api.open_stream(message_id, after=last_id)
        try:
            if index < 4:
                # Read up to where the provider waits, then drop the connection.
                produced = len("".join(deltas[: 8 * (index + 1)]))
                await stream.read(until=lambda s, n=produced: s.last_id == n)  # type: ignore[misc]
                assert generation.is_running(uuid.UUID(message_id)), "pieces must interleave"
            else:
                await stream.read_to_end()
        finally:
            await stream.close()
        assert stream.status == 200
        if index:
            assert stream.names[0] == "token", "a resumed piece starts after its resume point"
        assert "token" in stream.names
        pieces.append(stream)
        last_id = stream.last_id
        if index < 4:
            gates[index].set()

    await whole_read
    stored = await api.finished(message_id)
    expected = "".join(deltas)
    assert "".join(piece.text for piece in pieces) == expected
    assert whole.text == expected
    assert stored["content"] == expected
    assert pieces[-1].final is not None and pieces[-1].final["content"] == expected
    assert all(piece.final is None for piece in pieces[:-1])
    assert_ids_increase([event for piece in pieces for event in piece.events])


async def test_five_resumed_pieces_after_the_end_replay_from_the_database(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    # More than three replay chunks, so the database replays it in several tokens.
    answer = "".join(f"paragraph {i}: {'é' * 30} 👩‍💻\n\n" for i in range(1200))
    scripted.script = [answer[i : i + 999] for i in range(0, len(answer), 999)]
    scripted.script += [Usage(3, 1200), Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    message_id = message["id"]
    whole = await api.read(message_id)
    stored = await api.finished(message_id)
    await expire_log(message_id)

    pieces = []
    last_id = None
    for index in range(5):
        if index == 0:
            piece = await api.read(message_id, events=2)
        elif index == 4:
            piece = await api.read(message_id, last_event_id=last_id)
        elif index % 2:
            piece = await api.read(message_id, last_event_id=last_id, events=1)
        else:
            piece = await api.read(message_id, after=last_id, events=1)
        pieces.append(piece)
        last_id = piece.last_id

    assert [piece.names for piece in pieces][:4] == [["start", "token"]] + [["token"]] * 3
    assert pieces[4].names[-2:] == ["usage", "final"]
    assert "".join(piece.text for piece in pieces) == whole.text == stored["content"] == answer
    assert_ids_increase([event for piece in pieces for event in piece.events])


async def test_pieces_resumed_from_the_live_log_continue_exactly_from_the_database(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    scripted.script = ["The first ", "half, ", gate, "and the second ", "half.", Usage(1, 4)]
    message = await api.ask(model=scripted.model_id)
    message_id = message["id"]
    first = await api.read(message_id, until=lambda s: s.text == "The first half, ")
    gate.set()
    await api.finished(message_id)
    await expire_log(message_id)

    second = await api.read(message_id, last_event_id=first.last_id, events=1)
    third = await api.read(message_id, after=second.last_id)

    assert first.text + second.text + third.text == "The first half, and the second half."
    assert second.names == ["token"]
    assert third.names == ["usage", "final"]


async def test_resuming_from_usage_gets_only_the_final(api: ChatApi) -> None:
    message = await api.ask()
    whole = await api.read(message["id"])
    usage_id = whole.event("usage").id

    from_log = await api.read(message["id"], last_event_id=usage_id)
    await expire_log(message["id"])
    from_db = await api.read(message["id"], after=usage_id)

    for stream in (from_log, from_db):
        assert stream.names == ["final"]
        assert stream.final == whole.final


async def test_a_dropped_reader_does_not_stop_the_answer(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    scripted.script = ["Begun ", gate, "and finished.", Usage(1, 2), Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    first = await api.read(message["id"], until=lambda s: s.text == "Begun ")
    gate.set()  # the reader has gone; the answer goes on without it

    stored = await api.finished(message["id"])
    rest = await api.read(message["id"], last_event_id=first.last_id)

    assert stored["status"] == "complete"
    assert stored["content"] == first.text + rest.text == "Begun and finished."


@pytest.mark.parametrize("empty", ["", "  "])
async def test_an_empty_resume_point_reads_from_the_start(api: ChatApi, empty: str) -> None:
    message = await api.ask()
    stored = await api.finished(message["id"])

    for stream in (
        await api.read(message["id"], after=empty),
        await api.read(message["id"], last_event_id=empty),
    ):
        assert stream.names[0] == "start"
        assert stream.text == stored["content"]


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resuming_from_the_final_id_gets_no_content(api: ChatApi, how: str) -> None:
    message = await api.ask()
    whole = await api.read(message["id"])
    final_id = whole.event("final").id

    for _source in ("log", "database"):
        if how == "header":
            stream = await api.open_stream(message["id"], last_event_id=final_id)
        else:
            stream = await api.open_stream(message["id"], after=final_id)
        assert stream.status == 204
        assert not stream.response.streaming
        assert stream.response.content == b""
        await expire_log(message["id"])


async def test_the_header_wins_over_the_query(api: ChatApi) -> None:
    message = await api.ask()
    whole = await api.read(message["id"])
    usage_id = whole.event("usage").id

    stream = await api.read(message["id"], last_event_id=usage_id, after=0)

    assert stream.names == ["final"]


@pytest.mark.parametrize(
    ("how", "bad"),
    [
        ("header", "abc"),
        ("header", "-1"),
        ("header", "1.5"),
        ("query", "abc"),
        ("query", "-1"),
        ("query", "99999999999999999999"),
        ("query", "%D9%A3"),  # an Arabic-Indic digit: a digit, yet not an id
        ("query", "%00"),
        ("header", "99999"),  # a number beyond the answer: not honourable either
    ],
)
async def test_a_malformed_resume_point_while_streaming_gets_a_reset_then_the_rest(
    api: ChatApi, scripted: ScriptedProvider, how: str, bad: str
) -> None:
    gate = asyncio.Event()
    scripted.script = ["Hello ", "there", gate, ", and ", "goodbye.", Usage(2, 4), Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    await api.read(message["id"], until=lambda s: s.text == "Hello there")

    if how == "header":
        stream = await api.open_stream(message["id"], last_event_id=bad)
    else:
        stream = await api.open_stream(message["id"], after=bad)
    try:
        assert stream.status == 200
        await stream.read(events=1)
        assert stream.events[0].name == "reset"
        assert stream.events[0].data == {"content": "Hello there"}
        gate.set()
        await stream.read_to_end()
    finally:
        await stream.close()

    stored = await api.finished(message["id"])
    reset = stream.events[0].data["content"]
    assert reset + "".join(stream.tokens) == stored["content"] == "Hello there, and goodbye."
    assert stream.text == stream.final["content"] == stored["content"]  # type: ignore[index]
    assert stream.names[-1] == "final"
    assert_ids_increase(stream.events)


async def test_a_malformed_resume_point_before_any_text_gets_an_empty_reset_at_once(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    scripted.script = [gate, "Late ", "text."]
    message = await api.ask(model=scripted.model_id)
    await asyncio.wait_for(scripted.runs[0].started.wait(), 5)

    stream = await api.open_stream(message["id"], last_event_id="abc")
    try:
        await stream.read(events=1, timeout=2)  # not after a ping interval (15 s)
        assert stream.events[0].name == "reset"
        assert stream.events[0].data == {"content": ""}
        gate.set()
        await stream.read_to_end()
    finally:
        await stream.close()
    assert stream.text == "Late text."
    assert_ids_increase(stream.events)


@pytest.mark.parametrize("source", ["log", "database"])
@pytest.mark.parametrize("bad", ["abc", "-1", "123456789"])
async def test_a_malformed_resume_point_after_the_end_gets_a_reset_then_the_ending(
    api: ChatApi, bad: str, source: str
) -> None:
    message = await api.ask()
    stored = await api.finished(message["id"])
    if source == "database":
        await expire_log(message["id"])

    stream = await api.read(message["id"], last_event_id=bad)

    assert stream.status == 200
    assert stream.names == ["reset", "usage", "final"]
    assert stream.events[0].data["content"] == stored["content"]
    assert stream.text == stored["content"]
    assert_ids_increase(stream.events)


# --- Silence, stop, errors ----------------------------------------------------------------


async def test_a_silent_stream_sends_pings(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_PING_INTERVAL = 0.2
    scripted.script = [BLOCK]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(until=lambda s: s.pings >= 2, timeout=5)
    finally:
        await stream.close()
    assert stream.names == ["start"]
    assert stream.pings >= 2


async def test_stop_during_a_stream_ends_it_within_a_second_keeping_the_text(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Partial ", "answer, ", "cut here", BLOCK]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(until=lambda s: s.text == "Partial answer, cut here")
        started = time.monotonic()
        stopping = asyncio.create_task(api.stop(message["id"], seen=stream.last_id))
        await stream.read_to_end(timeout=2)
        elapsed = time.monotonic() - started
    finally:
        await stream.close()
    response = await stopping

    assert elapsed < 1.0
    assert stream.names[-1] == "final"
    assert stream.final is not None
    assert stream.final["status"] == "stopped"
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    stored = await api.message(message["id"])
    assert stored["status"] == "stopped"
    assert stored["content"] == stream.text == stream.final["content"] == "Partial answer, cut here"
    assert scripted.runs[0].cancelled and scripted.runs[0].closed  # the upstream call is closed


async def test_stop_before_the_first_token_ends_the_stream_within_a_second(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = [BLOCK]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(events=1)
        await asyncio.wait_for(scripted.runs[0].started.wait(), 5)
        started = time.monotonic()
        stopping = asyncio.create_task(api.stop(message["id"]))
        await stream.read_to_end(timeout=2)
        elapsed = time.monotonic() - started
    finally:
        await stream.close()
    await stopping

    assert elapsed < 1.0
    assert stream.names == ["start", "final"]
    assert stream.final is not None
    assert stream.final["status"] == "stopped"
    assert stream.final["content"] == ""
    stored = await api.message(message["id"])
    assert stored["status"] == "stopped"
    assert stored["content"] == ""
    assert scripted.runs[0].closed


@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        (ProviderError("upstream", "The model provider failed."), "upstream", True),
        (ProviderError("auth", "The API key was refused."), "auth", False),
        (RuntimeError("a bug"), "internal", True),
    ],
)
async def test_a_provider_error_mid_stream_ends_in_error_keeping_the_partial_text(
    api: ChatApi,
    scripted: ScriptedProvider,
    error: Exception,
    code: str,
    retryable: bool,
) -> None:
    scripted.script = ["Half ", "an answer", error]
    message = await api.ask(model=scripted.model_id)

    live = await api.read(message["id"])
    stored = await api.finished(message["id"])
    await expire_log(message["id"])
    replayed = await api.read(message["id"])

    for stream in (live, replayed):
        assert stream.names[0] == "start"
        assert stream.names[-2:] == ["error", "final"]
        assert_ids_increase(stream.events)
        error_event = stream.event("error")
        assert error_event.id == len("Half an answer") + 2
        assert error_event.data["code"] == code
        assert error_event.data["retryable"] is retryable
        assert error_event.data["message"]
        assert stream.final is not None
        assert stream.final["status"] == "error"
        assert stream.final["content"] == "Half an answer"
        assert stream.text == "Half an answer"
    assert live.event("error").data == replayed.event("error").data
    assert stored["status"] == "error"
    assert stored["content"] == "Half an answer"
    assert stored["error"] == {"code": code, "message": live.event("error").data["message"]}
    assert not await Message.objects.filter(status=Message.Status.STREAMING).aexists()


async def test_two_readers_of_one_answer_see_the_same_events(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    scripted.script = ["one ", "two ", gate, "three ", "four", Usage(1, 4), Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    first = await api.open_stream(message["id"])
    second = await api.open_stream(message["id"])
    reads = [asyncio.create_task(s.read_to_end()) for s in (first, second)]
    await asyncio.sleep(0.1)
    gate.set()
    await asyncio.gather(*reads)

    assert first.text == second.text == "one two three four"
    assert first.final == second.final


# --- Byte-exactness --------------------------------------------------------------------------

TRICKY_DELTAS = [
    "plain ",
    "line one\nline two",
    "\r",
    "carriage\rreturn",
    "\r\n",
    "crlf\r\nend",
    "\n\n",
    "blank\n\n\nlines\n\n",
    "data: not an event\n",
    "event: final\n",
    "id: 999999\n",
    "retry: 1\n",
    ": x\n",
    ":comment",
    "   leading spaces",
    " ",
    "\t tab",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag",
    "漢字かな交じり文、한국어",
    "e\u0301 combining a\u0308\u0323",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)> &amp; &lt; &#x27;",
    '"quotes" \\backslash\\ {"json": true} \\n not a newline',
    "\u2028\u2029\u0085",
    "\x0b\x0c\x1b[31m\x7f",
    "\ufeffBOM",
    ("€漢😀 ascii\n" * 6000)[:65536],  # one 64 KiB delta
    "end.",
]


async def test_tricky_text_arrives_byte_exact_in_tokens_final_database_and_replay(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    expected = "".join(TRICKY_DELTAS)
    scripted.script = [*TRICKY_DELTAS, Usage(1, len(TRICKY_DELTAS)), Finish("stop")]
    message = await api.ask(model=scripted.model_id)

    live = await api.read(message["id"])
    stored = await api.finished(message["id"])
    row = await Message.objects.aget(id=message["id"])
    await expire_log(message["id"])
    replayed = await api.read(message["id"])

    assert "".join(live.tokens) == expected
    assert live.final is not None and live.final["content"] == expected
    assert stored["content"] == expected
    assert row.content == expected
    assert "".join(replayed.tokens) == expected
    assert replayed.final is not None and replayed.final["content"] == expected
    assert live.event("final").id == len(expected) + 3
    for stream in (live, replayed):
        assert stream.names.count("final") == 1
        assert_ids_increase(stream.events)


# --- Access and orphans ------------------------------------------------------------------


async def test_a_user_message_has_no_stream(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"])
    stream = await api.open_stream(sent["user_message"]["id"])
    assert stream.status == 400
    assert stream.response.json()["error"]["code"]


async def _orphan(user: Any, *, content: str, heartbeat_age: float) -> Message:
    """An answer left `streaming` by a generation that no longer runs anywhere."""

    def create() -> Message:
        conversation = Conversation.objects.create(user=user, model="demo:demo")
        question = Message.objects.create(
            conversation=conversation, role="user", content="Hi", status="complete"
        )
        answer = Message.objects.create(
            conversation=conversation,
            parent=question,
            role="assistant",
            content=content,
            status="streaming",
            model="demo:demo",
            heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age),
        )
        conversation.current_leaf = answer
        conversation.save()
        return answer

    return await sync_to_async(create)()


async def test_an_orphaned_answer_is_read_as_interrupted(api: ChatApi, user: Any) -> None:
    orphan = await _orphan(user, content="Half of it", heartbeat_age=3600)

    stream = await api.read(str(orphan.id))

    assert stream.names == ["start", "token", "final"]
    assert stream.final is not None
    assert stream.final["status"] == "interrupted"
    assert stream.final["content"] == "Half of it"
    message = await api.message(str(orphan.id))
    assert message["status"] == "interrupted"
    assert message["content"] == "Half of it"
    assert not generation.is_running(orphan.id), "reading never starts a generation"


async def test_the_message_api_reports_an_orphan_as_interrupted(api: ChatApi, user: Any) -> None:
    fresh = await _orphan(user, content="still starting", heartbeat_age=0)
    stale = await _orphan(user, content="long dead", heartbeat_age=services.ORPHAN_GRACE + 60)

    assert (await api.message(str(fresh.id)))["status"] == "streaming"  # within its grace
    assert (await api.message(str(stale.id)))["status"] == "interrupted"
    conversation = (await api.get(f"/api/conversations/{stale.conversation_id}")).json()
    assert conversation["messages"][-1]["status"] == "interrupted"


async def test_a_reader_waiting_on_an_answer_that_never_starts_gets_interrupted(
    api: ChatApi, user: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setattr(services, "ORPHAN_GRACE", 0.3)
    settings.CHAT_HEARTBEAT_STALE_AFTER = 0.3  # with Redis
    orphan = await _orphan(user, content="", heartbeat_age=0)

    stream = await api.read(str(orphan.id), timeout=5)

    assert stream.names == ["start", "final"]
    assert stream.final is not None
    assert stream.final["status"] == "interrupted"
