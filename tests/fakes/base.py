"""A tiny HTTP/1.1 server on 127.0.0.1 for fake model providers.

It runs its own asyncio loop in a background thread, so sync tests, async tests and the
benchmark can all use it. Each request is answered by a `Script` (what to stream, how
fast, and how to misbehave) and recorded as a `RecordedRequest` (body, headers, and
when the client went away). Subclasses only say how a script becomes their provider's
wire format.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self


@dataclass
class Script:
    """How the fake answers one request. Delta indexes count from 0."""

    deltas: Sequence[str] = ("Hello", ",", " world", "!")
    interval: float = 0.0  # seconds between deltas
    headers_delay: float = 0.0  # before the status line
    first_delta_delay: float = 0.0  # after the headers, before the first delta
    hang_after_headers: bool = False  # headers, then nothing until the client leaves
    hang_after: int | None = None  # send this many deltas, then nothing
    error_after: int | None = None  # send this many deltas, then the in-stream error event
    error_type: str = ""  # the provider's error type (default: the server's own)
    error_message: str = ""
    error_code: str = ""  # OpenAI's error `code`
    drop_after: int | None = None  # send this many deltas, then cut the TCP connection
    garbage_after: int | None = None  # send this many deltas, then a frame that is not JSON
    end_after: int | None = None  # send this many deltas, then end the body without finishing
    status: int = 200  # anything else answers an error JSON body instead of a stream
    retry_after: str | None = None  # `Retry-After` of an error answer
    finish_reason: str = ""  # the provider's stop/finish reason (default: its normal one)
    prompt_tokens: int = 17
    completion_tokens: int | None = None  # default: one per delta
    newline: str = "\n"  # SSE line ending: "\n" or "\r\n"
    fragment: int | None = None  # write the body in HTTP chunks of this many bytes

    def completion_count(self) -> int:
        return len(self.deltas) if self.completion_tokens is None else self.completion_tokens


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    received_at: float  # time.monotonic(), comparable across processes on Linux
    peer: int = 0  # the client's port: the same for requests on one pooled connection
    delta_times: list[float] = field(default_factory=list)  # when each delta was sent
    finished_at: float | None = None  # when the whole answer was sent
    closed_at: float | None = None  # when the client left before the answer was complete
    closed: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[-1] if values else None

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)


DeltaSender = Callable[[str], Awaitable[None]]
Ending = Literal["complete", "error", "dropped", "garbage", "truncated"]


class ClientGone(Exception):
    """The client closed the connection while the answer was being written."""


class Exchange:
    """One request being answered: write helpers that notice a client that has left."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: RecordedRequest,
        script: Script,
    ) -> None:
        self.writer = writer
        self.record = record
        self.script = script
        # The client sends nothing while it waits for the answer (no pipelining), so the
        # only thing this read can see is the connection closing - or the next request.
        self.watch: asyncio.Task[bytes] = asyncio.ensure_future(self._watch(reader))

    async def _watch(self, reader: asyncio.StreamReader) -> bytes:
        try:
            data = await reader.read(1)
        except OSError:
            data = b""
        if not data and self.record.finished_at is None:
            self.record.closed_at = time.monotonic()
            self.record.closed.set()
        return data

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
        else:
            await asyncio.wait([self.watch], timeout=seconds)
        if self.record.closed.is_set():
            raise ClientGone

    async def hang(self) -> None:
        await asyncio.wait([self.watch])
        raise ClientGone

    async def write(self, data: bytes) -> None:
        if self.record.closed.is_set():
            raise ClientGone
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError:
            raise ClientGone from None

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = {529: "Site Overloaded"}.get(status, "Error")  # Anthropic's own status
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers), "", ""]
        await self.write("\r\n".join(lines).encode())

    async def chunk(self, data: bytes) -> None:
        """Send body bytes as HTTP/1.1 chunks (split further when the script says so)."""
        size = self.script.fragment or len(data) or 1
        for start in range(0, len(data), size):
            piece = data[start : start + size]
            await self.write(b"%x\r\n%s\r\n" % (len(piece), piece))

    async def end(self) -> None:
        await self.write(b"0\r\n\r\n")
        self.record.finished_at = time.monotonic()

    def drop(self) -> None:
        """Cut the connection without finishing the chunked body."""
        self.record.finished_at = time.monotonic()
        self.writer.transport.abort()

    async def json(self, status: int, body: object, headers: Sequence[tuple[str, str]]) -> None:
        payload = json.dumps(body).encode()
        await self.start(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                *headers,
            ],
        )
        await self.write(payload)
        self.record.finished_at = time.monotonic()


