"""Test helpers: an SSE client that reads like a browser, a JSON API client, a scripted provider.

The SSE client parses the wire format as the WHATWG EventSource does (lines end in CR, LF
or CRLF; a blank line dispatches; `:` starts a comment), so a framing bug in the server
shows up here as it would in a browser. Closing a stream cancels the task that reads it,
which is what the ASGI server does when a browser goes away.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import json
import re
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlencode

from django.http import HttpResponse
from django.test import AsyncClient
from django.test.client import AsyncClientHandler

from chat import generation
from chat.providers.base import ChatRequest, Provider, StreamItem, TextDelta

JSON = "application/json"
TERMINAL = {"complete", "stopped", "error", "interrupted"}


# --- SSE parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    id: int | None
    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class SSEComment:
    text: str


_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental parser of `text/event-stream` bytes into events and comments."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._data: list[str] = []
        self._name = ""
        self._id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent | SSEComment]:
        self._buffer += self._decoder.decode(chunk)
        items: list[SSEEvent | SSEComment] = []
        while match := _LINE_END.search(self._buffer):
            if match.group() == "\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a CRLF split across chunks
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            item = self._line(line)
            if item is not None:
                items.append(item)
        return items

    def _line(self, line: str) -> SSEEvent | SSEComment | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return SSEComment(line[1:].removeprefix(" "))
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._name = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, name, id_ = self._data, self._name, self._id
        self._data, self._name, self._id = [], "", None
        if not data:
            return None
        return SSEEvent(
            id=int(id_) if id_ is not None else None,
            name=name or "message",
            data=json.loads("\n".join(data)),
        )


class StreamStalled(AssertionError):
    pass


class SSEStream:
    """A live reader of one streaming response; `events` holds what it has consumed."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = dict(response.headers.items())
        self.events: list[SSEEvent] = []
        self.comments: list[str] = []
        self.ended = False  # the server closed the stream
        self._parser = SSEParser()
        self._items: deque[SSEEvent | SSEComment] = deque()
        self._chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        if response.streaming:
            self._task = asyncio.create_task(self._pump())
        else:
            self.ended = True

    async def _pump(self) -> None:
        try:
            async for chunk in self.response.streaming_content:  # type: ignore[attr-defined]
                self._chunks.put_nowait(chunk)
        except Exception as error:  # surface server errors in the test
            self._chunks.put_nowait(error)
        self._chunks.put_nowait(None)

    @property
    def retry(self) -> int | None:
        return self._parser.retry

    @property
    def pings(self) -> int:
        return self.comments.count("ping")

    @property
    def names(self) -> list[str]:
        return [event.name for event in self.events]

    @property
    def ids(self) -> list[int | None]:
        return [event.id for event in self.events]

    @property
    def last_id(self) -> int | None:
        return self.events[-1].id if self.events else None

    @property
    def tokens(self) -> list[str]:
        return [event.data["text"] for event in self.events if event.name == "token"]

    @property
    def text(self) -> str:
        """The answer as a client builds it: tokens appended, `reset` replacing."""
        text = ""
        for event in self.events:
            if event.name == "reset":
                text = event.data["content"]
            elif event.name == "token":
                text += event.data["text"]
        return text

    @property
    def final(self) -> dict[str, Any] | None:
        finals = [event.data for event in self.events if event.name == "final"]
        return finals[-1] if finals else None

    def event(self, name: str) -> SSEEvent:
        found = [event for event in self.events if event.name == name]
        assert len(found) == 1, f"expected one {name!r} event, got {self.names}"
        return found[0]

    async def next_item(self, timeout: float) -> SSEEvent | SSEComment | None:
        """The next event or comment, or None once the server has closed the stream."""
        async with asyncio.timeout(timeout):
            while not self._items:
                if self.ended:
                    return None
                chunk = await self._chunks.get()
                if chunk is None:
                    self.ended = True
                elif isinstance(chunk, BaseException):
                    raise chunk
                else:
                    self._items.extend(self._parser.feed(chunk))
        item = self._items.popleft()
        if isinstance(item, SSEEvent):
            self.events.append(item)
        else:
            self.comments.append(item.text)
        return item

    async def read(
        self,
        *,
        until: Callable[[SSEStream], bool] | None = None,
        events: int | None = None,
        timeout: float = 10.0,
    ) -> SSEStream:
        """Consume until `until(self)` holds, `events` more events arrived, or the end."""
        wanted = None if events is None else len(self.events) + events
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (until is not None and until(self)):
            if wanted is not None and len(self.events) >= wanted:
                break
            try:
                item = await self.next_item(deadline - loop.time())
            except TimeoutError:
                raise StreamStalled(
                    f"no progress within {timeout}s; events so far: {self.events!r}"
                ) from None
            if item is None:
                break
        return self

    async def read_to_end(self, timeout: float = 10.0) -> SSEStream:
        await self.read(timeout=timeout)
        assert self.ended, "the server did not close the stream"
        return self

    async def close(self) -> None:
        """Drop the connection, as a browser does: the server's generator is cancelled."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def assert_ids_increase(events: list[SSEEvent]) -> None:
    ids = [event.id for event in events]
    assert all(isinstance(i, int) for i in ids), f"every event needs an id: {ids}"
    assert all(a < b for a, b in itertools.pairwise(ids)), f"ids not increasing: {ids}"


# --- The JSON API ------------------------------------------------------------------------


@cache
def _handler(enforce_csrf_checks: bool) -> AsyncClientHandler:
    # Each new handler builds the middleware chain, and WhiteNoise's middleware then scans
    # every collected static file: shared, that cost is paid once per run, not per client.
    return AsyncClientHandler(enforce_csrf_checks)


def async_client(user: Any = None, *, enforce_csrf_checks: bool = False) -> AsyncClient:
    client = AsyncClient(enforce_csrf_checks=enforce_csrf_checks)
    client.handler = _handler(enforce_csrf_checks)
    if user is not None:
        client.force_login(user)
    return client


class ChatApi:
    """The JSON API as one user (or nobody) sees it, through Django's AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def get(self, path: str, **extra: Any) -> HttpResponse:
        return await self.client.get(path, **extra)  # type: ignore[no-any-return]

    async def post(self, path: str, data: Any = None, **extra: Any) -> HttpResponse:
        body = data if isinstance(data, (str, bytes)) else json.dumps(data or {})
        return await self.client.post(path, body, content_type=JSON, **extra)  # type: ignore[no-any-return]

    async def patch(self, path: str, data: Any = None, **extra: Any) -> HttpResponse:
        body = data if isinstance(data, (str, bytes)) else json.dumps(data or {})
        return await self.client.patch(path, body, content_type=JSON, **extra)  # type: ignore[no-any-return]

    async def delete(self, path: str, **extra: Any) -> HttpResponse:
        return await self.client.delete(path, **extra)  # type: ignore[no-any-return]

    async def create_conversation(self, **fields: Any) -> dict[str, Any]:
        response = await self.post("/api/conversations", fields)
        assert response.status_code == 201, response.content
        return response.json()  # type: ignore[no-any-return]

    async def send(self, conversation_id: str, content: str = "Hello", **fields: Any) -> dict:
        response = await self.post(
            f"/api/conversations/{conversation_id}/messages", {"content": content, **fields}
        )
        assert response.status_code == 201, response.content
        return response.json()  # type: ignore[no-any-return]

    async def ask(self, content: str = "Hello", **conversation: Any) -> dict[str, Any]:
        """A new conversation and a first message in it; returns the assistant message."""
        created = await self.create_conversation(**conversation)
        return (await self.send(created["id"], content))["assistant_message"]  # type: ignore[no-any-return]

    async def message(self, message_id: str) -> dict[str, Any]:
        response = await self.get(f"/api/messages/{message_id}")
        assert response.status_code == 200, response.content
        return response.json()  # type: ignore[no-any-return]

    async def stop(self, message_id: str, **fields: Any) -> HttpResponse:
        return await self.post(f"/api/messages/{message_id}/stop", fields)

    async def open_stream(
        self,
        message_id: str,
        *,
        after: Any = None,
        last_event_id: Any = None,
        rendered: int | None = None,
    ) -> SSEStream:
        query = {"after": after, "rendered": rendered}
        path = f"/api/messages/{message_id}/stream"
        if any(value is not None for value in query.values()):
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        return SSEStream(await self.client.get(path, headers=headers))

    async def read(
        self,
        message_id: str,
        *,
        after: Any = None,
        last_event_id: Any = None,
        events: int | None = None,
        until: Callable[[SSEStream], bool] | None = None,
        timeout: float = 10.0,
    ) -> SSEStream:
        """Open the stream, read to `final` (or `events` events, or `until`), disconnect."""
        stream = await self.open_stream(message_id, after=after, last_event_id=last_event_id)
        try:
            await stream.read(events=events, until=until, timeout=timeout)
        finally:
            await stream.close()
        return stream

    async def finished(self, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the generation of this process to end; the message as the API shows it."""
        await generation.generation_wait(uuid.UUID(message_id), timeout)
        message = await self.message(message_id)
        assert message["status"] in TERMINAL, message
        return message


def http_scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """The ASGI scope of a GET of `path`, as a server hands it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


# --- A provider the test drives ----------------------------------------------------------


class Block:
    """A script step that waits until the generation is cancelled."""


BLOCK = Block()


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass
class ProviderRun:
    request: ChatRequest
    started: asyncio.Event = field(default_factory=asyncio.Event)
    yielded: int = 0
    closed: bool = False  # the stream's clean-up ran (cancel, close or end)
    cancelled: bool = False


Step = str | StreamItem | asyncio.Event | Pause | Block | BaseException


class ScriptedProvider(Provider):
    """Plays `script` for every generation: text, usage, finish, waits, pauses, errors.

    A `str` is a text delta; an `asyncio.Event` waits until the test sets it; `BLOCK`
    waits until the generation is cancelled; an exception instance is raised.
    """

    name = "test"
    model_id = "test:scripted"

    def __init__(self) -> None:
        self.script: list[Step] = []
        self.runs: list[ProviderRun] = []

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        run = ProviderRun(request)
        self.runs.append(run)
        return self._play(run, list(self.script))

    async def _play(self, run: ProviderRun, script: list[Step]) -> AsyncGenerator[StreamItem]:
        run.started.set()
        try:
            for step in script:
                if isinstance(step, str):
                    run.yielded += 1
                    yield TextDelta(step)
                elif isinstance(step, asyncio.Event):
                    await step.wait()
                elif isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Block):
                    await asyncio.Event().wait()
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
        except (asyncio.CancelledError, GeneratorExit):
            run.cancelled = True
            raise
        finally:
            run.closed = True


async def eventually(check: Callable[[], Any], timeout: float = 5.0, every: float = 0.02) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)
