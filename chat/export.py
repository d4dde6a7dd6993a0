"""Conversations as files: JSON with every branch, Markdown with the current one.

One format for every place that exports (the admin's actions, the user's own export), so
a file means the same wherever it came from. Both functions read the conversation's
messages through `conversation.messages.all()`, so a caller exporting many conversations
can `prefetch_related("messages")` (and `select_related("user")`) and pay two queries for
all of them; a single conversation costs one query for its messages and one for its user.
"""

from __future__ import annotations

import uuid
from typing import Any

from chat.models import Conversation, Message
from chat.serializers import message_json

EXPORT_FORMAT = "chat.conversation.v1"

ROLE_NAMES = {Message.Role.USER: "User", Message.Role.ASSISTANT: "Assistant"}
ENDINGS = {
    Message.Status.STREAMING: "Still being written when exported.",
    Message.Status.STOPPED: "Stopped.",
    Message.Status.INTERRUPTED: "Interrupted.",
}


def conversation_messages(conversation: Conversation) -> list[Message]:
    """Every message of the conversation, oldest first, each with `sibling_ids` attached."""
    messages = sorted(conversation.messages.all(), key=lambda m: (m.created_at, str(m.id)))
    siblings: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for message in messages:
        siblings.setdefault(message.parent_id, []).append(message.id)
    for message in messages:
        # Read by `message_json` (and the admin), so that nothing queries per message.
        message.sibling_ids = siblings[message.parent_id]  # type: ignore[attr-defined]
    return messages


def current_branch(conversation: Conversation, messages: list[Message]) -> list[Message]:
    """The path from the root to the conversation's current leaf, within `messages`."""
    by_id = {message.id: message for message in messages}
    branch: list[Message] = []
    node = by_id.get(conversation.current_leaf_id) if conversation.current_leaf_id else None
    while node is not None and len(branch) <= len(messages):
        branch.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    branch.reverse()
    return branch


def conversation_export_json(conversation: Conversation) -> dict[str, Any]:
    """The whole conversation: every message of every branch, with parent ids.

    Messages have the API's shape (`docs/api.md`), oldest first; `current_branch` lists
    the ids of the current branch, root to leaf.
    """
    messages = conversation_messages(conversation)
    branch = current_branch(conversation, messages)
    return {
        "format": EXPORT_FORMAT,
        "id": str(conversation.id),
        "title": conversation.title,
        "user": conversation.user.get_username(),
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "current_leaf_id": str(conversation.current_leaf_id)
        if conversation.current_leaf_id
        else None,
        "current_branch": [str(message.id) for message in branch],
        "messages": [message_json(message) for message in messages],
    }


def conversation_export_markdown(conversation: Conversation) -> str:
    """The current branch as a Markdown document, for reading or pasting elsewhere."""
    messages = conversation_messages(conversation)
    title = " ".join(conversation.title.split()) or "New chat"
    lines = [
        f"# {title}",
        "",
        f"- Model: {conversation.model}",
        f"- Created: {conversation.created_at:%Y-%m-%d %H:%M} UTC",
        f"- Conversation: {conversation.id}",
    ]
    if conversation.system_prompt:
        lines += ["", "System prompt:", "", *_quoted(conversation.system_prompt)]
    for message in current_branch(conversation, messages):
        heading = ROLE_NAMES.get(Message.Role(message.role), message.role)
        if message.role == Message.Role.ASSISTANT and message.model:
            heading += f" ({message.model})"
        lines += ["", f"## {heading}", "", message.content.strip("\n") or "*(empty)*"]
        ending = _ending(message)
        if ending:
            lines += ["", f"*{ending}*"]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> list[str]:
    return [f"> {line}" if line else ">" for line in text.splitlines()]


def _ending(message: Message) -> str:
    if message.status == Message.Status.ERROR:
        detail = message.error_message or "The answer failed."
        return f"Error ({message.error_code}): {detail}" if message.error_code else detail
    return ENDINGS.get(Message.Status(message.status), "")
