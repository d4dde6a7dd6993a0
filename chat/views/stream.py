"""The SSE endpoint (CONTRACT §5): a thin encoder over the shared stream reader."""

from __future__ import annotations

from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from chat import services
from chat.db import holds_server_connections, release_connections
from chat.events import SSE_PING, Event, rendered_point, resume_point
from chat.models import Message
from chat.revocation import Credential, until, watch
from chat.streams.reader import Ping, follow, is_finished_at
from chat.views.access import Caller, sign_in
from chat.views.errors import json_error

# Tells the browser how long to wait before reconnecting after a drop.
RETRY_MS = 1000
# The last words of a stream whose sign-in ended (logout, new password, deactivated
# account, revoked token); the reconnection then answers 401 and EventSource gives up.
SSE_SIGNED_OUT = b": signed out\n\n"


@login_not_required
@csrf_exempt  # GET only: nothing to protect, and a token request carries no CSRF cookie
async def message_stream(request: HttpRequest, message_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return json_error(405, "method_not_allowed", f"{request.method} is not allowed here.")
    found = await sync_to_async(_caller_and_message)(request, message_id)
    if not isinstance(found, tuple):
        return found
    caller, message = found
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

    rendered = rendered_point(request.GET.get("rendered"))
    response = StreamingHttpResponse(
        _encode(follow(message, after, reset=reset, rendered=rendered), caller.credential),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _caller_and_message(
    request: HttpRequest, message_id: str
) -> tuple[Caller, Message] | HttpResponseBase:
    """Who asks and the answer they ask for, in one trip to the request's thread; or the
    response that refuses them."""
    caller = sign_in(request)
    if not isinstance(caller, Caller):
        return caller
    try:
        message = services.message_for(user=caller.user, message_id=message_id)
    except services.NotFound as error:
        return json_error(404, error.code, error.message)
    return caller, message


async def _encode(
    events: AsyncIterator[Event | Ping], credential: Credential
) -> AsyncIterator[bytes]:
    # The request's thread holds the connection that signed the user in and found the
    # message; Django would keep it until the stream ends, minutes from now. (An SQLite
    # connection is a file handle that the thread keeps anyway.)
    if holds_server_connections():
        await sync_to_async(release_connections)(keep_sqlite=True)
    yield f"retry: {RETRY_MS}\n\n".encode()
    async with watch(credential) as revoked:
        async for event in until(events, revoked):
            yield SSE_PING if isinstance(event, Ping) else event.sse()
        if revoked.done():
            yield SSE_SIGNED_OUT
