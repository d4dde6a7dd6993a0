"""Versions on the chat page: Edit, Regenerate, walking between versions, Retry.

The story: ask, edit the question twice (the demo model answers each version), regenerate
the last answer once, then walk every version with "Previous version" / "Next version",
and reload to see that the page remembers where we were.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.sync_api import Locator, Route, expect

from tests.browser.conftest import Session, demo_answer

pytestmark = pytest.mark.browser


def _question(chat: Session) -> Locator:
    return chat.transcript.get_by_role("article", name="You")


def _answer(chat: Session) -> Locator:
    return chat.answers()


def _expect_version(message: Locator, index: int, count: int) -> None:
    """The message shows "index / count", and its buttons are disabled only at the ends."""
    group = message.get_by_role("group", name=f"Version {index} of {count}")
    expect(group).to_be_visible()
    expect(group.locator(".versions__count")).to_have_text(f"{index} / {count}")
    previous = group.get_by_role("button", name="Previous version")
    following = group.get_by_role("button", name="Next version")
    for button, at_the_end in ((previous, index == 1), (following, index == count)):
        if at_the_end:
            expect(button).to_be_disabled()
        else:
            expect(button).to_be_enabled()


def _expect_single_version(message: Locator) -> None:
    expect(message.get_by_role("button", name="Previous version")).to_have_count(0)
    expect(message.locator(".versions__count")).to_have_count(0)


def _expect_exchange(chat: Session, prompt: str, answer_id: str) -> None:
    """The transcript is exactly this question and this (finished) answer."""
    expect(_question(chat)).to_have_count(1)
    expect(_answer(chat)).to_have_count(1)
    expect(_question(chat)).to_contain_text(prompt)
    expect(_answer(chat)).to_have_attribute("data-message-id", answer_id)
    expect(_answer(chat)).to_have_attribute("data-markdown", demo_answer(prompt))


def _edit(chat: Session, prompt: str) -> str:
    """Edit the (only) question to `prompt`; the id of the new answer, once it is final."""
    page = chat.page
    old_answer = _answer(chat).get_attribute("data-message-id")
    _question(chat).get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    editor.fill(prompt)
    page.get_by_role("button", name="Save and send").click()

    # The new branch replaces the old one from the edited message on.
    expect(_answer(chat)).not_to_have_attribute("data-message-id", old_answer or "")
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    expect(page.get_by_role("textbox", name="Edit message")).to_have_count(0)
    answer = _answer(chat)
    chat.wait_final(answer)
    answer_id = answer.get_attribute("data-message-id")
    assert answer_id
    _expect_exchange(chat, prompt, answer_id)
    return answer_id


def test_edit_twice_regenerate_once_then_walk_every_version(chat: Session) -> None:
    page = chat.page
    prompts = ["Which version is this? One.", "Which version is this? Two.", "And three?"]

    first = chat.send(prompts[0])
    regenerate = first.get_by_role("button", name="Regenerate")
    expect(regenerate).to_be_disabled()  # while it streams
    chat.wait_final(first)
    expect(regenerate).to_be_enabled()
    answers = [first.get_attribute("data-message-id")]
    _expect_single_version(_question(chat))
    _expect_single_version(first)

    answers.append(_edit(chat, prompts[1]))
    _expect_version(_question(chat), 2, 2)
    _expect_single_version(_answer(chat))
    answers.append(_edit(chat, prompts[2]))
    _expect_version(_question(chat), 3, 3)

    # Regenerate the last answer: a second version of it streams in its place.
    _answer(chat).get_by_role("button", name="Regenerate").click()
    expect(_answer(chat)).not_to_have_attribute("data-message-id", answers[2] or "")
    expect(_answer(chat).get_by_role("button", name="Regenerate")).to_be_disabled()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    chat.wait_final(_answer(chat))
    regenerated = _answer(chat).get_attribute("data-message-id")
    assert regenerated and regenerated not in answers
    _expect_exchange(chat, prompts[2], regenerated)
    _expect_version(_answer(chat), 2, 2)
    _expect_version(_question(chat), 3, 3)

    # Walk the answer's versions, then the question's.
    _answer(chat).get_by_role("button", name="Previous version").click()
    _expect_version(_answer(chat), 1, 2)
    _expect_exchange(chat, prompts[2], answers[2] or "")
    # Focus stays on the switcher (the partner button, now that this end is reached).
    expect(_answer(chat).get_by_role("button", name="Next version")).to_be_focused()
    _answer(chat).get_by_role("button", name="Next version").click()
    _expect_version(_answer(chat), 2, 2)
    _expect_exchange(chat, prompts[2], regenerated)

    _question(chat).get_by_role("button", name="Previous version").click()
    _expect_version(_question(chat), 2, 3)
    _expect_exchange(chat, prompts[1], answers[1] or "")
    _expect_single_version(_answer(chat))
    expect(_question(chat).get_by_role("button", name="Previous version")).to_be_focused()
    _question(chat).get_by_role("button", name="Previous version").click()
    _expect_version(_question(chat), 1, 3)
    _expect_exchange(chat, prompts[0], answers[0] or "")
    _question(chat).get_by_role("button", name="Next version").click()
    _expect_version(_question(chat), 2, 3)
    _question(chat).get_by_role("button", name="Next version").click()
    _expect_version(_question(chat), 3, 3)
    # Back on the newest question, its newest answer is shown again.
    _expect_exchange(chat, prompts[2], regenerated)
    _expect_version(_answer(chat), 2, 2)

    # The page remembers the chosen versions.
    _answer(chat).get_by_role("button", name="Previous version").click()
    _expect_version(_answer(chat), 1, 2)
    page.reload()
    _expect_version(_question(chat), 3, 3)
    _expect_version(_answer(chat), 1, 2)
    _expect_exchange(chat, prompts[2], answers[2] or "")
    chat.assert_clean()


def test_escape_cancels_the_editor_and_keeps_the_message(chat: Session) -> None:
    page = chat.page
    prompt = "Do not change me."
    answer = chat.send(prompt)
    chat.wait_final(answer)
    answer_id = answer.get_attribute("data-message-id") or ""

    edit = _question(chat).get_by_role("button", name="Edit")
    edit.click()
    editor = page.get_by_role("textbox", name="Edit message")
    expect(editor).to_have_value(prompt)
    editor.fill("Something else entirely.")
    page.keyboard.press("Escape")
    expect(editor).to_have_count(0)
    expect(edit).to_be_focused()
    _expect_exchange(chat, prompt, answer_id)

    # Cancel does the same.
    edit.click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("textbox", name="Edit message")).to_have_count(0)
    _expect_exchange(chat, prompt, answer_id)
    chat.assert_clean()


def test_a_stopped_answer_offers_regenerate_but_no_retry(chat: Session) -> None:
    answer = chat.send("Stop me, then try again.")
    chat.wait_text(answer, 20)
    chat.page.keyboard.press("Escape")
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(answer.get_by_role("button", name="Regenerate")).to_be_enabled()
    expect(answer.get_by_role("button", name="Retry")).to_have_count(0)
    chat.page.reload()
    expect(chat.answers().get_by_role("button", name="Retry")).to_have_count(0)
    chat.assert_clean()


def _failing_stream(route: Route) -> None:
    """A stream that ends in a provider error, as the server sends one (CONTRACT §5)."""
    message_id = route.request.url.split("/")[-2]
    events: list[tuple[str, dict[str, Any]]] = [
        ("start", {"message_id": message_id, "model": "demo:demo"}),
        ("token", {"text": "Half an "}),
        ("error", {"code": "provider_error", "message": "The model broke.", "retryable": True}),
        ("final", {"status": "error", "finish_reason": None, "content": "Half an ", "html": None}),
    ]
    body = "".join(
        f"id: {index}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
        for index, (name, data) in enumerate(events, start=1)
    )
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)


def test_an_answer_that_ends_in_an_error_offers_retry(chat: Session) -> None:
    page = chat.page
    # The browser sees this answer fail; on the server it runs on and completes.
    page.route("**/api/messages/*/stream", _failing_stream)
    prompt = "Fail for me, once."
    answer = chat.send(prompt)
    expect(answer).to_have_attribute("data-status", "error")
    expect(answer.get_by_text("Error: The model broke.")).to_be_visible()
    retry = answer.get_by_role("button", name="Retry")
    expect(retry).to_be_enabled()
    page.unroute("**/api/messages/*/stream")
    failed_id = answer.get_attribute("data-message-id") or ""
    while chat.api_message(answer)["status"] == "streaming":
        page.wait_for_timeout(100)

    retry.click()
    expect(_answer(chat)).not_to_have_attribute("data-message-id", failed_id)
    chat.wait_final(_answer(chat))
    retried = _answer(chat).get_attribute("data-message-id") or ""
    _expect_exchange(chat, prompt, retried)
    _expect_version(_answer(chat), 2, 2)
    expect(_answer(chat).get_by_role("button", name="Retry")).to_have_count(0)
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    chat.assert_clean()


def test_over_the_websocket_new_versions_stream_there_too(chat: Session) -> None:
    page = chat.page
    streams: list[str] = []
    page.on("request", lambda request: "/stream" in request.url and streams.append(request.url))
    page.goto("/?transport=ws")
    prompt = "Answer me over the socket."
    chat.wait_final(chat.send(prompt))

    edited = _edit(chat, "Answer me over the socket, again.")
    _expect_version(_question(chat), 2, 2)
    _answer(chat).get_by_role("button", name="Regenerate").click()
    expect(_answer(chat)).not_to_have_attribute("data-message-id", edited)
    chat.wait_final(_answer(chat))
    _expect_version(_answer(chat), 2, 2)
    assert streams == [], "answers were followed over SSE, not the page's WebSocket"
    chat.assert_clean()


def test_escape_in_the_editor_stops_a_streaming_answer_first(chat: Session) -> None:
    """While an answer streams, Escape is Stop everywhere; the editor stays to be sent."""
    page = chat.page
    answer = chat.send("Going wrong, let me rephrase.")
    chat.wait_text(answer, 20)
    _question(chat).get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit message")
    editor.fill("Rephrased.")
    page.keyboard.press("Escape")
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Rephrased.")

    page.keyboard.press("Enter")  # sends the edit, as Enter sends in the composer
    _expect_version(_question(chat), 2, 2)
    chat.wait_final(_answer(chat))
    expect(_question(chat)).to_contain_text("Rephrased.")
    expect(_answer(chat)).to_have_attribute("data-markdown", demo_answer("Rephrased."))
    chat.assert_clean()
