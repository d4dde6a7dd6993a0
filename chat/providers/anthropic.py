"""Anthropic Messages, streamed as raw events.

Raw events are the cheapest way in: `messages.stream()` would also rebuild the whole
message on every delta, which the generation already does its own way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from weakref import WeakKeyDictionary

import anthropic
import httpx2

from chat.providers import sse, upstream
from chat.providers.base import (
    ChatRequest,
    Finish,
    Provider,
    ProviderError,
    StreamItem,
    TextDelta,
    Usage,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
# Anthropic's stop reasons in the words of the rest of the app; others pass unchanged.
FINISH_REASONS = {"end_turn": "stop", "max_tokens": "length"}


class JSONEvents(anthropic.AsyncStream[object]):
    """The SDK's stream of events, each left as plain JSON, decoded by `chat.providers.sse`.

    As the SDK's own: `ping` events and events without a name are skipped, and an
    `error` event raises the APIStatusError that the SDK would.
    """

    async def __stream__(self) -> AsyncIterator[object]:
        response = self.response
        try:
            async for name, payload in sse.events(response.aiter_bytes()):
                if name and name != "ping":
                    yield self._event(name, payload)
        finally:
            await response.aclose()

    def _event(self, name: str, payload: bytes) -> object:
        if name != "error":
            return sse.loads(payload)
        body: object
        try:
            body = sse.loads(payload)
            message = f"{body}"
        except ValueError:
            body = payload.decode("utf-8", "replace")
            message = body or f"Error code: {self.response.status_code}"
        raise anthropic.APIStatusError(message, response=self.response, body=body)


class AnthropicProvider(Provider):
    name = "anthropic"

    def __init__(self, *, api_key: str, base_url: str) -> None:
        self._api_key = api_key
        self._base_url = base_url or DEFAULT_BASE_URL
        # One pooled client per event loop: connections cannot move between loops.
        self._clients: WeakKeyDictionary[asyncio.AbstractEventLoop, anthropic.AsyncAnthropic]
        self._clients = WeakKeyDictionary()

    def _client(self) -> anthropic.AsyncAnthropic:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=upstream.client_timeout(),
                max_retries=0,  # Regenerate is the retry
                http_client=upstream.http_client(anthropic.DefaultAioHttpClient),
            )
        return client

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        body = {
            "model": request.model,
            # An answer that failed before its first word is empty, and the API refuses
            # empty turns; without it, the user turns around it are merged by the API.
            "messages": [
                {"role": turn.role, "content": turn.content}
                for turn in request.turns
                if turn.content
            ],
            "max_tokens": request.max_output_tokens,
            "stream": True,
        }
        if request.system_prompt:
            body["system"] = request.system_prompt
        prompt_tokens: int | None = None
        stop_reason: str | None = None
        try:
            # The SDK's own request, stream and errors (`event: error` included), but the
            # events stay plain JSON: its typed event models cost ~30 µs a token more,
            # and its line-by-line decoding more than JSONEvents does.
            response = await self._client().post(
                "/v1/messages",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=JSONEvents,
            )
            # Leaving this block, however it is left, closes the HTTP response.
            async with response:
                async for event in response:
                    if not isinstance(event, dict):
                        raise TypeError("an event is not a JSON object")
                    kind = event["type"]
                    if kind == "content_block_delta":
                        if event["delta"]["type"] == "text_delta":
                            yield TextDelta(str(event["delta"]["text"]))
                    elif kind == "message_start":
                        prompt_tokens = event["message"]["usage"].get("input_tokens")
                    elif kind == "message_delta":
                        usage = event["usage"]
                        prompt_tokens = usage.get("input_tokens") or prompt_tokens
                        yield Usage(prompt_tokens, usage.get("output_tokens"))
                        stop_reason = event["delta"].get("stop_reason") or stop_reason
        except Exception as error:
            raise self._error(error) from error
        if stop_reason == "refusal":
            raise upstream.content_filtered()
        if stop_reason is None:
            raise upstream.broken("The model's answer ended before it was finished")
        yield Finish(FINISH_REASONS.get(stop_reason, stop_reason))

    def _error(self, error: Exception) -> ProviderError:
        upstream.log_failure(self.name, error, self._api_key)
        if failure := upstream.transport_failure(error):
            return failure
        if isinstance(error, anthropic.APITimeoutError | httpx2.TimeoutException):
            return upstream.timed_out()
        if isinstance(error, anthropic.APIConnectionError | httpx2.HTTPError):
            return upstream.broken()
        if isinstance(error, ValueError | TypeError | LookupError | AttributeError):
            return upstream.broken("The model provider sent a malformed stream")
        if isinstance(error, anthropic.APIStatusError):
            # An error answer, or an `event: error` inside a 200 stream.
            in_stream = error.status_code == 200
            return upstream.classify(
                status=None if in_stream else error.status_code,
                kind=f"{error.type or ''} {error.error_code or ''}",
                text=error.api_message or "",
                secret=self._api_key,
                headers=None if in_stream else error.response.headers,
            )
        return ProviderError("internal", "The call to the model provider failed.")
