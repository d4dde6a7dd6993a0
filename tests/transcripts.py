"""Conversations with branches, written straight to the database, for admin and export tests.

`branched()` builds the tree that editing and regenerating produce:

    question 1 ── answer 1                      (version 1 of the first message)
    question 1b ─┬ answer 2 (error: upstream)    (version 2, edited)
                 └ answer 2b                     (regenerated; the current leaf)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chat.models import Conversation, Message


@dataclass
class Branched:
    conversation: Conversation
    question: Message
    answer: Message
    edited: Message
    failed: Message
    regenerated: Message

    @property
    def current_branch(self) -> list[Message]:
        return [self.edited, self.regenerated]

    @property
    def everything(self) -> list[Message]:
        return [self.question, self.answer, self.edited, self.failed, self.regenerated]


def ask(conversation: Conversation, parent: Message | None, content: str) -> Message:
    return Message.objects.create(
        conversation=conversation, parent=parent, role="user", content=content
    )


def reply(conversation: Conversation, parent: Message, content: str, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "role": "assistant",
        "status": "complete",
        "model": conversation.model,
        "finish_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "ttft_ms": 200,
        "duration_ms": 1200,
        **fields,
    }
    return Message.objects.create(
        conversation=conversation, parent=parent, content=content, **values
    )


def branched(user: Any, title: str = "Trip plans", model: str = "demo:demo") -> Branched:
    conversation = Conversation.objects.create(
        user=user, title=title, model=model, system_prompt="Be brief."
    )
    question = ask(conversation, None, "Plan a trip")
    answer = reply(conversation, question, "Go to **Lisbon**.")
    edited = ask(conversation, None, "Plan a trip to Rome")
    failed = reply(
        conversation,
        edited,
        "Rome is",
        status="error",
        finish_reason="error",
        error_code="upstream",
        error_message="The model provider failed.",
        completion_tokens=2,
    )
    regenerated = reply(conversation, edited, "Start at the *Colosseum*.")
    conversation.current_leaf = regenerated
    conversation.save()
    return Branched(conversation, question, answer, edited, failed, regenerated)
