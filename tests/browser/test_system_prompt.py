"""The system prompt of a conversation, set on the page before and after the first send."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Session

pytestmark = pytest.mark.browser


def _conversation(chat: Session) -> dict[str, Any]:
    conversation_id = chat.page.locator(".app").get_attribute("data-conversation-id")
    response = chat.page.request.get(f"{chat.base_url}/api/conversations/{conversation_id}")
    assert response.ok
    data: dict[str, Any] = response.json()
    return data


def test_a_new_chat_keeps_the_system_prompt_set_before_its_first_message(chat: Session) -> None:
    page = chat.page
    page.get_by_text("System prompt", exact=True).click()
    editor = page.get_by_role("textbox", name="Instructions the model gets")
    expect(editor).to_have_attribute("placeholder", "You are a helpful assistant.")
    editor.fill("Answer like a pirate.")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()

    chat.wait_final(chat.send("Hello"))
    assert _conversation(chat)["system_prompt"] == "Answer like a pirate."

    # Changed later, it is saved on the conversation at once.
    editor.fill("Answer briefly.")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    assert _conversation(chat)["system_prompt"] == "Answer briefly."
    page.reload()
    page.get_by_text("System prompt", exact=True).click()
    expect(page.get_by_role("textbox", name="Instructions the model gets")).to_have_value(
        "Answer briefly."
    )
    chat.assert_clean()


def test_the_header_fits_a_small_screen(
    new_session: Callable[..., Session], signed_up_state: dict[str, Any]
) -> None:
    session = new_session(storage_state=signed_up_state, viewport={"width": 375, "height": 700})
    session.page.goto("/")
    session.page.get_by_text("System prompt", exact=True).click()
    expect(session.page.get_by_role("button", name="Save")).to_be_in_viewport()
    width = session.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
