"""The offline demo model: a Markdown-rich answer at a steady pace, no network."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncGenerator

from django.conf import settings

from chat.providers.base import ChatRequest, Finish, Provider, StreamItem, TextDelta, Usage

_PIECES = re.compile(r"\s*\S+|\s+")

_ANSWERS = (
    """## A quick tour of this chat

This answer comes from the **demo model**: it runs offline, needs no API key, and streams
one token at a time so you can watch the page work.

### What you can try
- Press **Stop** (or `Escape`) while an answer is arriving.
- Reload the page mid-answer: the text continues where it was, without a repeated word.
- Copy the answer once it has finished.

### A code block
```python
def fibonacci(n: int) -> list[int]:
    \"\"\"The first n Fibonacci numbers.\"\"\"
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]
```

### A table
| Transport | Resumes after a drop | Carries Stop |
|-----------|---------------------|--------------|
| SSE       | yes, by event id    | separate POST |
| WebSocket | yes, by `after`     | same socket  |

1. Connect a real model with `CHAT_MODELS`.
2. Keep the demo for offline tests.

> Everything here is rendered from Markdown on the server and sanitized.
""",
    """## Streaming, explained

Each answer is produced by a **generation** that runs on the server independently of
your browser. Your browser is only a *reader* of its stream.

### Why that matters
- A dropped connection loses nothing: the reader resumes from the last event id.
- Two tabs can follow the same answer.
- Stop cancels the generation itself, so no more tokens are paid for.

### The event order
```text
start → token … token → usage → final
```

| Event  | Carries                    |
|--------|----------------------------|
| start  | the message id and model   |
| token  | the next piece of text     |
| final  | the status and the HTML    |

1. Send a message.
2. Watch the tokens arrive.
3. Press *Regenerate* for another version.

That is all there is to it.
""",
)


# A longer first message is shortened to this many words, after the words requests often
# open with, which say nothing about their subject.
_TITLE_WORDS = 6
_OPENERS = ("please", "hi", "hello", "hey", "can you", "could you", "would you")
# Words a shortened title should not end with.
_DANGLING = frozenset(
    {"a", "an", "the", "of", "on", "in", "to", "for", "and", "or", "with", "at", "by"}
    | {"from", "about", "my", "your", "this", "that"}
)


def demo_title(message: str) -> str:
    """The demo's title for a conversation that opens with `message`: a message of a few
    words is a title already; a longer one keeps its first words."""
    words = message.split()
    if len(words) <= _TITLE_WORDS + 2:
        return " ".join(words)
    stripped = True
    while stripped:
        stripped = False
        for opener in _OPENERS:
            size = len(opener.split())
            head = " ".join(words[:size]).lower().rstrip(",.!")
            if head == opener and len(words) > size:
                words = words[size:]
                stripped = True
    words = words[:_TITLE_WORDS]
    while len(words) > 1 and words[-1].lower() in _DANGLING:
        words.pop()
    title = " ".join(words).rstrip(",.;:!?")
    return title[:1].upper() + title[1:]


def split_pieces(text: str) -> list[str]:
    """Split text into token-sized pieces that join back to exactly the same text."""
    return _PIECES.findall(text)


class DemoProvider(Provider):
    name = "demo"

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        return self._stream(request)

    async def complete(self, request: ChatRequest) -> str:
        # No model to ask: the short answers the site requests are titles, and the demo
        # makes them from the conversation's first message, offline.
        first = next((turn.content for turn in request.turns if turn.role == "user"), "")
        return demo_title(first)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]:
        last = request.turns[-1].content if request.turns else ""
        digest = hashlib.sha256(last.encode()).digest()
        pieces = split_pieces(_ANSWERS[digest[0] % len(_ANSWERS)])[: request.max_output_tokens]
        prompt_tokens = sum(len(split_pieces(turn.content)) for turn in request.turns)
        prompt_tokens += len(split_pieces(request.system_prompt))

        loop = asyncio.get_running_loop()
        interval = 1.0 / settings.CHAT_DEMO_TOKENS_PER_SECOND
        started = loop.time()
        # A model takes a moment before its first token; so does the demo.
        await asyncio.sleep(min(0.15, interval))
        for index, piece in enumerate(pieces):
            # Pace against the start time so that timer jitter does not accumulate.
            delay = started + (index + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield TextDelta(piece)
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=len(pieces))
        truncated = len(pieces) < len(split_pieces(_ANSWERS[digest[0] % len(_ANSWERS)]))
        yield Finish("length" if truncated else "stop")
