"""Transcript review in the Django admin: read-only, model output rendered inert."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from chat.models import Conversation, Message
from chat.rendering import render_markdown


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class MessageInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Message
    fk_name = "conversation"
    readonly_fields = [
        "created_at",
        "role",
        "status",
        "model",
        "rendered",
        "completion_tokens",
        "ttft_ms",
    ]
    fields = tuple(readonly_fields)
    ordering = ["created_at"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="content")
    def rendered(self, message: Message) -> SafeString:
        return _rendered(message)


def _rendered(message: Message) -> SafeString:
    html = mark_safe(render_markdown(message.content))  # noqa: S308 - sanitized by nh3
    return format_html('<div class="chat-transcript" hx-disable>{}</div>', html)


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "user", "model", "updated_at"]
    list_filter = ["model", "updated_at"]
    search_fields = ["title", "user__username"]
    list_select_related = ["user"]
    inlines = [MessageInline]
    readonly_fields = [
        "id",
        "user",
        "title",
        "model",
        "system_prompt",
        "current_leaf",
        "created_at",
    ]
    fields = tuple(readonly_fields)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "conversation",
        "role",
        "status",
        "model",
        "completion_tokens",
        "created_at",
    ]
    list_filter = ["status", "role", "model", "created_at"]
    search_fields = ["content"]
    list_select_related = ["conversation"]
    readonly_fields = [
        "id", "conversation", "parent", "role", "status", "model", "finish_reason",
        "error_code", "error_message", "prompt_tokens", "completion_tokens", "ttft_ms",
        "duration_ms", "created_at", "rendered",
    ]  # fmt: skip
    fields = tuple(readonly_fields)
    exclude = ["content"]

    @admin.display(description="content")
    def rendered(self, message: Message) -> SafeString:
        return _rendered(message)
