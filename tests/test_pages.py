"""The chat page's server rendering: the transcript fragment, the version switcher, Retry.

Conversations are built straight in the database here: these tests are about what the page
shows for a given tree of messages, not about how the tree grew (see test_branches.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


def _conversation(user: Any) -> Conversation:
    return Conversation.objects.create(user=user, title="Versions", model="demo:demo")


def _message(
    conversation: Conversation,
    parent: Message | None,
    role: str,
    content: str,
    status: str = Message.Status.COMPLETE,
    **fields: Any,
) -> Message:
    message = Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=role,
        content=content,
        status=status,
        **fields,
    )
    conversation.current_leaf = message
    conversation.save(update_fields=["current_leaf"])
    return message


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _article(html: str, message: Message) -> str:
    """The HTML of one message's article on the page."""
    match = re.search(rf'<article [^>]*data-message-id="{message.id}".*?</article>', html, re.S)
    assert match, f"message {message.id} is not on the page"
    return match.group(0)


@pytest.fixture
def edited(user: Any) -> dict[str, Any]:
    """A question edited once (two versions), the second answered twice (two versions)."""
    conversation = _conversation(user)
    first = _message(conversation, None, "user", "What is 2+2?")
    _message(conversation, first, "assistant", "Four.")
    second = _message(conversation, None, "user", "What is 3+3?")
    old_answer = _message(conversation, second, "assistant", "Five?")
    new_answer = _message(conversation, second, "assistant", "Six.")
    return {
        "conversation": conversation,
        "first": first,
        "second": second,
        "old_answer": old_answer,
        "new_answer": new_answer,
    }


def test_the_fragment_is_the_current_branch_only(user: Any, edited: dict[str, Any]) -> None:
    url = f"/c/{edited['conversation'].id}/transcript"
    response = _client(user).get(url)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'role="log"' not in html  # the inside of the log only
    assert html.count("<article ") == 2
    _article(html, edited["second"])
    _article(html, edited["new_answer"])
    assert "What is 2+2?" not in html and "Five?" not in html


def test_the_fragment_of_an_empty_conversation_invites_a_question(user: Any) -> None:
    conversation = _conversation(user)
    response = _client(user).get(f"/c/{conversation.id}/transcript")
    assert response.status_code == 200
    assert "How can I help?" in response.content.decode()


def test_another_users_fragment_is_not_found(other_user: Any, edited: dict[str, Any]) -> None:
    response = _client(other_user).get(f"/c/{edited['conversation'].id}/transcript")
    assert response.status_code == 404
    assert "Six." not in response.content.decode()


def test_a_missing_conversations_fragment_is_not_found(user: Any) -> None:
    response = _client(user).get("/c/00000000-0000-0000-0000-000000000000/transcript")
    assert response.status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(edited: dict[str, Any]) -> None:
    url = f"/c/{edited['conversation'].id}/transcript"
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_page_shows_where_each_message_stands_among_its_versions(
    user: Any, edited: dict[str, Any]
) -> None:
    html = _client(user).get(f"/c/{edited['conversation'].id}/").content.decode()

    question = _article(html, edited["second"])
    assert 'aria-label="Version 2 of 2"' in question
    assert ">2 / 2<" in question
    assert re.search(rf'data-target="{edited["first"].id}"[^>]*title="Previous version"', question)
    assert re.search(r'data-target=""[^>]*disabled title="Next version"', question)
    assert ">Edit<" in question

    answer = _article(html, edited["new_answer"])
    assert 'aria-label="Version 2 of 2"' in answer and ">2 / 2<" in answer
    previous = edited["old_answer"].id
    assert re.search(rf'data-target="{previous}"[^>]*title="Previous version"', answer)
    assert ">Regenerate<" in answer and ">Copy<" in answer


def test_a_message_with_one_version_has_no_switcher(user: Any) -> None:
    conversation = _conversation(user)
    question = _message(conversation, None, "user", "Hello")
    answer = _message(conversation, question, "assistant", "Hi!")
    html = _client(user).get(f"/c/{conversation.id}/").content.decode()

    for message in (question, answer):
        article = _article(html, message)
        assert "Previous version" not in article and " / " not in article


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (Message.Status.ERROR, True),
        (Message.Status.INTERRUPTED, True),
        (Message.Status.STOPPED, False),
        (Message.Status.COMPLETE, False),
    ],
)
def test_retry_is_offered_for_answers_that_failed(user: Any, status: str, retry: bool) -> None:
    conversation = _conversation(user)
    question = _message(conversation, None, "user", "Hello")
    fields = (
        {"error_code": "provider_error", "error_message": "It broke."} if status == "error" else {}
    )
    answer = _message(conversation, question, "assistant", "Half an", status, **fields)
    html = _client(user).get(f"/c/{conversation.id}/").content.decode()

    article = _article(html, answer)
    assert (">Retry<" in article) is retry
    assert re.search(r'data-action="regenerate"[^>]*>Regenerate<', article)
    assert ">Retry<" not in _article(html, question)
