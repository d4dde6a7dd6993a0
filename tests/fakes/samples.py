"""Test material shared by the provider tests: awkward text, and small helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chat.providers.base import ChatRequest, ProviderError, StreamItem, TextDelta, Turn

# A 64 KiB delta with line breaks and multi-byte characters in it.
BIG_DELTA = "".join(f"{n:05d} línea ✓ ligne\n" for n in range(3200))[: 64 * 1024]

# Pieces of text that break naive SSE framing, HTML handling or Unicode handling.
TRICKY_DELTAS: tuple[str, ...] = (
    "Hello",
    "\n",
    "\r",
    "\r\n",
    "\n\n",  # a blank line: the end of an SSE event
    "data: ",
    "event: final",
    "\n: x\n",  # an SSE comment line
    ": x",
    "id: 99\nretry: 1\n",
    "   leading spaces",
    "",
    " ",
    "\t",
    "👩‍👩‍👧‍👦 and 🏳️‍🌈",  # emoji with zero-width joiners
    "🇫🇷",
    "日本語、中文、한국어",
    "e\u0301 n\u0303 a\u030a",  # combining characters
    '<script>alert("x")</script><b hx-get="/x" data-hx-post="/y">&amp;</b>',
    "\u2028\u2029",
    "\\n is not a newline",
    BIG_DELTA,
    "end.",
)
TRICKY_TEXT = "".join(TRICKY_DELTAS)


def chat_request(
    *texts: str, system: str = "Be brief.", model: str = "test-model", cap: int = 321
) -> ChatRequest:
    """A request whose turns alternate user, assistant, user… and end with the user."""
    turns = tuple(
        Turn(role="user" if index % 2 == 0 else "assistant", content=text)
        for index, text in enumerate(texts or ("Hi",))
    )
    return ChatRequest(model=model, system_prompt=system, turns=turns, max_output_tokens=cap)


def text_of(items: list[StreamItem]) -> str:
    return "".join(item.text for item in items if isinstance(item, TextDelta))


async def collect(stream: AsyncIterator[StreamItem]) -> list[StreamItem]:
    return [item async for item in stream]


async def collect_until_error(
    stream: AsyncIterator[StreamItem],
) -> tuple[list[StreamItem], ProviderError]:
    """Everything a stream yields before it raises its ProviderError."""
    items: list[StreamItem] = []
    try:
        async for item in stream:
            items.append(item)
    except ProviderError as error:
        return items, error
    raise AssertionError(f"the stream ended without an error after {items!r}")
