"""Real models through the whole app: OpenAI and Anthropic SDKs against the fake servers.

A message is sent through the JSON API, the generation calls the SDK-backed provider,
which talks HTTP to a fake upstream on 127.0.0.1; the answer is read back over SSE and
from the database. Nothing here is mocked but the model itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pytest_django.fixtures import Settings

from chat.models import Message
from tests.fakes import AnthropicServer, FakeServer, OpenAIServer, RecordedRequest, Script
from tests.fakes.samples import TRICKY_DELTAS, TRICKY_TEXT
from tests.helpers import ChatApi, SSEStream

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_KEY = "sk-proj-CANARY-openai-0d9c4e7b1a2f"
ANTHROPIC_KEY = "sk-ant-api03-CANARY-anthropic-8e3f6a1c"
CAP = 777


@dataclass
class Upstream:
    """One configured provider: its model id in CHAT_MODELS, its fake server and key."""

    provider: str
    model: str
    server: FakeServer
    key: str

    def sent(self, request: RecordedRequest) -> tuple[str | None, list[dict[str, str]], int]:
        """(system prompt, turns, output cap) of a request, whatever the provider."""
        body = request.json
        messages = list(body["messages"])
        if self.provider == "openai":
            system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
            return system, messages, body["max_tokens"]
        return body.get("system"), messages, body["max_tokens"]


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    with AnthropicServer() as server:
        yield server


@pytest.fixture
def configured(
    settings: Settings, openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    settings.CHAT_MODELS = ["demo:demo", "openai:gpt-test", "anthropic:claude-test"]
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.OPENAI_BASE_URL = f"{openai_server.url}/v1"
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.ANTHROPIC_BASE_URL = anthropic_server.url
    settings.CHAT_MAX_OUTPUT_TOKENS = CAP


@pytest.fixture(params=["openai", "anthropic"])
def upstream(
    request: pytest.FixtureRequest,
    configured: None,
    openai_server: OpenAIServer,
    anthropic_server: AnthropicServer,
) -> Upstream:
    if request.param == "openai":
        return Upstream("openai", "openai:gpt-test", openai_server, OPENAI_KEY)
    return Upstream("anthropic", "anthropic:claude-test", anthropic_server, ANTHROPIC_KEY)


async def no_message_streaming() -> bool:
    return not await Message.objects.filter(status=Message.Status.STREAMING).aexists()


async def db_message(message_id: str) -> Message:
    return await Message.objects.aget(id=message_id)


# --- Byte-exact text -------------------------------------------------------------------


async def test_awkward_text_arrives_byte_exact_everywhere(api: ChatApi, upstream: Upstream) -> None:
    upstream.server.script = Script(deltas=TRICKY_DELTAS)

    message = await api.ask("Hi", model=upstream.model)
    stream = await api.read(message["id"])

    assert "".join(stream.tokens) == TRICKY_TEXT
    assert stream.final is not None
    assert stream.final["status"] == "complete"
    assert stream.final["content"] == TRICKY_TEXT
    assert (await api.message(message["id"]))["content"] == TRICKY_TEXT
    assert (await db_message(message["id"])).content == TRICKY_TEXT


# --- Stop stops the meter --------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        Script(deltas=["tick "] * 100, interval=0.2),
        Script(headers_delay=10),
        Script(first_delta_delay=10),
    ],
    ids=["mid-answer", "before-headers", "before-first-delta"],
)
async def test_stop_closes_the_upstream_connection_within_a_second(
    api: ChatApi, upstream: Upstream, script: Script
) -> None:
    upstream.server.script = script
    message = await api.ask(model=upstream.model)
    (request,) = await upstream.server.await_requests(1)
    if script.interval:
        await api.read(message["id"], until=lambda stream: bool(stream.tokens))
    else:
        await asyncio.sleep(0.1)  # the request is waiting for its headers or first delta

    stopped_at = time.monotonic()
    response = await api.stop(message["id"])

    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    assert await asyncio.to_thread(request.wait_closed, 1.0)
    assert request.closed_at is not None
    assert request.closed_at - stopped_at < 1.0
    stopped = await db_message(message["id"])
    assert stopped.status == Message.Status.STOPPED
    # Every word the user saw is kept; a delta still in flight at Stop may be lost.
    ticks = stopped.content.count("tick ")
    assert stopped.content == "tick " * ticks
    assert (ticks >= 1) == bool(script.interval)
    assert ticks <= len(request.delta_times)
    assert await no_message_streaming()


# --- Failures end the answer with the right error ---------------------------------------


@pytest.mark.parametrize(
    ("script", "code", "partial"),
    [
        (Script(error_after=2), "upstream", "Hello,"),
        (Script(drop_after=2), "upstream", "Hello,"),
        (Script(status=429, retry_after="7"), "rate_limited", ""),
        (Script(hang_after=2), "timeout", "Hello,"),
        (Script(hang_after_headers=True), "timeout", ""),
    ],
    ids=["error-mid-stream", "dropped", "429", "stalls-mid-answer", "headers-then-nothing"],
)
async def test_a_failing_upstream_ends_the_answer_with_its_error(
    api: ChatApi,
    upstream: Upstream,
    settings: Settings,
    script: Script,
    code: str,
    partial: str,
) -> None:
    settings.CHAT_PROVIDER_READ_TIMEOUT = 0.3
    upstream.server.script = script

    message = await api.ask(model=upstream.model)
    stream = await api.read(message["id"])

    error = stream.event("error").data
    assert error["code"] == code
    assert error["retryable"] is True
    if code == "rate_limited":
        assert "retry after 7 s" in error["message"]
    assert stream.final is not None
    assert (stream.final["status"], stream.final["content"]) == ("error", partial)
    assert "".join(stream.tokens) == partial
    saved = await api.message(message["id"])
    assert (saved["status"], saved["content"]) == ("error", partial)
    assert saved["error"]["code"] == code
    assert await no_message_streaming()


# --- What goes upstream, and what comes back ---------------------------------------------


async def test_upstream_gets_the_system_prompt_the_branch_and_the_cap(
    api: ChatApi, upstream: Upstream
) -> None:
    upstream.server.script = Script(deltas=["Answer ", "one"])
    conversation = await api.create_conversation(model=upstream.model, system_prompt="Be terse.")
    first = await api.send(conversation["id"], "One?")
    await api.read(first["assistant_message"]["id"])
    upstream.server.script = Script(deltas=["Answer ", "two"])
    second = await api.send(conversation["id"], "Two?")
    await api.read(second["assistant_message"]["id"])
    # A new branch after the first answer: the second exchange is not on its path.
    branch = await api.send(
        conversation["id"], "Three?", parent_id=first["assistant_message"]["id"]
    )
    await api.read(branch["assistant_message"]["id"])

    requests = upstream.server.requests
    assert [upstream.sent(request) for request in requests] == [
        ("Be terse.", [{"role": "user", "content": "One?"}], CAP),
        (
            "Be terse.",
            [
                {"role": "user", "content": "One?"},
                {"role": "assistant", "content": "Answer one"},
                {"role": "user", "content": "Two?"},
            ],
            CAP,
        ),
        (
            "Be terse.",
            [
                {"role": "user", "content": "One?"},
                {"role": "assistant", "content": "Answer one"},
                {"role": "user", "content": "Three?"},
            ],
            CAP,
        ),
    ]
    assert all(request.json["model"] == upstream.model.split(":")[1] for request in requests)


async def test_usage_finish_reason_and_timings_are_recorded(
    api: ChatApi, upstream: Upstream
) -> None:
    upstream.server.script = Script(
        deltas=["a", "b", "c"],
        first_delta_delay=0.2,
        prompt_tokens=40,
        completion_tokens=3,
        finish_reason="length" if upstream.provider == "openai" else "max_tokens",
    )

    message = await api.ask(model=upstream.model)
    stream = await api.read(message["id"])

    assert stream.event("usage").data == {"prompt_tokens": 40, "completion_tokens": 3}
    assert stream.final is not None and stream.final["finish_reason"] == "length"
    saved = await api.message(message["id"])
    assert saved["status"] == "complete"
    assert saved["usage"] == {"prompt_tokens": 40, "completion_tokens": 3}
    assert saved["finish_reason"] == "length"
    assert saved["ttft_ms"] is not None and saved["ttft_ms"] >= 200
    assert saved["duration_ms"] is not None and saved["duration_ms"] >= saved["ttft_ms"]


# --- Configuration ---------------------------------------------------------------------


async def test_a_provider_without_its_key_is_not_offered(
    api: ChatApi, configured: None, settings: Settings
) -> None:
    settings.ANTHROPIC_API_KEY = ""

    response = await api.post("/api/conversations", {"model": "anthropic:claude-test"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_model"


async def test_a_keyless_openai_compatible_server_is_offered_with_its_url_alone(
    api: ChatApi, configured: None, settings: Settings, openai_server: OpenAIServer
) -> None:
    settings.OPENAI_API_KEY = ""

    message = await api.ask(model="openai:gpt-test")
    stream = await api.read(message["id"])

    assert stream.final is not None and stream.final["content"] == "Hello, world!"
    assert openai_server.requests[0].header("Authorization") is None


async def test_the_model_picker_offers_the_configured_models(
    api: ChatApi, configured: None, settings: Settings
) -> None:
    settings.ANTHROPIC_API_KEY = ""

    page = (await api.get("/")).content.decode()

    assert 'value="openai:gpt-test"' in page
    assert "anthropic:claude-test" not in page


# --- Secrets -----------------------------------------------------------------------------


async def test_no_api_key_appears_anywhere(
    api: ChatApi,
    configured: None,
    openai_server: OpenAIServer,
    anthropic_server: AnthropicServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    streams: list[SSEStream] = []
    for server, model, key in (
        (openai_server, "openai:gpt-test", OPENAI_KEY),
        (anthropic_server, "anthropic:claude-test", ANTHROPIC_KEY),
    ):
        # A good answer, then an upstream that quotes the key back in its error.
        server.queue(Script(), Script(status=401, error_message=f"Invalid key: {key}"))
        conversation = await api.create_conversation(model=model)
        for content in ("First", "Second"):
            sent = await api.send(conversation["id"], content)
            streams.append(await api.read(sent["assistant_message"]["id"]))
        for path in ("/", f"/c/{conversation['id']}/", f"/api/conversations/{conversation['id']}"):
            response = await api.get(path)
            assert response.status_code == 200
            seen.append(response.content.decode())
    seen.append((await api.get("/api/conversations")).content.decode())
    seen.extend(json.dumps([event.data for event in stream.events]) for stream in streams)
    seen.append(caplog.text)
    seen.extend(repr(record.args) for record in caplog.records)

    assert [stream.final["status"] for stream in streams if stream.final] == [
        "complete",
        "error",
    ] * 2
    assert [stream.event("error").data["code"] for stream in streams[1::2]] == ["auth", "auth"]
    assert "call failed" in caplog.text  # the failures were logged, without the key
    for text in seen:
        assert OPENAI_KEY not in text
        assert ANTHROPIC_KEY not in text
    assert any(
        request.header("Authorization") == f"Bearer {OPENAI_KEY}"
        for request in openai_server.requests
    )
