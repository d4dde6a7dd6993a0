from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from chat.models import Message
from chat.rendering import render_markdown

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
