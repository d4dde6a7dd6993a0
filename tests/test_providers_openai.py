"""The OpenAI provider, through the real `openai` SDK, against the fake OpenAI server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest
from pytest_django.fixtures import Settings

from chat.providers import registry
from chat.providers.base import Finish, TextDelta, Usage
from chat.providers.openai import OpenAIProvider, is_openai_api
from tests.fakes import OpenAIServer, Script
from tests.fakes.samples import (
    TRICKY_DELTAS,
    TRICKY_TEXT,
    chat_request,
    collect,
    collect_until_error,
    text_of,
)

KEY = "sk-test-openai-CANARY-7c1f04d2e9b8"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def provider(server: OpenAIServer) -> OpenAIProvider:
    return OpenAIProvider(api_key=KEY, base_url=f"{server.url}/v1")


# --- The fake is faithful: the real SDK reads it like the real API ---------------------


async def test_the_sdk_reads_the_fake_like_the_api(server: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello, world!"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (17, 4)
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    await client.close()


async def test_the_wire_format_is_the_apis(server: OpenAIServer) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        )
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") and "\n" not in event for event in events[:-2])
    assert [chunk["usage"] for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 21


async def test_without_include_usage_there_is_no_usage_chunk(server: OpenAIServer) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{server.url}/v1/chat/completions", json={"model": "m", "stream": True}
        )
    chunks = [json.loads(e[6:]) for e in response.text.split("\n\n")[:-2]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


# --- Text arrives byte-exact -----------------------------------------------------------


@pytest.mark.parametrize(
    ("newline", "fragment"),
    [("\n", None), ("\r\n", None), ("\n", 997), ("\r\n", 1)],
    ids=["lf", "crlf", "fragmented", "crlf-byte-by-byte"],
)
async def test_every_delta_arrives_byte_exact(
    server: OpenAIServer, provider: OpenAIProvider, newline: str, fragment: int | None
) -> None:
    server.script = Script(deltas=TRICKY_DELTAS, newline=newline, fragment=fragment)

    items = await collect(provider.stream(chat_request()))

    assert text_of(items) == TRICKY_TEXT
    texts = [item.text for item in items if isinstance(item, TextDelta)]
    assert [text for text in texts if text] == [delta for delta in TRICKY_DELTAS if delta]


# --- What is sent upstream -------------------------------------------------------------


async def test_the_request_carries_the_system_prompt_the_turns_and_the_cap(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    await collect(provider.stream(chat_request("Hi", "Hello!", "And now?", model="gpt-test")))

    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        # Not OpenAI's own API: the name every compatible server accepts.
        "max_tokens": 321,
    }


def test_openais_own_api_gets_max_completion_tokens() -> None:
    assert is_openai_api("https://api.openai.com/v1")
    assert not is_openai_api("http://localhost:11434/v1")
    assert not is_openai_api("http://127.0.0.1:8000/v1")


def test_one_provider_and_so_one_connection_pool_per_configuration(settings: Settings) -> None:
    settings.OPENAI_API_KEY = KEY
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    mini = registry.provider_for(registry.ModelChoice("openai:mini", "openai", "mini"))
    large = registry.provider_for(registry.ModelChoice("openai:large", "openai", "large"))
    assert isinstance(mini, OpenAIProvider)
    assert mini is large

    settings.CHAT_PROVIDER_READ_TIMEOUT = 5
    assert registry.provider_for(registry.ModelChoice("openai:mini", "openai", "mini")) is not mini


async def test_the_key_travels_only_as_the_bearer_header(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    await collect(provider.stream(chat_request()))

    (request,) = server.requests
    assert request.header("Authorization") == f"Bearer {KEY}"
    others = [(name, value) for name, value in request.headers if name.lower() != "authorization"]
    assert KEY not in repr(others)
    assert KEY not in request.body.decode()
    assert KEY not in request.path


async def test_a_keyless_local_server_works(server: OpenAIServer) -> None:
    provider = OpenAIProvider(api_key="", base_url=f"{server.url}/v1")

    items = await collect(provider.stream(chat_request()))

    assert text_of(items) == "Hello, world!"
    assert server.requests[0].header("Authorization") is None


async def test_one_pooled_connection_serves_consecutive_answers(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    await collect(provider.stream(chat_request()))
    await collect(provider.stream(chat_request()))

    first, second = server.requests
    assert first.peer == second.peer


# --- Usage and finish reason -----------------------------------------------------------


async def test_usage_and_finish_reason_are_reported(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    server.script = Script(deltas=["a", "b"], prompt_tokens=40, completion_tokens=2)

    items = await collect(provider.stream(chat_request()))

    assert Usage(prompt_tokens=40, completion_tokens=2) in items
    assert items[-1] == Finish("stop")


@pytest.mark.parametrize("reason", ["length", "tool_calls"])
async def test_other_finish_reasons_pass_through(
    server: OpenAIServer, provider: OpenAIProvider, reason: str
) -> None:
    server.script = Script(finish_reason=reason)
    assert (await collect(provider.stream(chat_request())))[-1] == Finish(reason)


# --- Errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code", "retryable", "words"),
    [
        (Script(status=429, retry_after="7"), "rate_limited", True, "retry after 7 s"),
        (Script(status=429, error_code="insufficient_quota"), "rate_limited", False, "quota"),
        (
            Script(status=401, error_message=f"Incorrect API key provided: {KEY}."),
            "auth",
            False,
            "",
        ),
        (Script(status=403), "auth", False, "credentials"),
        (Script(status=400, error_code="context_length_exceeded"), "context_length", False, ""),
        (
            # vLLM's wording, without a code.
            Script(status=400, error_message="This model's maximum context length is 4096."),
            "context_length",
            False,
            "too long",
        ),
        (Script(status=400, error_code="content_filter"), "content_filter", False, "filter"),
        (Script(status=500), "upstream", True, "HTTP 500"),
        (Script(status=503), "upstream", True, "HTTP 503"),
        (Script(status=404), "internal", False, "does not exist"),
    ],
    ids=lambda value: str(getattr(value, "status", "")) if isinstance(value, Script) else None,
)
async def test_error_answers_are_classified(
    server: OpenAIServer,
    provider: OpenAIProvider,
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
        (Script(error_after=2), "upstream"),
        (
            Script(error_after=2, error_type="requests", error_code="rate_limit_exceeded"),
            "rate_limited",
        ),
        (Script(drop_after=2), "upstream"),
        (Script(garbage_after=2), "upstream"),
        (Script(end_after=2), "upstream"),
        (Script(finish_reason="content_filter"), "content_filter"),
    ],
    ids=["error-object", "rate-limit-object", "dropped", "malformed", "unfinished", "filtered"],
)
async def test_failures_mid_stream_keep_the_text_before_them(
    server: OpenAIServer, provider: OpenAIProvider, script: Script, code: str
) -> None:
    server.script = script

    items, error = await collect_until_error(provider.stream(chat_request()))

    assert error.code == code
    assert text_of(items).startswith("Hello,")


async def test_a_filtered_answer_still_reports_its_usage(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    server.script = Script(finish_reason="content_filter")
    items, _error = await collect_until_error(provider.stream(chat_request()))
    assert Usage(17, 4) in items


@pytest.mark.parametrize(
    "script",
    [Script(hang_after_headers=True), Script(hang_after=2), Script(headers_delay=5)],
    ids=["headers-then-nothing", "stalls-mid-answer", "no-headers"],
)
async def test_a_silent_upstream_times_out(
    server: OpenAIServer, settings: Settings, script: Script
) -> None:
    settings.CHAT_PROVIDER_READ_TIMEOUT = 0.3
    server.script = script
    provider = OpenAIProvider(api_key=KEY, base_url=f"{server.url}/v1")

    started = time.monotonic()
    _items, error = await collect_until_error(provider.stream(chat_request()))

    assert error.code == "timeout"
    assert error.retryable
    assert time.monotonic() - started < 2


async def test_an_unreachable_server_is_an_upstream_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1")

    _items, error = await collect_until_error(provider.stream(chat_request()))

    assert error.code == "upstream"


# --- Closing the stream closes the HTTP request ------------------------------------------


async def test_closing_the_stream_early_closes_the_connection(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    server.script = Script(deltas=["a"] * 50, interval=0.1)
    stream = provider.stream(chat_request())
    async for item in stream:
        if isinstance(item, TextDelta) and item.text:
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
    server: OpenAIServer, provider: OpenAIProvider, script: Script
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
