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

Sync work stays short here (a few queries per call; transactions never span two calls),
so requests sharing a thread rarely wait for each other, and a slow call only holds up
the requests that drew the same thread.
"""

from __future__ import annotations

import io
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler

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


class ChatASGIHandler(ASGIHandler):
    """ASGIHandler whose requests take turns on `request_threads`, and whose requests
    with a body that comes in one piece keep it in a plain BytesIO."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=request_threads.next()):
            await self.handle(scope, receive, send)

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
