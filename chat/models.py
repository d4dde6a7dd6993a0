"""Conversations and their messages.

Messages form a tree: a message's children are the versions that follow it. Editing a
user message adds a sibling user message; regenerating an answer adds a sibling
assistant message. Nothing is deleted by either. The conversation remembers its current
leaf, and the current branch is the path from the root to that leaf.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200)
    system_prompt = models.TextField(blank=True)
    current_leaf = models.ForeignKey(
        "Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or "New chat"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=200, blank=True)
    finish_reason = models.CharField(max_length=64, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # Written by the running generation at every flush; a stale value while the status
    # is still `streaming` means the process that ran it died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The client's idempotency key of the send (or edit) that created this user message:
    # the same key again replays this exchange instead of starting another answer.
    client_key = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    TERMINAL_STATUSES = frozenset(
        {Status.COMPLETE, Status.STOPPED, Status.ERROR, Status.INTERRUPTED}
    )

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]
        constraints = [
            # Conversations belong to one user, so this makes a key unique per user too.
            models.UniqueConstraint(
                fields=["conversation", "client_key"],
                condition=~models.Q(client_key=""),
                name="chat_message_unique_client_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"

    @property
    def is_streaming(self) -> bool:
        return self.status == self.Status.STREAMING


class UserSettings(models.Model):
    """A user's preferences. The row appears the first time they change one."""

    class Transport(models.TextChoices):
        SSE = "sse", "Server-sent events"
        WEBSOCKET = "ws", "WebSocket"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="chat_settings",
    )
    # How the chat page follows answers; both speak the same events.
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.SSE)
    # Set by admins on the usage page, never by the user: tokens per day, 0 = unlimited,
    # null = the site's CHAT_DAILY_TOKEN_QUOTA.
    daily_token_quota = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user settings"

    def __str__(self) -> str:
        return f"settings of user {self.user_id}"


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 hash of the secret is stored.

    The secret is shown once, when the token is created; `prefix` (its first characters)
    lets its owner tell tokens apart afterwards. A revoked token stays listed nowhere and
    authenticates nothing, but its row remains as a record.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
