"""The ASGI handler reads request bodies as Django does, whole or in parts, serves a
request as Django does (a client that leaves cancels its view), and leaves no reference
cycle behind."""

from __future__ import annotations

import asyncio
import gc
from types import FrameType
from typing import Any

import pytest
from django.contrib.auth.decorators import login_not_required
from django.core import signals
from django.core.exceptions import RequestAborted
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import path

from chat.handlers import ChatASGIHandler
from tests.helpers import eventually, http_scope

# Requests run on the app's long-lived request threads, whose database connections
# outlive a test: Django checks them at every request's start.
pytestmark = pytest.mark.django_db

view_calls: list[str] = []


@login_not_required
async def slow_view(request: HttpRequest) -> HttpResponse:
    view_calls.append("started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        view_calls.append("cancelled")
        raise
    return HttpResponse("late")


@login_not_required
async def quick_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("quick")


urlpatterns = [path("slow", slow_view), path("quick", quick_view)]


def receiving(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


async def test_a_body_in_one_message_reads_back_whole() -> None:
    body_file = await ChatASGIHandler().read_body(
        receiving({"type": "http.request", "body": b'{"content": "hi"}'})
    )
    assert body_file.read() == b'{"content": "hi"}'


async def test_a_request_without_a_body_reads_empty() -> None:
    body_file = await ChatASGIHandler().read_body(receiving({"type": "http.request"}))
    assert body_file.read() == b""


async def test_a_body_in_parts_reads_back_in_order() -> None:
    body_file = await ChatASGIHandler().read_body(
        receiving(
            {"type": "http.request", "body": b"one ", "more_body": True},
            {"type": "http.request", "body": b"two ", "more_body": True},
            {"type": "http.request", "body": b"three"},
        )
    )
    assert body_file.read() == b"one two three"


async def test_a_body_over_the_memory_limit_goes_the_spooled_way(settings: Any) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 8
    body_file = await ChatASGIHandler().read_body(
        receiving({"type": "http.request", "body": b"0123456789abcdef"})
    )
    assert body_file.read() == b"0123456789abcdef"
    assert body_file._rolled  # on disk, as Django keeps a large body


@pytest.mark.parametrize("parts_before", [0, 1])
async def test_a_client_that_leaves_mid_body_aborts_the_request(parts_before: int) -> None:
    parts = [{"type": "http.request", "body": b"part", "more_body": True}] * parts_before
    with pytest.raises(RequestAborted):
        await ChatASGIHandler().read_body(receiving(*parts, {"type": "http.disconnect"}))


class Client:
    """One request's ASGI side: the request message, then a disconnect when told."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self._request = [{"type": "http.request"}]

    async def receive(self) -> dict[str, Any]:
        if self._request:
            return self._request.pop()
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


@pytest.fixture
def finished() -> Any:
    """How many times Django's request_finished signal was sent."""
    count = [0]

    def receiver(**kwargs: Any) -> None:
        count[0] += 1

    signals.request_finished.connect(receiver)
    yield count
    signals.request_finished.disconnect(receiver)


@pytest.mark.urls(__name__)
async def test_a_request_is_answered_and_finished(finished: list[int]) -> None:
    client = Client()
    await ChatASGIHandler()(http_scope("/quick"), client.receive, client.send)
    assert client.sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in client.sent[1:]) == b"quick"
    assert finished == [1]


@pytest.mark.urls(__name__)
async def test_a_client_that_leaves_cancels_the_view_and_the_request_ends_quietly(
    finished: list[int],
) -> None:
    view_calls.clear()
    client = Client()
    request = asyncio.create_task(
        ChatASGIHandler()(http_scope("/slow"), client.receive, client.send)
    )
    await eventually(lambda: view_calls)  # the slow view runs
    client.left.set()
    await asyncio.wait_for(request, 5)  # no error: a client that leaves is no failure
    assert view_calls == ["started", "cancelled"]
    assert client.sent == []
    assert finished == [1]


@pytest.mark.urls(__name__)
async def test_a_request_cancelled_from_outside_stays_cancelled() -> None:
    view_calls.clear()
    client = Client()
    request = asyncio.create_task(
        ChatASGIHandler()(http_scope("/slow"), client.receive, client.send)
    )
    await eventually(lambda: view_calls)  # the slow view runs
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert view_calls == ["started", "cancelled"]


@pytest.mark.urls(__name__)
async def test_a_request_leaves_no_cycle_through_its_frames() -> None:
    """Its response and the handler's frames are freed when it ends, not by the garbage
    collector: Django's own handler ends each request with an exception (of a class made
    for it) whose traceback holds the frames, and with them the response. (A request
    and the objects that the middleware hangs on it still point at each other.)"""
    handler = ChatASGIHandler()
    warm = Client()  # the first request: imports, caches
    await handler(http_scope("/quick"), warm.receive, warm.send)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        client = Client()
        await handler(http_scope("/quick"), client.receive, client.send)
        gc.collect()
        kept = [
            type(o).__qualname__
            for o in gc.garbage
            if isinstance(o, HttpResponseBase | BaseException | FrameType | type)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert client.sent[0]["status"] == 200
    assert kept == []
