"""Baseline (1), the limit: the least an ASGI app can do to relay an answer.

`GET /relay?prompt=...` opens the upstream stream with httpx2 (the HTTP client the
openai SDK uses, with the SDK's pool limits), parses each `data:` line with `json.loads`,
and sends one SSE event per token straight to the ASGI server: no framework, no
middleware, no database, no coalescing. A client that leaves closes the upstream request.

    daphne bench.baselines.raw_relay:application      # UPSTREAM_URL=http://127.0.0.1:port/v1
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx2

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8001/v1")
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
FINAL = b'event: final\ndata: {"status":"complete"}\n\n'

_clients: dict[asyncio.AbstractEventLoop, httpx2.AsyncClient] = {}


def _client() -> httpx2.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx2.AsyncClient(
            timeout=httpx2.Timeout(120, connect=10),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
        )
    return client


async def _relay(prompt: str, send: Send) -> None:
    body = {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 4096,
    }
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    url = f"{UPSTREAM_URL}/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    async with _client().stream("POST", url, json=body, headers=headers) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            for choice in json.loads(data).get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    event = json.dumps({"text": text}, ensure_ascii=False)
                    payload = f"event: token\ndata: {event}\n\n".encode()
                    await send({"type": "http.response.body", "body": payload, "more_body": True})
    await send({"type": "http.response.body", "body": FINAL, "more_body": False})


async def _plain(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await _plain(send, 200, b"ok")
        return
    if scope["path"] != "/relay":
        await _plain(send, 404, b"not found")
        return
    prompt = parse_qs(scope["query_string"].decode()).get("prompt", [""])[0]
    relay = asyncio.ensure_future(_relay(prompt, send))
    gone = asyncio.ensure_future(_disconnected(receive))
    await asyncio.wait([relay, gone], return_when=asyncio.FIRST_COMPLETED)
    for task in (relay, gone):
        task.cancel()
    await asyncio.gather(relay, gone, return_exceptions=True)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
