"""Markdown to sanitized HTML: what model (or user) text may and may not become."""

from __future__ import annotations

import pytest

from chat.rendering import render_markdown
from tests.html import Elements


def test_plain_markdown_renders() -> None:
    html = render_markdown("# Title\n\nSome **bold** and *em* and `code`.\n\n- one\n- two\n")
    elements = Elements(html)
    tags = [tag for tag, _ in elements.tags]
    assert tags == ["h1", "p", "strong", "em", "code", "ul", "li", "li"]
    assert "Some bold and em and code." in elements.text


@pytest.mark.parametrize(
    "source",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "<svg onload=alert(1)></svg>",
        "<iframe src='https://evil.example'></iframe>",
        '<a href="javascript:alert(1)">x</a>',
        "<style>body{display:none}</style>",
        "text <b onclick=alert(1)>bold</b>",
    ],
)
def test_raw_html_is_shown_as_text_never_as_markup(source: str) -> None:
    html = render_markdown(source)
    elements = Elements(html)

    assert {tag for tag, _ in elements.tags} <= {"p"}
    assert not elements.attributes
    assert source in elements.text  # the reader sees what was written


@pytest.mark.parametrize(
    "source",
    [
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        "[click](java\tscript:alert(1))",
        "[click](vbscript:msgbox(1))",
        "[click](data:text/html;base64,PHNjcmlwdD4=)",
        "<javascript:alert(1)>",
        "[ref]\n\n[ref]: javascript:alert(1)",
    ],
)
def test_dangerous_links_have_no_dangerous_href(source: str) -> None:
    for tag, attrs in Elements(render_markdown(source)).tags:
        href = (attrs.get("href") or "").lower().replace("\t", "")
        assert not href.startswith(("javascript:", "vbscript:", "data:")), (tag, attrs)


def test_safe_links_open_in_a_new_tab_without_referrer() -> None:
    links = Elements(render_markdown("[docs](https://example.com/a?b=1&c=2)")).named("a")
    assert len(links) == 1
    assert links[0]["href"] == "https://example.com/a?b=1&c=2"
    assert links[0]["target"] == "_blank"
    assert set((links[0]["rel"] or "").split()) >= {"noopener", "noreferrer", "nofollow"}


@pytest.mark.parametrize(
    "source",
    [
        "![a cat](https://images.example/cat.png)",
        '![a cat](https://images.example/cat.png "title")',
        "![a cat][img]\n\n[img]: https://images.example/cat.png",
    ],
)
def test_images_become_links(source: str) -> None:
    elements = Elements(render_markdown(source))

    assert not elements.named("img")
    links = elements.named("a")
    assert len(links) == 1
    assert links[0]["href"] == "https://images.example/cat.png"
    assert "a cat" in elements.text


def test_images_with_dangerous_sources_are_not_links_to_them() -> None:
    for source in ("![x](javascript:alert(1))", "![x](data:image/png;base64,AAAA)"):
        elements = Elements(render_markdown(source))
        assert not elements.named("img")
        for attrs in elements.named("a"):
            assert not (attrs.get("href") or "").lower().startswith(("javascript:", "data:"))


@pytest.mark.parametrize(
    "source",
    [
        '<div hx-get="/api/conversations" hx-trigger="load">x</div>',
        '<span data-hx-post="/api/x" data-hx-trigger="load">x</span>',
        '[x](https://example.com "title" hx-get="/x")',
        '[x](https://example.com){hx-get="/x"}',
    ],
)
def test_no_htmx_attributes_survive(source: str) -> None:
    for name, _ in Elements(render_markdown(source)).attributes:
        assert not name.startswith(("hx-", "data-hx-", "on")), name


def test_fenced_code_is_highlighted_and_escaped() -> None:
    source = '```python\ndef f(x):\n    return "<b>" if x else None\n```\n'
    html = render_markdown(source)
    elements = Elements(html)

    assert elements.named("pre")
    codes = elements.named("code")
    assert codes and codes[0].get("class") == "language-python"
    assert len(elements.named("span")) > 3  # tokens carry highlight classes
    assert "<b>" not in html
    assert 'return "<b>" if x else None' in elements.text


def test_unknown_languages_and_plain_fences_stay_escaped_text() -> None:
    html = render_markdown("```nosuchlanguage\n<script>x</script>\n```\n\n    <i>indented</i>\n")
    elements = Elements(html)
    assert {tag for tag, _ in elements.tags} <= {"pre", "code"}
    assert "<script>x</script>" in elements.text
    assert "<i>indented</i>" in elements.text


def test_tables_render_with_alignment() -> None:
    source = "| Left | Right |\n|:-----|------:|\n| a | b |\n| c | d |\n"
    elements = Elements(render_markdown(source))

    assert [tag for tag, _ in elements.tags if tag in {"table", "thead", "tbody"}] == [
        "table",
        "thead",
        "tbody",
    ]
    assert len(elements.named("th")) == 2
    assert len(elements.named("td")) == 4
    styles = [(attrs.get("style") or "").replace(" ", "") for attrs in elements.named("td")]
    assert styles == ["text-align:left", "text-align:right"] * 2


def test_styles_other_than_alignment_are_dropped() -> None:
    # Only markdown-it writes styles, but the allowlist must hold even if it did not.
    for _, attrs in Elements(render_markdown("| a |\n|:-:|\n| b |\n")).tags:
        style = attrs.get("style")
        assert style is None or style.replace(" ", "") == "text-align:center"


def test_empty_text_renders_to_nothing() -> None:
    assert render_markdown("").strip() == ""
