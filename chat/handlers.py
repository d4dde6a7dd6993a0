"""Django's ASGI handler, with its requests' sync work on a few long-lived threads.

Stock Django gives every request a thread-sensitive context of its own, and asgiref a
new thread for it at the first sync call (loading the session, say), joined when the
request ends. An answer costs two requests (the send and its stream): two threads
started and joined, and their stacks and malloc arenas grown and given back, for a few
milliseconds of work each. Here each request runs its thread-sensitive calls on one of
a fixed set of single-thread executors instead. Its calls still run one at a time on one
thread, in order, which is all that thread sensitivity promises; requests merely take
turns on a thread they share with others.

A body that comes in one piece (every request but uploads in parts) is kept in a
BytesIO over its bytes, not in a spooled temporary file.

And a request's end leaves no cycle through its frames. Django's `handle` races the
response against the client's disconnect in a TaskGroup that it leaves by raising an
exception of a class made for each request: the exception group, its traceback and the
handler's frames form a cycle, which holds the request and its response until the
garbage collector finds it, and a class per request is slow to make and to collect (at
60 streams: 134 objects per request left to the collector, frames, timers and contexts
among them; 51 here).
Here the disconnect listener cancels the request's task through a plain done callback:
the frames and the response go when the request ends. (The request itself and what the
middleware hangs on it, its messages and user, still point at each other.)

Sync work stays short here (a few queries per call; transactions never span two calls),
so requests sharing a thread rarely wait for each other, and a slow call only holds up
the requests that drew the same thread.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import set_script_prefix

# Enough that a slow query or a PostgreSQL pool wait on one thread leaves most requests
# unaffected; few enough that every thread stays warm.
REQUEST_THREADS = 8


class RequestThreads:
    """A fixed set of single-thread executors, handed out in turn."""

    def __init__(self, size: int) -> None:
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"chat-request-{number}")
            for number in range(size)
        ]
        self._turns = itertools.cycle(self.executors)
        self._lock = threading.Lock()

    def next(self) -> ThreadPoolExecutor:
        with self._lock:
            return next(self._turns)


request_threads = RequestThreads(REQUEST_THREADS)


class _Disconnected:
    """The done callback of a request's disconnect listener: cancels the request's task
    when the listener ends by itself (the client left), until the request is over."""

    __slots__ = ("active", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.active = True
        self.fired = False

    def __call__(self, listener: asyncio.Task[None]) -> None:
        if self.active and not listener.cancelled():
            self.fired = True
            self.task.cancel()


class ChatASGIHandler(ASGIHandler):
    """ASGIHandler whose requests take turns on `request_threads`, leave no reference
    cycle, and keep a body that comes in one piece in a plain BytesIO."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=request_threads.next()):
            await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's `handle`, its TaskGroup and per-request exception class aside."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            await signals.request_started.asend(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None
                await self.send_response(error_response, send)
                await sync_to_async(error_response.close)()
                return
            response = await self._respond(request, receive, send)
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await sync_to_async(response.close)()

    async def _respond(
        self, request: HttpRequest, receive: Any, send: Any
    ) -> HttpResponseBase | None:
        """Get the response and send it, unless the client leaves first (then the work
        is cancelled, as Django cancels it). The response, once there is one."""
        task = asyncio.current_task()
        assert task is not None
        listener = asyncio.get_running_loop().create_task(self.listen_for_disconnect(receive))
        disconnected = _Disconnected(task)
        listener.add_done_callback(disconnected)
        response = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            # Ours (the client left) unless somebody else cancelled the task too.
            if not disconnected.fired or task.uncancel() > 0:
                raise
            error = listener.exception()
            if error is not None and not isinstance(error, RequestAborted):
                raise error from None  # an ASGI message out of place
        finally:
            disconnected.active = False
            if not listener.cancel() and not listener.cancelled():
                listener.exception()  # retrieved: it ended as the response did
        return response

    async def read_body(self, receive: Any) -> Any:
        """The body as Django reads it, but one that comes whole in the first message (a
        GET's empty body, a JSON send) in a BytesIO over its bytes rather than a
        SpooledTemporaryFile: the request of an event stream keeps its body file as long
        as the stream is open, and a spooled one costs ~0.6 KiB against 0.1."""
        first = await receive()
        if first["type"] == "http.disconnect":
            raise RequestAborted()
        body = first.get("body", b"")
        if not first.get("more_body", False) and len(body) <= settings.FILE_UPLOAD_MAX_MEMORY_SIZE:
            return io.BytesIO(body)
        # In parts, or too large to keep in memory: Django's way, from the first part.
        pending = [first]

        async def again() -> Any:
            return pending.pop() if pending else await receive()

        return await super().read_body(again)
