"""The benchmark's model provider: OpenAI Chat Completions streaming, cheap enough to drive
hundreds of streams from one shared core.

It speaks the wire format of `tests/fakes/openai_server.py` byte for byte in layout (the
same chunk keys in the same order: the role chunk, one chunk per delta, the finish chunk,
the usage chunk, `data: [DONE]`), and `bench/run.py` checks that against the test fake
before every run. What differs is the machinery: an `asyncio.Protocol` and one timer per
delta instead of a task per request, so the upstream costs a few microseconds per token
instead of tens and does not become the bottleneck.

Each answer is scripted by the last user message of the request, which the benchmark
writes as `bench key=<id> rate=<tokens/s> tokens=<n> delay=<s> hold=<0|1>`: after `delay`
seconds (counted from the request) token i goes out at `delay + i / rate`. Every content
chunk carries its send time (`time.monotonic()`, one clock for every process of the
machine) in an `x_sent` field, and the server keeps those stamps for the load generator:

    GET  /_bench/stamps   stamps sent since the last call, per key; and the send lag
    GET  /_bench/state    streams open and streams held
    POST /_bench/release  held answers (`hold=1`: headers, then nothing) start now
    POST /_bench/abort    cut every open stream (ends a phase at once)

    python -m bench.upstream [--port 0]    # prints "READY <port>", serves until SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from array import array
from typing import Any

WORDS = (
    " the model",
    " streams",
    " each",
    " token",
    " as",
    " soon",
    " as",
    " it",
    " is",
    " ready",
    ",",
    " and",
    " the",
    " reader",
    " shows",
    " it",
    ".",
    " Latency",
    " is",
    " what",
    " people",
    " feel",
    " first",
    ";",
    " throughput",
    " is",
    " what",
    " the",
    " server",
    " pays",
    " for",
    " café",
    " `code`",
    " **bold**",
    " words",
    ":",
    " one",
    " two",
    " three",
    " four",
)


def answer_tokens(count: int) -> list[str]:
    """The deltas of every benchmark answer: ~4.7 characters each, a paragraph every 60."""
    return [
        "\n\n" if index % 60 == 59 else WORDS[(index * 7) % len(WORDS)] for index in range(count)
    ]


def directive(key: str, *, rate: float, tokens: int, delay: float, hold: bool = False) -> str:
    return f"bench key={key} rate={rate:g} tokens={tokens} delay={delay:g} hold={int(hold)}"


def parse_directive(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-cache\r\n"
    b"x-request-id: req_bench\r\n"
    b"openai-processing-ms: 41\r\n\r\n"
)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Stream:
    """One answer being sent on one connection."""

    def __init__(self, server: Upstream, conn: Connection, body: dict[str, Any]) -> None:
        self.server = server
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        messages = body.get("messages") or [{}]
        spec = parse_directive(str(messages[-1].get("content", "")))
        self.key = spec.get("key") or uuid.uuid4().hex
        self.rate = float(spec.get("rate", "50"))
        self.tokens = answer_tokens(int(spec.get("tokens", "20")))
        self.delay = float(spec.get("delay", "0"))
        self.hold = spec.get("hold", "0") == "1"
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.index = 0
        self.stamps: list[float] = []
        self.reported = 0
        self.received = time.monotonic()
        self.start = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "gpt-fake"),
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }
        self.base = base
        # Everything but the delta text and the stamp, rendered once.
        head = _dumps({**base, "choices": [0]}).rsplit("[0]", 1)[0]
        usage = ',"usage":null' if self.include_usage else ""
        self.prefix = f'data: {head}[{{"index":0,"delta":{{"content":'.encode()
        self.suffix = f'}},"logprobs":null,"finish_reason":null}}]{usage},"x_sent":'.encode()

    def frame(self, choices: list[dict[str, Any]]) -> bytes:
        chunk = {**self.base, "choices": choices, **({"usage": None} if self.include_usage else {})}
        return f"data: {_dumps(chunk)}\n\n".encode()

    def begin(self) -> None:
        self.conn.write(HEADERS)
        if self.hold:
            self.server.held.add(self)
        else:
            self.schedule_from(self.received + self.delay)

    def schedule_from(self, start: float) -> None:
        self.start = start
        self.timer = self.loop.call_at(start, self.tick)

    def tick(self) -> None:
        self.timer = None
        if self.done:
            return
        now = time.monotonic()
        index = self.index
        due = self.start + index / self.rate
        if index == 0:
            role = {"role": "assistant", "content": "", "refusal": None}
            choice = {"index": 0, "delta": role, "logprobs": None, "finish_reason": None}
            self.conn.write(_chunk(self.frame([choice])))
        text = json.dumps(self.tokens[index], ensure_ascii=False).encode()
        self.conn.write(_chunk(b"%s%s%s%.6f}\n\n" % (self.prefix, text, self.suffix, now)))
        self.stamps.append(now)
        self.server.lags.append(now - due)
        self.index = index + 1
        if self.index < len(self.tokens):
            self.timer = self.loop.call_at(self.start + self.index / self.rate, self.tick)
        else:
            self.finish()

    def finish(self) -> None:
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        out = [_chunk(self.frame([finish]))]
        if self.include_usage:
            completion = len(self.tokens)
            usage = {
                "prompt_tokens": 17,
                "completion_tokens": completion,
                "total_tokens": 17 + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            chunk = {**self.base, "choices": [], "usage": usage}
            out.append(_chunk(f"data: {_dumps(chunk)}\n\n".encode()))
        out.append(_chunk(b"data: [DONE]\n\n"))
        out.append(b"0\r\n\r\n")
        self.conn.write(b"".join(out))
        self.close()

    def close(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.held.discard(self)
        self.conn.stream = None


class Connection(asyncio.Protocol):
    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.close()
        self.server.connections.discard(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.server.handle(self, method, path.split("?")[0], body)

    def respond_json(self, status: int, value: object) -> None:
        self.respond(status, json.dumps(value).encode(), "application/json")

    def respond(self, status: int, payload: bytes, content_type: str) -> None:
        reason = {200: "OK", 404: "Not Found"}.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.write(head.encode() + payload)


class Upstream:
    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.streams: dict[str, Stream] = {}
        self.held: set[Stream] = set()
        self.lags: list[float] = []

    def protocol(self) -> Connection:
        conn = Connection(self)
        self.connections.add(conn)
        return conn

    def handle(self, conn: Connection, method: str, path: str, body: bytes) -> None:
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            stream = Stream(self, conn, json.loads(body))
            conn.stream = stream
            self.streams[stream.key] = stream
            stream.begin()
        elif path == "/_bench/stamps":
            conn.respond(200, self.take_stamps(), "application/octet-stream")
        elif path == "/_bench/state":
            open_streams = sum(1 for c in self.connections if c.stream is not None)
            conn.respond_json(200, {"open": open_streams, "held": len(self.held)})
        elif path == "/_bench/release":
            now = time.monotonic()
            for stream in list(self.held):
                self.held.discard(stream)
                stream.schedule_from(now + stream.delay)
            conn.respond_json(200, {"released": True})
        elif path == "/_bench/abort":
            for other in list(self.connections):
                if other.stream is not None and other.transport is not None:
                    other.stream.close()
                    other.transport.abort()
            conn.respond_json(200, {"aborted": True})
        else:
            conn.respond_json(404, {"error": {"message": f"Unknown path {path}"}})

    def take_stamps(self) -> bytes:
        """The stamps sent since the last call: a JSON line (per key: when the request came,
        the index of its first new stamp, how many), then every new stamp as a float64,
        key after key. Binary, because JSON would stall this loop for tens of ms."""
        heads: dict[str, Any] = {}
        stamps = array("d")
        for key, stream in list(self.streams.items()):
            if stream.reported < len(stream.stamps) or stream.reported == 0:
                new = stream.stamps[stream.reported :]
                heads[key] = {
                    "received": stream.received,
                    "from": stream.reported,
                    "count": len(new),
                }
                stamps.extend(new)
                stream.reported = len(stream.stamps)
            if stream.done:
                del self.streams[key]
        lags = sorted(self.lags)
        self.lags = []
        lag = {
            "count": len(lags),
            "p50_ms": lags[len(lags) // 2] * 1000 if lags else 0.0,
            "p99_ms": lags[int(len(lags) * 0.99)] * 1000 if lags else 0.0,
            "max_ms": lags[-1] * 1000 if lags else 0.0,
        }
        return json.dumps({"streams": heads, "lag": lag}).encode() + b"\n" + stamps.tobytes()


async def serve(port: int) -> None:
    upstream = Upstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(upstream.protocol, "127.0.0.1", port, backlog=4096)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))
