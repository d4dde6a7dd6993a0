"""The Anthropic provider, through the real `anthropic` SDK, against the fake server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import anthropic
import httpx2
import pytest
from pytest_django.fixtures import Settings

from chat.providers.anthropic import AnthropicProvider
from chat.providers.base import Finish, TextDelta, Usage
from tests.fakes import AnthropicServer, Script
from tests.fakes.samples import (
    TRICKY_DELTAS,
    TRICKY_TEXT,
    chat_request,
    collect,
    collect_until_error,
    text_of,
)

KEY = "sk-ant-test-CANARY-5b9e21a7c3d0"


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer() as server:
        yield server


@pytest.fixture
def provider(server: AnthropicServer) -> AnthropicProvider:
    return AnthropicProvider(api_key=KEY, base_url=server.url)


# --- The fake is faithful: the real SDK reads it like the real API ---------------------


async def test_the_sdk_reads_the_fake_like_the_api(server: AnthropicServer) -> None:
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=server.url, max_retries=0)
    stream = await client.messages.create(
        model="claude-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    events = [event async for event in stream]

    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    texts = [
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert "".join(texts) == "Hello, world!"
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.input_tokens == 17
    assert delta.type == "message_delta" and delta.usage.output_tokens == 4
    assert delta.delta.stop_reason == "end_turn"
    await client.close()


async def test_the_wire_format_is_the_apis(server: AnthropicServer) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{server.url}/v1/messages", json={"model": "m", "stream": True}
        )
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = response.text.split("\n\n")
    assert events[-1] == ""
    names = []
    for event in events[:-1]:
        event_line, data_line = event.split("\n")
        name = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name
        names.append(name)
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


# --- Text arrives byte-exact -----------------------------------------------------------


@pytest.mark.parametrize(
    ("newline", "fragment"),
    [("\n", None), ("\r\n", None), ("\n", 997), ("\r\n", 1)],
    ids=["lf", "crlf", "fragmented", "crlf-byte-by-byte"],
)
async def test_every_delta_arrives_byte_exact(
    server: AnthropicServer, provider: AnthropicProvider, newline: str, fragment: int | None
) -> None:
    server.script = Script(deltas=TRICKY_DELTAS, newline=newline, fragment=fragment)

    items = await collect(provider.stream(chat_request()))

    assert text_of(items) == TRICKY_TEXT
    texts = [item.text for item in items if isinstance(item, TextDelta)]
    assert [text for text in texts if text] == [delta for delta in TRICKY_DELTAS if delta]


# --- What is sent upstream -------------------------------------------------------------


async def test_the_request_carries_the_system_prompt_the_turns_and_the_cap(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    await collect(provider.stream(chat_request("Hi", "Hello!", "And now?", model="claude-test")))

    (request,) = server.requests
    assert request.path == "/v1/messages"
    assert request.json == {
        "model": "claude-test",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"},
        ],
        "max_tokens": 321,
        "stream": True,
    }
    assert request.header("anthropic-version")


async def test_empty_answers_are_left_out_of_the_turns(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    await collect(provider.stream(chat_request("Hi", "", "Hello?", system="")))

    body = server.requests[0].json
    assert "system" not in body
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Hello?"},
    ]


async def test_the_key_travels_only_as_the_bearer_header(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    await collect(provider.stream(chat_request()))

    (request,) = server.requests
    assert request.header("Authorization") == f"Bearer {KEY}"
    others = [(name, value) for name, value in request.headers if name.lower() != "authorization"]
    assert KEY not in repr(others)
    assert KEY not in request.body.decode()
    assert KEY not in request.path


async def test_one_pooled_connection_serves_consecutive_answers(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    await collect(provider.stream(chat_request()))
    await collect(provider.stream(chat_request()))

    first, second = server.requests
    assert first.peer == second.peer


# --- Usage and finish reason -----------------------------------------------------------


async def test_usage_combines_input_and_output_tokens(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.script = Script(deltas=["a", "b"], prompt_tokens=40, completion_tokens=9)

    items = await collect(provider.stream(chat_request()))

    assert [item for item in items if isinstance(item, Usage)] == [Usage(40, 9)]
    assert items[-1] == Finish("stop")


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop_sequence")],
)
async def test_stop_reasons_become_finish_reasons(
    server: AnthropicServer, provider: AnthropicProvider, stop_reason: str, finish: str
) -> None:
    server.script = Script(finish_reason=stop_reason)
    assert (await collect(provider.stream(chat_request())))[-1] == Finish(finish)


async def test_a_refusal_is_a_content_filter_error_that_keeps_usage(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.script = Script(finish_reason="refusal")

    items, error = await collect_until_error(provider.stream(chat_request()))

    assert error.code == "content_filter"
    assert Usage(17, 4) in items
    assert text_of(items) == "Hello, world!"


# --- Errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code", "retryable", "words"),
    [
        (Script(status=429, retry_after="12"), "rate_limited", True, "retry after 12 s"),
        (Script(status=401, error_message=f"invalid x-api-key {KEY}"), "auth", False, ""),
        (Script(status=403), "auth", False, "credentials"),
        (
            Script(status=400, error_message="prompt is too long: 210000 tokens > 200000"),
            "context_length",
            False,
            "too long",
        ),
        (Script(status=413), "context_length", False, "too long"),
        (Script(status=500), "upstream", True, "HTTP 500"),
        (Script(status=529), "upstream", True, "HTTP 529"),
        (Script(status=404), "internal", False, "could not be found"),
    ],
    ids=lambda value: str(getattr(value, "status", "")) if isinstance(value, Script) else None,
)
async def test_error_answers_are_classified(
    server: AnthropicServer,
    provider: AnthropicProvider,
    script: Script,
    code: str,
    retryable: bool,
    words: str,
) -> None:
    server.script = script

    items, error = await collect_until_error(provider.stream(chat_request()))

    assert items == []
    assert (error.code, error.retryable) == (code, retryable)
    assert words in error.message
    assert KEY not in error.message


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(error_after=2), "upstream"),  # overloaded_error
        (Script(error_after=2, error_type="api_error"), "upstream"),
        (Script(error_after=2, error_type="rate_limit_error"), "rate_limited"),
        (Script(drop_after=2), "upstream"),
        (Script(garbage_after=2), "upstream"),
        (Script(end_after=2), "upstream"),
    ],
    ids=["overloaded", "api-error", "rate-limited", "dropped", "malformed", "unfinished"],
)
async def test_failures_mid_stream_keep_the_text_before_them(
    server: AnthropicServer, provider: AnthropicProvider, script: Script, code: str
) -> None:
    server.script = script

    items, error = await collect_until_error(provider.stream(chat_request()))

    assert error.code == code
    assert text_of(items) == "Hello,"


@pytest.mark.parametrize(
    "script",
    [Script(hang_after_headers=True), Script(hang_after=2), Script(headers_delay=5)],
    ids=["headers-then-nothing", "stalls-mid-answer", "no-headers"],
)
async def test_a_silent_upstream_times_out(
    server: AnthropicServer, settings: Settings, script: Script
) -> None:
    settings.CHAT_PROVIDER_READ_TIMEOUT = 0.3
    server.script = script
    provider = AnthropicProvider(api_key=KEY, base_url=server.url)

    started = time.monotonic()
    _items, error = await collect_until_error(provider.stream(chat_request()))

    assert error.code == "timeout"
    assert error.retryable
    assert time.monotonic() - started < 2


# --- Closing the stream closes the HTTP request ------------------------------------------


async def test_closing_the_stream_early_closes_the_connection(
    server: AnthropicServer, provider: AnthropicProvider
) -> None:
    server.script = Script(deltas=["a"] * 50, interval=0.1)
    stream = provider.stream(chat_request())
    async for item in stream:
        if isinstance(item, TextDelta):
            break
    closed_from = time.monotonic()
    await stream.aclose()

    (request,) = server.requests
    assert await asyncio.to_thread(request.wait_closed, 1.0)
    assert request.closed_at is not None
    assert request.closed_at - closed_from < 1.0
    assert len(request.delta_times) < 50


@pytest.mark.parametrize(
    "script",
    [
        Script(headers_delay=10),
        Script(first_delta_delay=10),
        Script(deltas=["a", "b"], interval=10),
    ],
    ids=["before-headers", "before-first-delta", "between-deltas"],
)
async def test_cancelling_the_consumer_closes_the_connection(
    server: AnthropicServer, provider: AnthropicProvider, script: Script
) -> None:
    server.script = script
    task = asyncio.create_task(collect(provider.stream(chat_request())))
    (request,) = await server.await_requests(1)
    await asyncio.sleep(0.1)

    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(request.wait_closed, 1.0)
    assert request.closed_at is not None
    assert request.closed_at - cancelled_at < 1.0
