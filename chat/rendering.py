"""Markdown to sanitized HTML: the one place model and user text becomes markup.

markdown-it-py parses with raw HTML switched off (so HTML in a message shows as text),
Pygments highlights code, and nh3 enforces an allowlist on whatever comes out, so a bug
in either of the first two still cannot produce a script, an event handler, an htmx
attribute or a remote image. Templates additionally wrap the result in `hx-disable`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

_ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "pre": {"class"},
    "span": {"class"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}
_URL_SCHEMES = {"http", "https", "mailto"}
_FORMATTER = HtmlFormatter(nowrap=True)


def _highlight(code: str, language: str, _attrs: Any) -> str:
    try:
        lexer = get_lexer_by_name(language.strip()) if language.strip() else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return ""  # markdown-it escapes and wraps the code itself
    body = highlight(code, lexer, _FORMATTER)
    return f'<pre class="highlight"><code class="language-{lexer.aliases[0]}">{body}</code></pre>'


def _image_as_link(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # Loading a remote image would tell a third party who reads the answer: link to it.
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    return f'<a href="{nh3.clean_text(src)}">{nh3.clean_text("Image: " + alt)}</a>'


def _syntax() -> MarkdownIt:
    """The Markdown the app reads: CommonMark without raw HTML, plus tables and
    strikethrough. Rendering and live block splitting both start from it."""
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    return md


@cache
def _markdown() -> MarkdownIt:
    md = _syntax()
    md.add_render_rule("image", _image_as_link)
    return md


@cache
def _block_parser() -> MarkdownIt:
    """The same Markdown, parsed into its blocks only: where they begin and end does not
    depend on their inline content, whose parsing is ~90% of the whole parse's time."""
    md = _syntax()
    md.disable(["inline", "text_join"])
    return md


def render_markdown(text: str) -> str:
    """Sanitized HTML for a message's Markdown. Safe to mark safe in templates."""
    html = _markdown().render(text)
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        filter_style_properties={"text-align"},
        strip_comments=True,
    )


# A fence opens a block that only a matching closing fence can end; until one arrives
# there is no point parsing the growing code again.
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$", re.MULTILINE)
_LINE_WITH_TEXT = re.compile(r"\n[ \t]*\S")


@dataclass(frozen=True, slots=True)
class Block:
    """A finished top-level Markdown block: `html` renders `answer[start:end]`."""

    start: int
    end: int
    html: str

    def json(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "html": self.html}


class LiveMarkdown:
    """Formats an answer while it grows, one finished block at a time.

    A top-level block (paragraph, list, code block, table…) is finished once the next one
    has begun: nothing written later can change it. Each finished block is rendered once,
    so the work and the bytes stay linear in the answer's length; only the unfinished
    tail stays plain text. `start` is where the tail begins in the answer, in code points.
    """

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.tail = ""
        self._fence_from: int | None = None

    @classmethod
    def resume(cls, text: str, start: int = 0) -> tuple[LiveMarkdown, list[Block]]:
        """Take over `text` (the answer from `start` on, none of it rendered yet).

        Returns the state and the blocks of `text` that are already finished.
        """
        live = cls(start)
        live.tail = text
        if "\r" in text:
            return live, []
        return live, live._split()

    def feed(self, text: str) -> list[Block]:
        """Add the answer's next text; returns the blocks it finished, rendered."""
        if not text:
            return []
        before = len(self.tail)
        self.tail += text
        # A new block can only begin on a line after a line break, once that line has
        # more than white space: until `text` starts such a line, nothing can have changed.
        if not self._starts_a_line(before, text) or "\r" in self.tail:
            return []
        if self._fence_from is not None and not _FENCE_CLOSE.search(self.tail, self._fence_from):
            self._fence_from = max(self._fence_from, self.tail.rfind("\n") + 1)
            return []
        return self._split()

    def _starts_a_line(self, before: int, text: str) -> bool:
        """Whether `text` (at `before` in the tail) writes the first text of a new line."""
        if _LINE_WITH_TEXT.search(text):
            return True
        line_start = self.tail.rfind("\n", 0, before)
        return line_start >= 0 and not self.tail[line_start:before].strip() and not text.isspace()

    def _split(self) -> list[Block]:
        tokens = _block_parser().parse(self.tail)
        starts = [
            token.map[0]
            for token in tokens
            if token.level == 0 and token.nesting != -1 and token.map is not None
        ]
        if len(starts) < 2:
            self._settle()
            return []
        # markdown-it counts lines by "\n" alone (a "\r" stops live formatting, see feed).
        line_offsets = [0, *itertools.accumulate(len(line) + 1 for line in self.tail.split("\n"))]
        cuts = [0, *(line_offsets[line] for line in starts[1:])]
        blocks = [
            Block(self.start + begin, self.start + end, render_markdown(self.tail[begin:end]))
            for begin, end in itertools.pairwise(cuts)
        ]
        self.start += cuts[-1]
        self.tail = self.tail[cuts[-1] :]
        self._settle()
        return blocks

    def _settle(self) -> None:
        # An open fence is only worth parsing again once it may be closed.
        opened = _FENCE_OPEN.match(self.tail)
        self._fence_from = (self.tail.find("\n") + 1 or len(self.tail)) if opened else None
