"""The JSON shapes of the API (CONTRACT §4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chat import services
from chat.models import Conversation, Message, UserSettings


def message_json(message: Message) -> dict[str, Any]:
    """A message as the API shows it. Reads `sibling_ids` if attached, else queries."""
    error = (
        {"code": message.error_code, "message": message.error_message}
        if message.error_code
        else None
    )
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "parent_id": str(message.parent_id) if message.parent_id else None,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "model": message.model or None,
        "finish_reason": message.finish_reason or None,
        "error": error,
        "usage": {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
        },
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "sibling_ids": [str(i) for i in services.message_sibling_ids(message=message)],
        "created_at": message.created_at.isoformat(),
    }


def conversation_json(
    conversation: Conversation, *, messages: Sequence[Message] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "current_leaf_id": (
            str(conversation.current_leaf_id) if conversation.current_leaf_id else None
        ),
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }
    if messages is not None:
        data["messages"] = [message_json(message) for message in messages]
    return data


def user_settings_json(user_settings: UserSettings) -> dict[str, Any]:
    return {"transport": user_settings.transport}
