from __future__ import annotations

import uuid
from dataclasses import dataclass

from django import template
from django.utils.safestring import SafeString, mark_safe

from chat import services
from chat.models import Message
from chat.rendering import LiveMarkdown, render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Render Markdown through the sanitizer; the only way templates show model text."""
    return mark_safe(render_markdown(text))  # noqa: S308 - nh3 output


STATUS_TEXT = {
    Message.Status.STOPPED: "Stopped",
    Message.Status.ERROR: "Error",
    Message.Status.INTERRUPTED: "Interrupted",
}


@register.filter
def status_text(message: Message) -> str:
    text = STATUS_TEXT.get(Message.Status(message.status), "")
    if message.status == Message.Status.ERROR and message.error_message:
        return f"{text}: {message.error_message}"
    return text


@dataclass(frozen=True)
class Versions:
    """Where a message stands among its versions (its siblings), for the version switcher."""

    index: int  # 1-based, as people count
    count: int
    previous: uuid.UUID | None
    next: uuid.UUID | None


@register.simple_tag
def message_versions(message: Message) -> Versions | None:
    """The message's place among its versions; None when it is the only one (no switcher)."""
    ids = services.message_sibling_ids(message=message)
    if len(ids) < 2:
        return None
    at = ids.index(message.id)
    return Versions(
        index=at + 1,
        count=len(ids),
        previous=ids[at - 1] if at > 0 else None,
        next=ids[at + 1] if at + 1 < len(ids) else None,
    )


@dataclass(frozen=True)
class LivePart:
    """An answer still being written, as the page first shows it (see LiveMarkdown)."""

    html: SafeString  # its finished blocks, sanitized
    rendered: int  # where they end, in code points
    tail: str  # the unfinished rest, shown as plain text


@register.simple_tag
def live_markdown(text: str) -> LivePart:
    live, blocks = LiveMarkdown.resume(text)
    html = "".join(block.html for block in blocks)
    return LivePart(mark_safe(html), live.start, live.tail)  # noqa: S308 - nh3 output


@register.filter
def footnote(message: Message) -> str:
    """Model, time to first token and speed of a finished answer: "demo · 0.4 s to first…"."""
    parts = [message.model]
    if message.ttft_ms is not None:
        parts.append(f"{message.ttft_ms / 1000:.2f} s to first token")
    writing_ms = (message.duration_ms or 0) - (message.ttft_ms or 0)
    if message.completion_tokens and writing_ms > 0:
        parts.append(f"{message.completion_tokens / writing_ms * 1000:.1f} tokens/s")
    return " · ".join(part for part in parts if part)
