"""Baseline (2), the naive relay: the streaming view the usual tutorials build.

A plain Django async view that calls the provider inside the response generator and
yields one SSE event per token: no decoupled generation, no stream log, no coalescing,
no database, no resume. It calls OpenAI as the SDK's README shows: a module-level
`AsyncOpenAI()` with its default HTTP client, `chat.completions.create(stream=True)`,
and `chunk.choices[0].delta.content` from each typed chunk.

`NAIVE_PARSER=app` (the `naive-parsed` relay of bench/run.py) keeps the same view but
reads the upstream through the app's own OpenAI provider (the SDK over aiohttp, chunks
left as plain JSON): what then separates it from the app is the relay's design alone.

    daphne bench.baselines.naive_relay:application
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from functools import cache

import openai
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

from chat.providers.base import ChatRequest, TextDelta, Turn
from chat.providers.openai import OpenAIProvider

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.naive_settings")

SYSTEM = "You are a helpful assistant."
APP_PARSER = os.environ.get("NAIVE_PARSER") == "app"


@cache
def client() -> openai.AsyncOpenAI:
    """The tutorial's module-level client (made on first use, on the server's loop)."""
    return openai.AsyncOpenAI(
        api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL, max_retries=0
    )


@cache
def provider() -> OpenAIProvider:
    return OpenAIProvider(api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL)


async def sdk_tokens(prompt: str) -> AsyncIterator[str]:
    stream = await client().chat.completions.create(
        model="bench-model",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        stream=True,
        max_tokens=4096,
    )
    async for chunk in stream:
        if chunk.choices and (text := chunk.choices[0].delta.content):
            yield text


async def provider_tokens(prompt: str) -> AsyncIterator[str]:
    chat = ChatRequest(
        model="bench-model",
        system_prompt=SYSTEM,
        turns=(Turn(role="user", content=prompt),),
        max_output_tokens=4096,
    )
    async for item in provider().stream(chat):
        if isinstance(item, TextDelta):
            yield item.text


async def relay(request: HttpRequest) -> StreamingHttpResponse:
    prompt = request.GET.get("prompt", "")
    tokens = provider_tokens if APP_PARSER else sdk_tokens

    async def events() -> AsyncIterator[str]:
        async for text in tokens(prompt):
            yield f"event: token\ndata: {json.dumps({'text': text})}\n\n"
        yield 'event: final\ndata: {"status": "complete"}\n\n'

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("relay", relay), path("healthz", healthz)]

application = get_asgi_application()
