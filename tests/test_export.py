"""Conversation export: JSON with every branch and parent ids, Markdown of the current one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.export import conversation_export_json, conversation_export_markdown
from chat.models import Conversation
from tests.transcripts import Branched, ask, branched, reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def trip(user: Any) -> Branched:
    return branched(user)


def fresh(conversation: Conversation) -> Conversation:
    """The conversation as a view would load it: nothing prefetched."""
    return Conversation.objects.get(pk=conversation.pk)


def test_json_holds_every_branch_with_parent_ids(trip: Branched) -> None:
    exported = conversation_export_json(fresh(trip.conversation))

    assert exported["format"] == "chat.conversation.v1"
    assert exported["id"] == str(trip.conversation.id)
    assert exported["title"] == "Trip plans"
    assert exported["user"] == "alice"
    assert exported["model"] == "demo:demo"
    assert exported["system_prompt"] == "Be brief."
    assert exported["current_leaf_id"] == str(trip.regenerated.id)
    assert exported["current_branch"] == [str(m.id) for m in trip.current_branch]
    messages = exported["messages"]
    assert [m["id"] for m in messages] == [str(m.id) for m in trip.everything]
    assert [m["parent_id"] for m in messages] == [
        None,
        str(trip.question.id),
        None,
        str(trip.edited.id),
        str(trip.edited.id),
    ]
    assert [m["content"] for m in messages] == [m.content for m in trip.everything]
    failed = messages[3]
    assert failed["status"] == "error"
    assert failed["error"] == {"code": "upstream", "message": "The model provider failed."}
    assert failed["usage"] == {"prompt_tokens": 12, "completion_tokens": 2}
    assert failed["ttft_ms"] == 200 and failed["duration_ms"] == 1200
    # Versions at one place in the tree, as the API lists them.
    assert failed["sibling_ids"] == [str(trip.failed.id), str(trip.regenerated.id)]
    assert messages[0]["sibling_ids"] == [str(trip.question.id), str(trip.edited.id)]
    json.dumps(exported)  # plain JSON types only


def test_markdown_is_the_current_branch(trip: Branched) -> None:
    text = conversation_export_markdown(fresh(trip.conversation))

    assert text == (
        "# Trip plans\n"
        "\n"
        "- Model: demo:demo\n"
        f"- Created: {trip.conversation.created_at:%Y-%m-%d %H:%M} UTC\n"
        f"- Conversation: {trip.conversation.id}\n"
        "\n"
        "System prompt:\n"
        "\n"
        "> Be brief.\n"
        "\n"
        "## User\n"
        "\n"
        "Plan a trip to Rome\n"
        "\n"
        "## Assistant (demo:demo)\n"
        "\n"
        "Start at the *Colosseum*.\n"
    )


def test_markdown_says_how_an_answer_ended(user: Any) -> None:
    conversation = Conversation.objects.create(user=user, model="demo:demo")
    first = reply(conversation, ask(conversation, None, "One"), "Partial", status="stopped")
    second = reply(
        conversation,
        ask(conversation, first, "Two"),
        "",
        status="error",
        error_code="rate_limited",
        error_message="Try again in 20 seconds.",
    )
    conversation.current_leaf = second
    conversation.save()

    text = conversation_export_markdown(fresh(conversation))

    assert text.startswith("# New chat\n")
    assert "Partial\n\n*Stopped.*\n" in text
    assert "*(empty)*\n\n*Error (rate_limited): Try again in 20 seconds.*\n" in text


def test_an_empty_conversation_exports(user: Any) -> None:
    conversation = Conversation.objects.create(user=user, title="Empty", model="demo:demo")

    assert conversation_export_json(fresh(conversation))["messages"] == []
    assert conversation_export_json(fresh(conversation))["current_branch"] == []
    assert conversation_export_markdown(fresh(conversation)).startswith("# Empty\n")


def test_one_export_takes_two_queries(trip: Branched, django_assert_num_queries: Any) -> None:
    conversation = fresh(trip.conversation)

    with django_assert_num_queries(2):  # the messages, the user
        conversation_export_json(conversation)
    with django_assert_num_queries(1):  # the messages (the user is cached now)
        conversation_export_markdown(conversation)


def test_prefetched_exports_take_no_query_per_conversation(
    user: Any, django_assert_num_queries: Any
) -> None:
    for _ in range(5):
        branched(user)

    with django_assert_num_queries(2):
        conversations = Conversation.objects.select_related("user").prefetch_related("messages")
        exported = [conversation_export_json(c) for c in conversations]
        [conversation_export_markdown(c) for c in conversations]
    assert [len(item["messages"]) for item in exported] == [5] * 5
