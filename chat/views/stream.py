"""The SSE endpoint (CONTRACT §5): a thin encoder over the shared stream reader."""

from __future__ import annotations

from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from chat import services
from chat.events import SSE_PING, Event, resume_point
from chat.models import Message
from chat.streams.reader import Ping, follow, is_finished_at
from chat.views.errors import json_error

# Tells the browser how long to wait before reconnecting after a drop.
RETRY_MS = 1000


@login_not_required
async def message_stream(request: HttpRequest, message_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return json_error(405, "method_not_allowed", f"{request.method} is not allowed here.")
    user = await request.auser()
    if not user.is_authenticated:
        return json_error(401, "unauthenticated", "Sign in or send an API token.")
    try:
        message = await sync_to_async(services.message_for)(user=user, message_id=message_id)
    except services.NotFound as error:
        return json_error(404, error.code, error.message)
    if message.role != Message.Role.ASSISTANT:
        return json_error(400, "not_an_answer", "Only assistant messages have a stream.")

    # EventSource resends the last id as a header; a fresh EventSource can only say it in
    # the URL. The header is the newer of the two when both are present.
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        raw = request.GET.get("after")
    after, reset = resume_point(raw)
    if is_finished_at(message, after):
        return HttpResponse(status=204)  # EventSource stops reconnecting on 204

    response = StreamingHttpResponse(
        _encode(follow(message, after, reset=reset)), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _encode(events: AsyncIterator[Event | Ping]) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n\n".encode()
    async for event in events:
        yield SSE_PING if isinstance(event, Ping) else event.sse()
