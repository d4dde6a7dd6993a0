"""A conversation's whole message tree, flattened for display: every branch, in order.

A run of messages with one version each reads as a plain thread. Where a message has
several versions (an edit, a regeneration), the transcript opens a fork and shows each
version with everything that follows it, oldest first, marking the one on the current
branch. The walk is iterative, so no depth of nested forks can exhaust the stack.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from chat.export import conversation_messages, current_branch
from chat.models import Conversation, Message
from chat.usage import tokens_per_second

Kind = Literal["message", "fork_start", "version_start", "version_end", "fork_end"]


@dataclass(frozen=True, slots=True)
class Item:
    kind: Kind
    message: Message | None = None
    current: bool = False  # on the current branch
    index: int = 0  # of a version, 1-based
    count: int = 0  # versions in the fork

    @property
    def tokens_per_second(self) -> float | None:
        return tokens_per_second(self.message) if self.message is not None else None


def transcript_items(conversation: Conversation) -> list[Item]:
    """The tree of `conversation` as a flat list; one query (for its messages)."""
    messages = conversation_messages(conversation)
    on_branch = {message.id for message in current_branch(conversation, messages)}
    children: dict[uuid.UUID | None, list[Message]] = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message)

    items: list[Item] = []
    # Work still to do, last first: an item to emit, or the children of a message to walk.
    todo: list[Item | uuid.UUID | None] = [None]
    while todo:
        task = todo.pop()
        if isinstance(task, Item):
            items.append(task)
            continue
        versions = children.get(task, [])
        if len(versions) == 1:
            only = versions[0]
            items.append(Item("message", only, current=only.id in on_branch))
            todo.append(only.id)
        elif versions:
            items.append(Item("fork_start", count=len(versions)))
            steps: list[Item | uuid.UUID | None] = []
            for index, version in enumerate(versions, start=1):
                current = version.id in on_branch
                steps += [
                    Item("version_start", version, current, index, len(versions)),
                    Item("message", version, current=current),
                    version.id,
                    Item("version_end"),
                ]
            steps.append(Item("fork_end"))
            todo.extend(reversed(steps))
    return items
