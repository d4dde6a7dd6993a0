"""The stream events of the public contract and their two encodings (SSE and WebSocket).

Event ids are positions in the answer, so any reader can resume from any id without the
server remembering what it sent:

- `start` has id 0;
- a `token` (or `reset`) has the id of the answer's length, in code points, after it;
- after an answer of length L: `usage` is L+1, `error` L+2, `final` L+3.

Tokens are never empty, so ids increase strictly, and the same id means the same place
whether the events come from the live stream log or are replayed from the database.

Live formatting rides on `token` and `reset`: their optional `blocks` list the Markdown
blocks the answer has just finished, each as `{"start", "end", "html"}` (positions in the
answer, sanitized HTML). A client shows those as formatted and only the text after the
last block's `end` as plain text; blocks ending at or before what it has already
formatted are repeats after a resume and are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from chat.rendering import Block

EventName = Literal["start", "token", "reset", "usage", "error", "final"]

USAGE_OFFSET = 1
ERROR_OFFSET = 2
FINAL_OFFSET = 3

# Size of the token events used to replay stored text; small enough that one event never
# dominates a socket buffer, large enough that replay costs few events.
REPLAY_CHUNK_CHARS = 16 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: EventName
    data: dict[str, Any]

    def sse(self) -> bytes:
        # JSON never holds a raw newline, so one `data:` line always suffices.
        head = f"id: {self.id}\nevent: {self.name}\ndata: ".encode()
        return head + json_bytes(self.data) + b"\n\n"

    def ws(self, message_id: str) -> dict[str, Any]:
        return {"type": self.name, "message_id": message_id, "id": self.id, **self.data}


SSE_PING = b": ping\n\n"


def json_bytes(value: Any) -> bytes:
    """Compact JSON in UTF-8, for the SSE and WebSocket encodings of every event.

    A lone UTF-16 surrogate, which UTF-8 cannot hold and orjson refuses, is sent as "?".
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation ended: everything the terminal events need besides the text."""

    status: str
    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str = ""
    error_message: str = ""
    retryable: bool = False
    # Time to the first token and the whole generation's duration, for the footnote.
    ttft_ms: int | None = None
    duration_ms: int | None = None


def final_id(length: int) -> int:
    return length + FINAL_OFFSET


def start_event(message_id: str, model: str) -> Event:
    return Event(0, "start", {"message_id": message_id, "model": model})


def token_event(text: str, end: int, blocks: Sequence[Block] = ()) -> Event:
    """The next text; `blocks` are Markdown blocks it finished, for live formatting."""
    data: dict[str, Any] = {"text": text}
    if blocks:
        data["blocks"] = [block.json() for block in blocks]
    return Event(end, "token", data)


def reset_event(content: str, blocks: Sequence[Block] = ()) -> Event:
    data: dict[str, Any] = {"content": content}
    if blocks:
        data["blocks"] = [block.json() for block in blocks]
    return Event(len(content), "reset", data)


def replay_tokens(content: str, after: int) -> list[Event]:
    """Token events carrying `content[after:]`, in chunks."""
    events = []
    position = after
    while position < len(content):
        end = min(position + REPLAY_CHUNK_CHARS, len(content))
        events.append(token_event(content[position:end], end))
        position = end
    return events


def terminal_events(content: str, outcome: Outcome, html: str, after: int) -> list[Event]:
    """`usage`, `error` and `final` for a finished answer, skipping those at or before `after`."""
    length = len(content)
    events = []
    if outcome.prompt_tokens is not None or outcome.completion_tokens is not None:
        events.append(
            Event(
                length + USAGE_OFFSET,
                "usage",
                {
                    "prompt_tokens": outcome.prompt_tokens,
                    "completion_tokens": outcome.completion_tokens,
                },
            )
        )
    if outcome.error_code:
        events.append(
            Event(
                length + ERROR_OFFSET,
                "error",
                {
                    "code": outcome.error_code,
                    "message": outcome.error_message,
                    "retryable": outcome.retryable,
                },
            )
        )
    events.append(
        Event(
            final_id(length),
            "final",
            {
                "status": outcome.status,
                "finish_reason": outcome.finish_reason or None,
                "content": content,
                "html": html,
                "ttft_ms": outcome.ttft_ms,
                "duration_ms": outcome.duration_ms,
            },
        )
    )
    return [event for event in events if event.id > after]


def parse_event_id(raw: str | None) -> int | None:
    """The resume position a client sent, or None. Raises ValueError when malformed."""
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise ValueError(f"not an event id: {raw[:40]!r}")
    return int(raw)


def resume_point(raw: object) -> tuple[int | None, bool]:
    """Where a reader resumes, from the id it sent: (position, whether a `reset` is needed).

    Missing, empty or null means from the start; a whole number or a string of digits
    resumes after it; anything else cannot be honoured, so the reader gets a `reset` first.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if raw is None or isinstance(raw, str):
        try:
            return parse_event_id(raw), False
        except ValueError:
            pass
    return None, True


def rendered_point(raw: object) -> int | None:
    """Where a client's formatted blocks end, as it sent it; None when absent or unusable."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if raw >= 0 else None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 12:
        return int(raw)
    return None
