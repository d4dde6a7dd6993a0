"""Transcript review in the Django admin: read-only, model output rendered inert.

Nobody edits a transcript here, superusers included: every write of a chat row goes
through `chat.services`, and a transcript is a record. Staff with the view permission
(the "Transcript reviewers" group) read conversations and messages and export them;
deleting a conversation needs the delete permission and goes through the service.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator

from chat import services, usage
from chat.export import (
    EXPORT_FORMAT,
    conversation_export_json,
    conversation_export_markdown,
)
from chat.models import Conversation, Message
from chat.rendering import render_markdown
from chat.transcript import transcript_items

Status = Message.Status


def rendered(text: str) -> SafeString:
    """Message text as sanitized HTML, in an element where htmx attributes do nothing."""
    html = mark_safe(render_markdown(text))  # noqa: S308 - sanitized by nh3
    return format_html('<div class="chat-admin-content" hx-disable>{}</div>', html)


# --- Filters -------------------------------------------------------------------------


class ModelFilter(admin.SimpleListFilter):
    """The models that appear in the rows (user messages, which have none, left out)."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        models = (
            model_admin.model.objects.exclude(model="")
            .order_by("model")
            .values_list("model", flat=True)
            .distinct()
        )
        return [(model, model) for model in models]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(model=self.value()) if self.value() else queryset


class HasErrorFilter(admin.SimpleListFilter):
    title = "has error"
    parameter_name = "has_error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        condition = self.condition(queryset)
        if self.value() == "yes":
            return queryset.filter(condition)
        if self.value() == "no":
            return queryset.exclude(condition)
        return queryset

    def condition(self, queryset: QuerySet[Any]) -> Q | Exists:
        if queryset.model is Message:
            return Q(status=Status.ERROR)
        return _has_answer(Status.ERROR)


class AnswerStatusFilter(admin.SimpleListFilter):
    """Conversations with at least one answer in the chosen status."""

    title = "answer status"
    parameter_name = "answer_status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(Status.choices)

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[Conversation]
    ) -> QuerySet[Conversation]:
        if self.value() in Status.values:
            return queryset.filter(_has_answer(str(self.value())))
        return queryset


def _has_answer(status: str) -> Exists:
    return Exists(Message.objects.filter(conversation=OuterRef("pk"), status=status))


def _per_conversation(aggregate: Any) -> Coalesce:
    """An aggregate over each conversation's messages, as a subquery (0 for none)."""
    messages = (
        Message.objects.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(value=aggregate)
        .values("value")
    )
    return Coalesce(Subquery(messages, output_field=IntegerField()), 0)