class FakeServer:
    """Serve scripted answers on 127.0.0.1 (ephemeral port) from a background thread.

    `script` answers every request; `queue(...)` scripts the next requests one by one.
    """

    name = "fake"
    paths: tuple[str, ...] = ()

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[RecordedRequest] = []
        self._queued: deque[Script] = deque()
        self._arrived = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    # --- Life cycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        ready = threading.Event()
        loop = self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"{self.name}-server", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=2)
            loop.stop()

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        thread.join(5)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- Scripting and inspection -------------------------------------------------

    def queue(self, *scripts: Script) -> None:
        self._queued.extend(scripts)

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{self.name}: {len(self.requests)} requests, not {count}")
            return list(self.requests)

    async def await_requests(self, count: int = 1, timeout: float = 5.0) -> list[RecordedRequest]:
        """`wait_for_requests` for async tests: polls instead of blocking the loop."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {len(self.requests)} requests, not {count}")
            await asyncio.sleep(0.005)
        return list(self.requests)

    # --- Serving ------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        first = b""
        peer = int(writer.get_extra_info("peername")[1])
        try:
            while True:
                record = await self._read_request(reader, first, peer)
                if record is None:
                    break
                with self._arrived:
                    self.requests.append(record)
                    self._arrived.notify_all()
                script = self._queued.popleft() if self._queued else self.script
                exchange = Exchange(reader, writer, record, script)
                try:
                    if record.method == "POST" and record.path.split("?")[0] in self.paths:
                        await self.respond(exchange)
                    else:
                        await exchange.json(404, self.not_found_body(record.path), [])
                except ClientGone:
                    break
                if writer.transport.is_closing():
                    break
                first = await exchange.watch  # the next request's first byte, or b"" at EOF
                if not first:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client or the server's own shutdown ended the connection
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _read_request(
        self, reader: asyncio.StreamReader, first: bytes, peer: int
    ) -> RecordedRequest | None:
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        received_at = time.monotonic()
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers = [
            (name.strip(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines if line)
        ]
        lowered = {name.lower(): value for name, value in headers}
        if "content-length" in lowered:
            body = await reader.readexactly(int(lowered["content-length"]))
        elif lowered.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        else:
            body = b""
        return RecordedRequest(method, path, headers, body, received_at, peer)

    # --- For subclasses -----------------------------------------------------------

    async def respond(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def not_found_body(self, path: str) -> object:
        return {"error": {"message": f"Unknown path {path}", "type": "not_found"}}

    @staticmethod
    def sse(newline: str, data: object, event: str | None = None) -> bytes:
        """One SSE event. JSON as the providers send it: compact, UTF-8, no raw newline."""
        compact = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        payload = data if isinstance(data, str) else compact
        lines = ([f"event: {event}"] if event else []) + [f"data: {payload}"]
        return (newline.join(lines) + newline + newline).encode()

    @staticmethod
    async def end_early(exchange: Exchange, ending: Ending, event: str | None = None) -> None:
        """Finish the body of an answer that did not complete (unless it was cut)."""
        if ending == "garbage":
            newline = exchange.script.newline
            await exchange.chunk(FakeServer.sse(newline, '{"id": oops', event=event))
        if ending != "dropped":
            await exchange.end()

    @staticmethod
    async def stream_deltas(exchange: Exchange, send_delta: DeltaSender) -> Ending:
        """Send the script's deltas with its pacing and faults; say how the answer ends."""
        script = exchange.script
        await exchange.sleep(script.first_delta_delay)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index, text in enumerate(script.deltas):
            if ending := await FakeServer.fault(exchange, index):
                return ending
            if index and script.interval:
                # Pace against the start so timer jitter does not accumulate.
                await exchange.sleep(started + index * script.interval - loop.time())
            await send_delta(text)
            exchange.record.delta_times.append(time.monotonic())
        return await FakeServer.fault(exchange, len(script.deltas)) or "complete"

    @staticmethod
    async def fault(exchange: Exchange, sent: int) -> Ending | None:
        """Misbehave as scripted once `sent` deltas are out."""
        script = exchange.script
        if script.hang_after == sent:
            await exchange.hang()
        if script.drop_after == sent:
            exchange.drop()
            return "dropped"
        if script.error_after == sent:
            return "error"
        if script.garbage_after == sent:
            return "garbage"
        if script.end_after == sent:
            return "truncated"
        return None
