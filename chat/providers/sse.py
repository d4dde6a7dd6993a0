"""Server-sent events from a provider, split and decoded at the cost the wire allows.

The SDKs decode their streams line by line in Python and parse each event with the
standard `json` module: about a fifth of the server's whole cost of relaying a token. The
providers keep the SDKs' requests, errors and stream objects, and hand the events of the
body to `EventSplitter` (whole events cut with bytes methods) and `loads` (orjson).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson


async def events(body: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """Every complete event of a response body, as its bytes arrive: `(name, data)`."""
    splitter = EventSplitter()
    async for chunk in body:
        for event in splitter.feed(chunk):
            yield event
    for event in splitter.finish():
        yield event


class EventSplitter:
    """Cut a byte stream into complete events: `(name, data)`, comments and ids ignored.

    Lines may end in LF, CRLF or CR, as the SSE format allows; an event ends at a blank
    line; its `data` lines are joined with LF; an event without data is not one.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """The events that `chunk` completes."""
        pending = self._pending + chunk if self._pending else chunk
        if b"\r" in pending:
            # A CR at the very end may be half of a CRLF that the next read completes.
            tail = b"\r" if pending.endswith(b"\r") else b""
            pending = pending[: len(pending) - len(tail)]
            pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            tail = b""
        *blocks, rest = pending.split(b"\n\n")
        self._pending = rest + tail
        return self._events(blocks)

    def finish(self) -> list[tuple[str, bytes]]:
        """At the end of the body: the event that a last held-back CR completes, if any."""
        pending, self._pending = self._pending, b""
        if pending.endswith(b"\n\r"):  # a line, then a blank line ended by that CR
            return self._events([pending[:-2]])
        return []  # an event without its blank line is incomplete, and dropped

    @staticmethod
    def _events(blocks: list[bytes]) -> list[tuple[str, bytes]]:
        events = []
        for block in blocks:
            # Nearly every event is one data line (OpenAI), or a name and one (Anthropic).
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(("", block[6:]))
                continue
            if block.startswith(b"event: "):
                end = block.find(b"\n")
                if block.startswith(b"data: ", end + 1) and block.find(b"\n", end + 1) < 0:
                    events.append((block[7:end].decode("utf-8", "replace"), block[end + 7 :]))
                    continue
            if event := _parse(block):
                events.append(event)
        return events


def _parse(block: bytes) -> tuple[str, bytes] | None:
    name = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        field, colon, value = line.partition(b":")
        if not field and colon:
            continue  # a comment
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return (name, b"\n".join(data)) if data else None


def loads(data: bytes) -> Any:
    """The JSON value of an event's data; ValueError when it is not JSON.

    What orjson refuses and the standard parser takes (a lone UTF-16 surrogate, which no
    UTF-8 text can hold) is taken, with every such surrogate replaced by U+FFFD.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        value = json.loads(data)  # raises ValueError for what is not JSON at all
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
