"""Baseline (2), the naive relay: the streaming view the usual tutorials build.

A plain Django async view that calls the provider inside the response generator and
yields one SSE event per token. It uses the app's own OpenAI provider (the SDK's stream,
chunks parsed as plain JSON), so what separates it from the app is the relay's design,
not the parser: no decoupled generation, no stream log, no coalescing, no database, and
no resume. (A tutorial that builds the SDK's typed chunk objects pays ~300 µs more per
token; see chat/providers/openai.py.)

    daphne bench.baselines.naive_relay:application
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from functools import cache

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

from chat.providers.base import ChatRequest, TextDelta, Turn
from chat.providers.openai import OpenAIProvider

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.naive_settings")


@cache
def provider() -> OpenAIProvider:
    """One provider, and so one pooled SDK client, for the process (as a tutorial's
    module-level client)."""
    return OpenAIProvider(api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL)


async def relay(request: HttpRequest) -> StreamingHttpResponse:
    chat = ChatRequest(
        model="bench-model",
        system_prompt="You are a helpful assistant.",
        turns=(Turn(role="user", content=request.GET.get("prompt", "")),),
        max_output_tokens=4096,
    )

    async def events() -> AsyncIterator[str]:
        async for item in provider().stream(chat):
            if isinstance(item, TextDelta):
                yield f"event: token\ndata: {json.dumps({'text': item.text})}\n\n"
        yield 'event: final\ndata: {"status": "complete"}\n\n'

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("relay", relay), path("healthz", healthz)]

application = get_asgi_application()
provider()  # import the SDK now, as the app does at start-up
