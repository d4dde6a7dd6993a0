"""OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, llama.cpp…).

The output cap is `max_completion_tokens` on OpenAI's own API (its reasoning models
refuse `max_tokens`) and `max_tokens` anywhere else, the one name every
OpenAI-compatible server accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from weakref import WeakKeyDictionary

import httpx2
import openai

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

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The SDK wants some key to start; a keyless server is then sent no Authorization at all.
KEYLESS = "no-key"


class JSONChunks(openai.AsyncStream[object]):
    """The SDK's stream of chunks, each left as plain JSON, decoded by `chat.providers.sse`.

    As the SDK's own: `[DONE]` ends it (the rest of the body is read, so that the
    connection can serve another request), and a chunk with an `error` raises APIError.
    """

    async def __stream__(self) -> AsyncIterator[object]:
        response = self.response
        done = False
        try:
            # After `[DONE]` the loop goes on only to read the rest of the body.
            async for _name, payload in sse.events(response.aiter_bytes()):
                if payload.startswith(b"[DONE]"):
                    done = True
                elif not done:
                    yield self._chunk(payload)
        finally:
            await response.aclose()

    def _chunk(self, payload: bytes) -> object:
        chunk = sse.loads(payload)
        if isinstance(chunk, dict) and chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            if not isinstance(message, str) or not message:
                message = "An error occurred during streaming"
            raise openai.APIError(message=message, request=self.response.request, body=error)
        return chunk


def is_openai_api(base_url: str) -> bool:
    """True for OpenAI's own API, which takes `max_completion_tokens`."""
    return httpx2.URL(base_url).host == "api.openai.com"


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, *, api_key: str, base_url: str) -> None:
        self._api_key = api_key
        self._base_url = base_url or DEFAULT_BASE_URL
        self._official = is_openai_api(self._base_url)
        self._options: openai.RequestOptions = {"security": {"bearer_auth": True}}
        if not api_key:
            self._options["headers"] = {"Authorization": openai.omit}
        # One pooled client per event loop: connections cannot move between loops.
        self._clients: WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI]
        self._clients = WeakKeyDictionary()

    def _client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = openai.AsyncOpenAI(
                api_key=self._api_key or KEYLESS,
                base_url=self._base_url,
                timeout=upstream.client_timeout(),
                # Regenerate is the retry: the SDK's would sleep while the user watches.
                max_retries=0,
                http_client=upstream.http_client(openai.DefaultAioHttpClient),
            )
        return client

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        system = [{"role": "system", "content": request.system_prompt}]
        turns = [{"role": turn.role, "content": turn.content} for turn in request.turns]
        cap_name = "max_completion_tokens" if self._official else "max_tokens"
        body = {
            "model": request.model,
            "messages": (system if request.system_prompt else []) + turns,
            "stream": True,
            "stream_options": {"include_usage": True},
            cap_name: request.max_output_tokens,
        }
        finish: str | None = None
        try:
            # The SDK's own request, stream and errors, but chunks stay plain JSON:
            # building its typed chunk models cost ~300 µs a token, 5x this whole loop,
            # and its line-by-line decoding ~12 µs more than JSONChunks.
            response = await self._client().post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=JSONChunks,
                options=self._options,
            )
            # Leaving this block, however it is left, closes the HTTP response.
            async with response:
                async for chunk in response:
                    if not isinstance(chunk, dict):
                        raise TypeError("a chunk is not a JSON object")
                    if usage := chunk.get("usage"):
                        yield Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0) != 0:
                            continue
                        text = (choice.get("delta") or {}).get("content")
                        if text is not None:
                            yield TextDelta(str(text))
                        finish = choice.get("finish_reason") or finish
        except Exception as error:
            raise self._error(error) from error
        if finish == "content_filter":
            raise upstream.content_filtered()
        if finish is None:
            raise upstream.broken("The model's answer ended before it was finished")
        yield Finish(str(finish))

    def _error(self, error: Exception) -> ProviderError:
        upstream.log_failure(self.name, error, self._api_key)
        if failure := upstream.transport_failure(error):
            return failure
        if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException):
            return upstream.timed_out()
        if isinstance(error, openai.APIConnectionError | httpx2.HTTPError):
            return upstream.broken()
        if isinstance(error, ValueError | TypeError | LookupError | AttributeError):
            return upstream.broken("The model provider sent a malformed stream")
        if isinstance(error, openai.APIError):
            # An error answer (APIStatusError), or an `error` object inside the stream.
            answer = error if isinstance(error, openai.APIStatusError) else None
            body = error.body
            text = str(body.get("message", "")) if isinstance(body, dict) else str(body or "")
            return upstream.classify(
                status=answer.status_code if answer else None,
                kind=f"{error.type or ''} {error.code or ''}",
                text=text,
                secret=self._api_key,
                headers=answer.response.headers if answer else None,
            )
        return ProviderError("internal", "The call to the model provider failed.")
