"""The load generator: streams against the three relays, and what each stream received.

A *target* is one relay over one transport (`raw`, `naive`, `app` over SSE, `app` over
the WebSocket). A *session* runs streams one after another, as one browser tab does;
the phases in bench/run.py run many sessions at once. Each stream is scripted through
the upstream (bench/upstream.py) by a directive in its prompt, and records when each
token arrived, so that bench/run.py can hold it against the upstream's send stamps.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any
from urllib.parse import quote

from bench.clients import HttpConnection, SseParser, WsConnection
from bench.upstream import answer_tokens

HOST = "127.0.0.1"
BUCKET = 0.1  # seconds per bucket of the byte and event meters


@dataclass
class StreamRecord:
    key: str
    started: float  # when the client started (the POST, the GET, or the `send` frame)
    answered: float = 0.0  # when the app answered the send (POST /messages)
    connected: float = 0.0  # when the reader was in place (stream headers, `accepted`)
    recv: list[float] = field(default_factory=list)  # recv[k]: when token k arrived
    chars: int = 0
    answer_bytes: int = 0
    token_events: int = 0
    other_events: int = 0
    bytes: int = 0
    finished: float = 0.0
    error: str = ""


class Meter:
    """Bytes and events per 100 ms bucket, for windowed ratios."""

    def __init__(self) -> None:
        self.bytes: Counter[int] = Counter()
        self.answer_bytes: Counter[int] = Counter()
        self.token_events: Counter[int] = Counter()
        self.other_events: Counter[int] = Counter()

    def on_bytes(self, count: int, now: float) -> None:
        self.bytes[int(now / BUCKET)] += count

    def window(self, start: float, end: float) -> dict[str, int]:
        buckets = range(int(start / BUCKET), int(end / BUCKET))
        return {
            name: sum(counter[b] for b in buckets)
            for name, counter in (
                ("bytes", self.bytes),
                ("answer_bytes", self.answer_bytes),
                ("token_events", self.token_events),
                ("other_events", self.other_events),
            )
        }


class Tracker:
    """Turns received text into per-token arrival times (tokens are the upstream's)."""

    def __init__(self, tokens: int) -> None:
        self.ends = list(accumulate(len(token) for token in answer_tokens(tokens)))

    def text(self, record: StreamRecord, meter: Meter, text: str, now: float) -> None:
        record.chars += len(text)
        size = len(text.encode())
        record.answer_bytes += size
        record.token_events += 1
        bucket = int(now / BUCKET)
        meter.answer_bytes[bucket] += size
        meter.token_events[bucket] += 1
        complete = bisect_right(self.ends, record.chars)
        if complete > len(record.recv):
            record.recv.extend([now] * (complete - len(record.recv)))

    @staticmethod
    def other(record: StreamRecord, meter: Meter, now: float) -> None:
        record.other_events += 1
        meter.other_events[int(now / BUCKET)] += 1


class Session:
    async def run(self, record: StreamRecord, prompt: str) -> None:
        raise NotImplementedError


class Target:
    """One relay over one transport, on a server at `port`."""

    name = ""
    transport = "sse"

    def __init__(self, port: int, tracker: Tracker) -> None:
        self.port = port
        self.tracker = tracker

    @asynccontextmanager
    async def session(self, meter: Meter) -> AsyncIterator[Session]:
        yield self.new_session(meter)

    def new_session(self, meter: Meter) -> Session:
        raise NotImplementedError


async def _read_sse(
    conn: HttpConnection,
    path: str,
    headers: dict[str, str],
    record: StreamRecord,
    meter: Meter,
    tracker: Tracker,
) -> None:
    def on_event(name: bytes, data: bytes, now: float) -> None:
        if name == b"token":
            tracker.text(record, meter, json.loads(data)["text"], now)
        else:
            tracker.other(record, meter, now)
            if name == b"final":
                record.finished = now

    parser = SseParser(on_event)
    headers = {"Accept": "text/event-stream", **headers}
    response, done = await conn.stream(path, headers, parser.feed)
    record.connected = response.at
    if response.status != 200:
        raise RuntimeError(f"stream answered HTTP {response.status}")
    await done
    if not record.finished:
        raise RuntimeError("the stream ended without `final`")


class RelaySession(Session):
    """Baselines: `GET /relay?prompt=...`, one connection per stream."""

    def __init__(self, target: Target, meter: Meter) -> None:
        self.target = target
        self.meter = meter

    async def run(self, record: StreamRecord, prompt: str) -> None:
        conn = await HttpConnection.open(HOST, self.target.port)
        conn.on_bytes = self.meter.on_bytes
        try:
            path = f"/relay?prompt={quote(prompt)}"
            await _read_sse(conn, path, {}, record, self.meter, self.target.tracker)
        finally:
            record.bytes = conn.bytes_received
            conn.close()


class RelayTarget(Target):
    def __init__(self, name: str, port: int, tracker: Tracker) -> None:
        super().__init__(port, tracker)
        self.name = name

    def new_session(self, meter: Meter) -> Session:
        return RelaySession(self, meter)


@dataclass(frozen=True)
class Account:
    """A signed-in user of the app."""

    session_key: str
    csrf: str


class Conversations:
    """Fresh conversations per user, each used for one answer; users take turns."""

    def __init__(self, stocks: dict[Account, list[str]]) -> None:
        self.accounts = list(stocks)
        self.stocks = {account: deque(ids) for account, ids in stocks.items()}
        self.total = sum(len(ids) for ids in stocks.values())
        self._turn = 0

    def account(self) -> Account:
        self._turn += 1
        return self.accounts[self._turn % len(self.accounts)]

    def take(self, account: Account | None = None) -> tuple[str, Account]:
        account = account or self.account()
        stock = self.stocks[account]
        if not stock:
            raise RuntimeError(
                f"a bench user ran out of its {self.total // len(self.accounts)} "
                "prepared conversations; raise --conversations"
            )
        return stock.popleft(), account


def _cookies(account: Account) -> str:
    return f"sessionid={account.session_key}; csrftoken={account.csrf}"


class AppSseSession(Session):
    """POST /api/conversations/<id>/messages, then GET its stream_url on the same connection."""

    def __init__(self, target: AppSseTarget, meter: Meter) -> None:
        self.target = target
        self.meter = meter

    async def run(self, record: StreamRecord, prompt: str) -> None:
        conversation, account = self.target.conversations.take()
        conn = await HttpConnection.open(HOST, self.target.port)
        conn.on_bytes = self.meter.on_bytes
        try:
            cookies = _cookies(account)
            sent = await conn.request(
                "POST",
                f"/api/conversations/{conversation}/messages",
                {
                    "Cookie": cookies,
                    "X-CSRFToken": account.csrf,
                    "Content-Type": "application/json",
                },
                json.dumps({"content": prompt}).encode(),
            )
            record.answered = sent.at
            if sent.status != 201:
                raise RuntimeError(f"send answered HTTP {sent.status}: {sent.body[:200]!r}")
            url = json.loads(sent.body)["stream_url"]
            await _read_sse(conn, url, {"Cookie": cookies}, record, self.meter, self.target.tracker)
        finally:
            record.bytes = conn.bytes_received
            conn.close()


class AppSseTarget(Target):
    name = "app"

    def __init__(self, port: int, tracker: Tracker, conversations: Conversations) -> None:
        super().__init__(port, tracker)
        self.conversations = conversations

    def new_session(self, meter: Meter) -> Session:
        return AppSseSession(self, meter)


class AppWsSession(Session):
    """One socket per session (a page); each answer is a `send` frame and its events."""

    def __init__(self, target: AppWsTarget, meter: Meter, account: Account) -> None:
        self.target = target
        self.meter = meter
        self.account = account
        self.socket: WsConnection | None = None
        self.record: StreamRecord | None = None
        self.message_id = ""
        self.ended: asyncio.Future[None] | None = None

    async def open(self) -> None:
        port = self.target.port
        headers = {"Origin": f"http://{HOST}:{port}", "Cookie": _cookies(self.account)}
        self.socket = await WsConnection.open(HOST, port, "/ws/chat/", headers)
        self.socket.on_text = self.on_text
        self.socket.on_bytes = self.meter.on_bytes

    def close(self) -> None:
        if self.socket is not None:
            self.socket.abort()

    def on_text(self, payload: bytes, now: float) -> None:
        record, ended = self.record, self.ended
        if record is None or ended is None:
            return
        frame: dict[str, Any] = json.loads(payload)
        kind = frame.get("type")
        if kind == "accepted":
            record.connected = now
            self.message_id = frame["assistant_message"]["id"]
            return
        if frame.get("message_id") != self.message_id:
            if kind == "error" and not ended.done():
                ended.set_exception(RuntimeError(f"send refused: {frame}"))
            return
        if kind == "token":
            self.target.tracker.text(record, self.meter, frame["text"], now)
        else:
            self.target.tracker.other(record, self.meter, now)
            if kind == "final":
                record.finished = now
                if not ended.done():
                    ended.set_result(None)

    async def run(self, record: StreamRecord, prompt: str) -> None:
        assert self.socket is not None
        conversation, _account = self.target.conversations.take(self.account)
        self.record, self.message_id = record, ""
        self.ended = asyncio.get_running_loop().create_future()
        before = self.socket.bytes_received
        record.started = time.monotonic()
        self.socket.send_text(
            json.dumps({"type": "send", "conversation_id": conversation, "content": prompt})
        )
        closed = self.socket.closed
        assert closed is not None
        try:
            await asyncio.wait([self.ended, closed], return_when=asyncio.FIRST_COMPLETED)
            if not self.ended.done():
                raise RuntimeError("the socket closed mid-answer")
            self.ended.result()
        finally:
            record.bytes = self.socket.bytes_received - before
            self.record = None


class AppWsTarget(Target):
    name = "app"
    transport = "ws"

    def __init__(self, port: int, tracker: Tracker, conversations: Conversations) -> None:
        super().__init__(port, tracker)
        self.conversations = conversations

    @asynccontextmanager
    async def session(self, meter: Meter) -> AsyncIterator[Session]:
        # A socket is one signed-in user, who sends to conversations of their own.
        session = AppWsSession(self, meter, self.conversations.account())
        await session.open()
        try:
            yield session
        finally:
            session.close()


class LoopWatch:
    """How late this process's event loop wakes a 5 ms sleeper: when the load generator
    is late, every receipt it stamps is late by as much, and latency looks worse."""

    def __init__(self) -> None:
        self.checks = 0
        self.late = 0  # wakes more than 5 ms late
        self.worst = 0.0  # seconds, since the last `take`
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            late = loop.time() - due
            self.checks += 1
            self.late += late > 0.005
            self.worst = max(self.worst, late)

    def take(self) -> tuple[int, int, float]:
        """(checks, late wakes, worst lateness since the last take)."""
        worst, self.worst = self.worst, 0.0
        return self.checks, self.late, worst


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list (0 for an empty one)."""
    if not values:
        return 0.0
    rank = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return values[rank]


def token_latencies(
    records: list[StreamRecord],
    stamps: dict[str, list[float]],
    start: float,
    end: float,
    evaluated: float,
) -> tuple[list[float], int]:
    """Receipt minus stamp for each token stamped in [start, end], sorted; and how many
    had not arrived when evaluated (counted at their age then, a lower bound)."""
    latencies: list[float] = []
    missing = 0
    for record in records:
        sent = stamps.get(record.key)
        if not sent:
            continue
        recv = record.recv
        for index in range(bisect_left(sent, start), bisect_right(sent, end)):
            if index < len(recv):
                latencies.append(recv[index] - sent[index])
            else:
                latencies.append(max(evaluated - sent[index], 0.0))
                missing += 1
    latencies.sort()
    return latencies, missing


def first_token_latencies(
    records: list[StreamRecord],
    stamps: dict[str, list[float]],
    start: float,
    end: float,
    evaluated: float,
) -> list[float]:
    """Receipt minus stamp of the first token, for streams whose first token went out in
    [start, end], sorted."""
    out = []
    for record in records:
        sent = stamps.get(record.key)
        if sent and start <= sent[0] <= end:
            out.append(record.recv[0] - sent[0] if record.recv else evaluated - sent[0])
    out.sort()
    return out


def tokens_received(records: list[StreamRecord], start: float, end: float) -> int:
    return sum(bisect_right(r.recv, end) - bisect_left(r.recv, start) for r in records)
