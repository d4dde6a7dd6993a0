"""Lean asyncio clients for the load generator: HTTP/1.1 (with SSE) and WebSocket.

They are `asyncio.Protocol`s rather than httpx2 or websockets so that hundreds of
streams cost the load generator little CPU. Every read is timed on arrival
(`time.monotonic()`, before any parsing), and every byte is counted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

BodyCallback = Callable[[bytes, float], None]
ByteCallback = Callable[[int, float], None]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    at: float = 0.0  # when the headers arrived


class ConnectionClosed(Exception):
    pass


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _EOF, _IDLE = range(8)


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; requests run one after another."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.state = _IDLE
        self.remaining = 0
        self.response: Response | None = None
        self.headers_ready: asyncio.Future[Response] | None = None
        self.done: asyncio.Future[Response] | None = None
        self.on_body: BodyCallback | None = None
        self.on_bytes: ByteCallback | None = None
        self.collected = bytearray()
        self.bytes_received = 0
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        return protocol

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _EOF and self.response is not None:
            self._finish()
        error = ConnectionClosed(str(exc) if exc else "closed by the server")
        for future in (self.headers_ready, self.done):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: whoever awaits it still gets the error

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.bytes_received += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data), now)
        self.buffer += data
        self._parse(now)

    # --- Requests -----------------------------------------------------------------

    def _send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        if self.transport is None or self.closed:
            raise ConnectionClosed("not connected")
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in {"POST", "PUT", "PATCH"}:
            lines.append(f"Content-Length: {len(body)}")
        self.state = _HEAD
        self.response = None
        self.collected = bytearray()
        loop = asyncio.get_running_loop()
        self.headers_ready = loop.create_future()
        self.done = loop.create_future()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        """A whole response, body included."""
        self.on_body = None
        self._send(method, path, headers or {}, body)
        assert self.done is not None
        return await self.done

    async def stream(
        self, path: str, headers: dict[str, str], on_body: BodyCallback
    ) -> tuple[Response, asyncio.Future[Response]]:
        """GET `path`; the headers, and a future for the end, while `on_body` gets the body."""
        self.on_body = on_body
        self._send("GET", path, headers, b"")
        assert self.headers_ready is not None and self.done is not None
        return await self.headers_ready, self.done

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- Parsing ------------------------------------------------------------------

    def _deliver(self, data: bytes, now: float) -> None:
        if self.on_body is not None:
            self.on_body(data, now)
        else:
            self.collected += data

    def _finish(self) -> None:
        self.state = _IDLE
        response = self.response
        assert response is not None
        response.body = bytes(self.collected)
        if self.done is not None and not self.done.done():
            self.done.set_result(response)

    def _parse(self, now: float) -> None:
        buffer = self.buffer
        while buffer:
            state = self.state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
                del buffer[: end + 4]
                status = int(lines[0].split(" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.response = Response(status, headers, at=now)
                if self.headers_ready is not None and not self.headers_ready.done():
                    self.headers_ready.set_result(self.response)
                if status in (204, 304) or status < 200:
                    self._finish()
                elif "content-length" in headers:
                    self.remaining = int(headers["content-length"])
                    self.state = _LENGTH
                    if not self.remaining:
                        self._finish()
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    self.state = _CHUNK_SIZE
                else:
                    self.state = _EOF
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self.remaining, len(buffer))
                self._deliver(bytes(buffer[:take]), now)
                del buffer[:take]
                self.remaining -= take
                if not self.remaining:
                    if state == _LENGTH:
                        self._finish()
                    else:
                        self.state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";")[0], 16)
                del buffer[: end + 2]
                if size:
                    self.remaining = size
                    self.state = _CHUNK_DATA
                else:
                    self.state = _TRAILER
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                del buffer[:2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:
                    self._finish()
            elif state == _EOF:
                self._deliver(bytes(buffer), now)
                buffer.clear()
            else:  # bytes nobody asked for
                buffer.clear()


class SseParser:
    """Splits an event stream into (event name, data) pairs; comments and `retry:` dropped."""

    def __init__(self, on_event: Callable[[bytes, bytes, float], None]) -> None:
        self.on_event = on_event
        self.buffer = b""

    def feed(self, data: bytes, now: float) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            block = buffer[:end]
            buffer = buffer[end + 2 :]
            name = b"message"
            payload = b""
            has_data = False
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    payload = line[6:]
                    has_data = True
                elif line.startswith(b"event: "):
                    name = line[7:]
            if has_data:
                self.on_event(name, payload, now)
        self.buffer = buffer


class WsConnection(asyncio.Protocol):
    """A client WebSocket: the opening handshake, then text frames both ways."""

    def __init__(self) -> None:
        self.on_text: Callable[[bytes, float], None] | None = None
        self.on_bytes: ByteCallback | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.opened: asyncio.Future[int] | None = None
        self.closed: asyncio.Future[None] | None = None
        self.fragments: list[bytes] = []
        self.bytes_received = 0

    @classmethod
    async def open(cls, host: str, port: int, path: str, headers: dict[str, str]) -> WsConnection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        protocol.opened = loop.create_future()
        protocol.closed = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        assert protocol.transport is not None
        protocol.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status = await protocol.opened
        if status != 101:
            protocol.abort()
            raise ConnectionClosed(f"WebSocket refused: HTTP {status}")
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionClosed(str(exc) if exc else "closed")
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(error)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.bytes_received += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data), now)
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(bytes(self.buffer[:end]).split(b" ", 2)[1])
            del self.buffer[: end + 4]
            self.upgraded = True
            if self.opened is not None and not self.opened.done():
                self.opened.set_result(status)
        self._frames(now)

    def _frames(self, now: float) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = int.from_bytes(buffer[2:4], "big")
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = int.from_bytes(buffer[2:10], "big")
                offset = 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            opcode = first & 0x0F
            if opcode == 0x9:  # ping
                self._write(0xA, payload)
            elif opcode == 0x8:  # close
                self._write(0x8, payload[:2])
                if self.transport is not None:
                    self.transport.close()
            elif opcode in (0x1, 0x2, 0x0):
                self.fragments.append(payload)
                if first & 0x80:
                    message = b"".join(self.fragments)
                    self.fragments = []
                    if self.on_text is not None:
                        self.on_text(message, now)

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = bytes([0x80 | opcode, 0x80 | length])
        elif length < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.transport.write(head + mask + masked)

    def send_text(self, text: str) -> None:
        self._write(0x1, text.encode())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