# --- Conversations -------------------------------------------------------------------


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "__str__",
        "user",
        "model",
        "message_count",
        "token_count",
        "error_count",
        "updated_at",
    ]
    list_filter = [
        ("user", admin.RelatedOnlyFieldListFilter),
        ModelFilter,
        AnswerStatusFilter,
        HasErrorFilter,
        "updated_at",
    ]
    search_fields = ["title", "messages__content", "user__username"]
    search_help_text = "Search titles, message text and usernames."
    list_select_related = ["user"]
    list_per_page = 50
    fields = readonly_fields = (
        "id",
        "user",
        "title",
        "model",
        "system_prompt",
        "created_at",
        "updated_at",
    )
    actions = ["export_json", "export_markdown"]
    change_form_template = "admin/chat/conversation/change_form.html"

    class Media:
        css = {"all": ["chat/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        conversations: QuerySet[Conversation] = super().get_queryset(request)
        # Subqueries, not joins: a search in message text joins the messages again, and
        # aggregates over that join would count each match once more.
        return conversations.select_related("user").annotate(
            message_total=_per_conversation(Count("id")),
            token_total=_per_conversation(
                Coalesce(Sum("prompt_tokens"), 0) + Coalesce(Sum("completion_tokens"), 0)
            ),
            error_total=_per_conversation(Count("id", filter=Q(status=Status.ERROR))),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Messages go with their conversation: deleting it needs no right to delete them
        # one by one (which nobody has, as that would cut a branch out of the tree).
        perms_needed.discard(str(Message._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Conversation) -> None:
        services.conversation_delete(conversation=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        for conversation in queryset:
            services.conversation_delete(conversation=conversation)

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.message_total  # type: ignore[attr-defined,no-any-return]

    @admin.display(description="tokens", ordering="token_total")
    def token_count(self, conversation: Conversation) -> int:
        return conversation.token_total  # type: ignore[attr-defined,no-any-return]

    @admin.display(description="errors", ordering="error_total")
    def error_count(self, conversation: Conversation) -> int:
        return conversation.error_total  # type: ignore[attr-defined,no-any-return]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Conversation | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["transcript"] = transcript_items(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- Export ----------------------------------------------------------------------

    def _exported(self, queryset: QuerySet[Conversation]) -> list[Conversation]:
        # Two queries for all of them: the conversations with their users, then messages.
        return list(queryset.select_related("user").prefetch_related("messages"))

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        document = {
            "format": f"{EXPORT_FORMAT}.list",
            "exported_at": timezone.now().isoformat(),
            "conversations": [
                conversation_export_json(conversation) for conversation in self._exported(queryset)
            ],
        }
        return _attachment(
            json.dumps(document, indent=2, ensure_ascii=False), "application/json", "json"
        )

    @admin.action(description="Export selected conversations as Markdown", permissions=["view"])
    def export_markdown(
        self, request: HttpRequest, queryset: QuerySet[Conversation]
    ) -> HttpResponse:
        documents = [
            conversation_export_markdown(conversation) for conversation in self._exported(queryset)
        ]
        return _attachment("\n---\n\n".join(documents), "text/markdown", "md")


def _count(tokens: int | None) -> str:
    return "-" if tokens is None else str(tokens)


def _attachment(body: str, content_type: str, extension: str) -> HttpResponse:
    response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.{extension}"'
    return response


# --- Messages ------------------------------------------------------------------------


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "excerpt",
        "role",
        "status",
        "model",
        "conversation_link",
        "user",
        "error",
        "tokens",
        "ttft_ms",
        "tokens_per_second",
        "created_at",
    ]
    list_display_links = ["excerpt"]
    ordering = ["-created_at"]
    list_filter = [
        ("conversation__user", admin.RelatedOnlyFieldListFilter),
        ModelFilter,
        "status",
        HasErrorFilter,
        "role",
        "created_at",
    ]
    search_fields = ["content", "conversation__title"]
    search_help_text = "Search message text and conversation titles."
    list_select_related = ["conversation__user"]
    list_per_page = 100
    fields = readonly_fields = (
        "id",
        "conversation_link",
        "user",
        "parent",
        "role",
        "status",
        "model",
        "finish_reason",
        "error_code",
        "error_message",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "duration_ms",
        "tokens_per_second",
        "created_at",
        "content_html",
    )

    class Media:
        css = {"all": ["chat/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return super().get_queryset(request).select_related("conversation__user", "parent")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # A message is a node of its conversation's tree: delete the conversation instead.
        return False

    @admin.display(description="text")
    def excerpt(self, message: Message) -> str:
        return Truncator(" ".join(message.content.split())).chars(60) or "(empty)"

    @admin.display(description="conversation")
    def conversation_link(self, message: Message) -> SafeString:
        conversation = message.conversation
        url = reverse("admin:chat_conversation_change", args=[conversation.pk])
        return format_html('<a href="{}">{}</a>', url, Truncator(str(conversation)).chars(60))

    @admin.display(description="user", ordering="conversation__user__username")
    def user(self, message: Message) -> str:
        return message.conversation.user.get_username()

    @admin.display(description="error", ordering="error_code")
    def error(self, message: Message) -> str:
        return message.error_code  # the message's page has the whole error

    @admin.display(description="tokens in / out")
    def tokens(self, message: Message) -> str:
        if message.prompt_tokens is None and message.completion_tokens is None:
            return ""
        return f"{_count(message.prompt_tokens)} / {_count(message.completion_tokens)}"

    @admin.display(description="tokens/s")
    def tokens_per_second(self, message: Message) -> str:
        rate = usage.tokens_per_second(message)
        return "" if rate is None else f"{rate:.1f}"

    @admin.display(description="content")
    def content_html(self, message: Message) -> SafeString:
        return rendered(message.content)
