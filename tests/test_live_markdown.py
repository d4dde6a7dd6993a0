"""Live formatting: finished Markdown blocks go out once, as sanitized HTML, while streaming."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from chat.providers.base import Finish, Usage
from chat.providers.demo import _ANSWERS, split_pieces
from chat.rendering import Block, LiveMarkdown, render_markdown
from tests.helpers import ChatApi, ScriptedProvider, SSEStream
from tests.html import Elements
from tests.xss_corpus import PAYLOADS, SPLIT_PAYLOADS

RICH = (
    "# Plan\n\nFirst a paragraph that runs\nover two lines.\n\n"
    "- one\n- two\n  continued\n\n"
    "1. first\n2. second\n\n"
    "```python\ndef f(x):\n\n    return x * 2  # a blank line inside the fence\n```\n\n"
    "| a | b |\n|---|:-:|\n| 1 | 2 |\n\n"
    "> quoted\nlazy continuation\n\n"
    "---\n\n"
    "Setext heading\n==============\n\n"
    "Last words.\n"
)
TEXTS = [*_ANSWERS, RICH]


def stream_in_pieces(text: str, rng: random.Random) -> tuple[LiveMarkdown, list[Block]]:
    live = LiveMarkdown()
    blocks: list[Block] = []
    pieces = split_pieces(text)
    index = 0
    while index < len(pieces):
        size = rng.randint(1, 8)
        blocks += live.feed("".join(pieces[index : index + size]))
        index += size
    return live, blocks


def assert_inert(html: str) -> None:
    for tag, attrs in Elements(html).tags:
        assert tag not in {"script", "img", "svg", "iframe", "object", "embed", "style"}, html
        for name, value in attrs.items():
            assert not name.startswith(("on", "hx-", "data-hx-")), html
            assert not (value or "").lower().lstrip().startswith(("javascript:", "data:")), html


# --- The splitter ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS, ids=["demo-1", "demo-2", "rich"])
def test_blocks_are_contiguous_rendered_once_and_independent_of_chunking(text: str) -> None:
    rng = random.Random(7)
    reference, _ = LiveMarkdown.resume(text)
    for _ in range(30):
        live, blocks = stream_in_pieces(text, rng)

        assert [block.start for block in blocks] == [0, *(block.end for block in blocks[:-1])]
        assert live.start == (blocks[-1].end if blocks else 0)
        assert text[: live.start] + live.tail == text
        for block in blocks:
            assert block.html == render_markdown(text[block.start : block.end])
        # However the text arrived, the same blocks are finished at the end.
        assert (live.start, live.tail) == (reference.start, reference.tail)


def test_the_rich_answer_formats_every_kind_of_block_before_its_end() -> None:
    live, blocks = stream_in_pieces(RICH, random.Random(1))
    html = "".join(block.html for block in blocks)

    for tag in ("<h1>", "<ul>", "<ol>", '<pre class="highlight">', "<table>", "<blockquote>"):
        assert tag in html, tag
    assert "<hr" in html and "<h1>Setext heading</h1>" in html
    assert live.tail == "Last words.\n"  # the last block stays text until the answer ends


def test_a_code_block_is_one_block_that_never_changes_once_sent() -> None:
    code = "".join(f"line_{n} = {n}\n" for n in range(60))
    text = f"Intro.\n\n```python\n{code}```\n\nAfter.\n"
    live = LiveMarkdown()
    sent: list[Block] = []
    for piece in split_pieces(text):
        finished = live.feed(piece)
        sent += finished
        if live.tail.startswith("```"):
            # While the fence is open, nothing of it goes out as formatted.
            assert all(not block.html.startswith("<pre") for block in finished)

    fences = [block for block in sent if "<pre" in block.html]
    assert len(fences) == 1
    assert fences[0].html == render_markdown(f"```python\n{code}```\n\n")


def test_formatted_bytes_and_work_grow_linearly_with_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chat import rendering

    parsed: list[int] = []
    real_blocks = rendering._block_parser()

    class Counting:
        """The parses that find where blocks end (rendering a block parses it once more)."""

        def parse(self, text: str) -> Any:
            parsed.append(len(text))
            return real_blocks.parse(text)

    monkeypatch.setattr(rendering, "_block_parser", lambda: Counting())

    def cost(copies: int) -> tuple[int, int, int]:
        parsed.clear()
        text = RICH * copies
        _, blocks = stream_in_pieces(text, random.Random(3))
        html_bytes = sum(len(block.html.encode()) for block in blocks)
        return len(text), html_bytes, sum(parsed)

    small_text, small_html, small_parsed = cost(5)
    big_text, big_html, big_parsed = cost(20)
    ratio = big_text / small_text
    assert big_html / small_html == pytest.approx(ratio, rel=0.1)
    assert big_parsed / small_parsed < ratio * 1.25, "parsing must not grow with the square"
    assert big_parsed < 4 * big_text


def test_a_resume_sends_the_blocks_finished_after_what_the_client_formatted() -> None:
    text = "Para one.\n\nPara two.\n\nPara three.\n\nPara"
    _, all_blocks = LiveMarkdown.resume(text)
    assert [text[b.start : b.end] for b in all_blocks] == [
        "Para one.\n\n",
        "Para two.\n\n",
        "Para three.\n\n",
    ]

    live, caught_up = LiveMarkdown.resume(text[11:], start=11)

    assert [(b.start, b.end) for b in caught_up] == [(11, 22), (22, 35)]
    assert (live.start, live.tail) == (35, "Para")


def test_carriage_returns_leave_the_answer_as_text_until_it_ends() -> None:
    live = LiveMarkdown()
    assert live.feed("One.\r\n\r\nTwo.\r\n\r\nThree") == []
    assert live.tail == "One.\r\n\r\nTwo.\r\n\r\nThree"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_blocks_are_inert(payload: str) -> None:
    text = f"Intro.\n\n{payload}\n\nMore {payload}\n\nEnd"
    _, blocks = stream_in_pieces(text, random.Random(5))
    assert blocks
    for block in blocks:
        assert_inert(block.html)


@pytest.mark.parametrize("pieces", SPLIT_PAYLOADS)
def test_payloads_split_across_tokens_are_inert(pieces: tuple[str, ...]) -> None:
    live = LiveMarkdown()
    blocks = live.feed("Start.\n\n")
    for piece in pieces:
        blocks += live.feed(piece)
    blocks += live.feed("\n\nEnd")
    assert blocks
    for block in blocks:
        assert_inert(block.html)


# --- Over the stream -----------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


def block_sources(stream: SSEStream, text: str) -> list[str]:
    return [
        text[block["start"] : block["end"]]
        for event in stream.events
        if event.name in {"token", "reset"}
        for block in event.data.get("blocks", [])
    ]


@pytestmark_db
async def test_the_stream_carries_finished_blocks_before_final(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    pieces = split_pieces(RICH)
    half = len(pieces) // 2
    scripted.script = [*pieces[:half], gate, *pieces[half:], Usage(3, len(pieces)), Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        sent_so_far = "".join(pieces[:half])
        await stream.read(until=lambda s: s.last_id == len(sent_so_far))
        before_end = block_sources(stream, RICH)
        assert before_end, "blocks go out while the answer is being written"
        assert "".join(before_end) == sent_so_far[: len("".join(before_end))]
        gate.set()
        await stream.read_to_end()
    finally:
        await stream.close()

    blocks = [b for e in stream.events if e.name == "token" for b in e.data.get("blocks", [])]
    assert [b["start"] for b in blocks] == [0, *(b["end"] for b in blocks[:-1])]
    assert "".join(b["html"] for b in blocks).count("<pre") == 1
    final = stream.final
    assert final is not None and final["html"] == render_markdown(RICH)
    # Every block once, the text once: the bytes stay linear in the answer.
    block_bytes = sum(len(b["html"]) for b in blocks)
    assert block_bytes < 3 * len(RICH)


@pytestmark_db
async def test_a_resumed_reader_gets_the_blocks_after_the_ones_it_formatted(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    scripted.script = ["Para one.\n\n", "Para two.\n\n", "Para", gate, " three.\n\nEnd."]
    message = await api.ask(model=scripted.model_id)
    first = await api.read(message["id"], until=lambda s: s.last_id == 26)
    assert block_sources(first, "Para one.\n\nPara two.\n\n") == ["Para one.\n\n", "Para two.\n\n"]

    # The client formatted only the first paragraph (its page lagged): the second comes again.
    lagging = await api.open_stream(message["id"], after=26, rendered=11)
    # A client that formatted both gets neither again.
    current = await api.open_stream(message["id"], after=26, rendered=22)
    gate.set()
    for stream in (lagging, current):
        try:
            await stream.read_to_end()
        finally:
            await stream.close()

    text = "Para one.\n\nPara two.\n\nPara three.\n\nEnd."
    assert block_sources(lagging, text) == ["Para two.\n\n", "Para three.\n\n"]
    assert block_sources(current, text) == ["Para three.\n\n"]
    assert lagging.text == current.text == " three.\n\nEnd."
