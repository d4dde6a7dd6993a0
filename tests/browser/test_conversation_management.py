"""Managing conversations on the page: the generated title, Export, Rename, Search, Delete.

The story: ask a long question and watch the sidebar trade the question for the title the
(demo) model gave it; export it; rename it; start a second conversation; search for each
by title and by text; then delete one, through the confirmation dialog.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, expect

from tests.browser.conftest import Session, serious_violations

pytestmark = pytest.mark.browser

QUESTION = "Hello, could you explain how tides work on the coasts of Brittany in winter?"
# What the demo model calls a conversation that opens with QUESTION.
GENERATED = "Explain how tides work"


def _sidebar(chat: Session) -> Locator:
    return chat.page.get_by_role("navigation", name="Conversations")


def _links(chat: Session) -> Locator:
    return _sidebar(chat).get_by_role("link")


def test_title_export_rename_search_and_delete(chat: Session) -> None:
    page = chat.page
    heading = page.get_by_role("heading", level=1)
    expect(page.get_by_role("button", name="Rename")).to_be_hidden()  # nothing to rename yet

    # The first answer completes; the generated title replaces the question everywhere.
    chat.wait_final(chat.send(QUESTION))
    current = _sidebar(chat).get_by_role("link", name=GENERATED, exact=True)
    expect(current).to_have_attribute("aria-current", "page")
    expect(heading).to_have_text(GENERATED)
    expect(page).to_have_title(f"{GENERATED} · Chat")
    conversation_url = page.url
    conversation_id = re.search(r"/c/([0-9a-f-]{36})/$", conversation_url)
    assert conversation_id, conversation_url

    # Export: a Markdown file named after the title, and the whole conversation as JSON.
    page.get_by_text("Export", exact=True).click()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export as Markdown").click()
    download = download_info.value
    assert download.suggested_filename == "explain-how-tides-work.md"
    markdown = Path(download.path()).read_text()
    assert markdown.startswith(f"# {GENERATED}\n")
    assert f"## User\n\n{QUESTION}" in markdown
    json_link = page.get_by_role("link", name="Export as JSON")
    expect(json_link).to_be_hidden()  # the menu closed with the download
    page.get_by_text("Export", exact=True).click()
    response = page.request.get(f"{chat.base_url}{json_link.get_attribute('href')}")
    assert response.ok
    assert "attachment" in response.headers["content-disposition"]
    exported = json.loads(response.body())
    assert exported["title"] == GENERATED
    assert [message["role"] for message in exported["messages"]] == ["user", "assistant"]

    # Rename: Escape cancels, Enter saves.
    rename = page.get_by_role("button", name="Rename")
    rename.click()
    title_box = page.get_by_role("textbox", name="Title")
    expect(title_box).to_be_focused()
    expect(title_box).to_have_value(GENERATED)
    title_box.fill("Not kept")
    page.keyboard.press("Escape")
    expect(title_box).to_be_hidden()
    expect(heading).to_have_text(GENERATED)
    expect(rename).to_be_focused()

    rename.click()
    title_box.fill("Brittany tides")
    page.keyboard.press("Enter")
    expect(heading).to_have_text("Brittany tides")
    expect(page).to_have_title("Brittany tides · Chat")
    expect(_sidebar(chat).get_by_role("link", name="Brittany tides")).to_have_attribute(
        "aria-current", "page"
    )
    expect(rename).to_be_focused()
    page.reload()
    expect(heading).to_have_text("Brittany tides")  # saved on the server

    # A second conversation, with a short question: that is its title already.
    page.get_by_role("button", name="New chat").click()
    chat.wait_final(chat.send("Moon phases in short"))
    expect(_links(chat)).to_have_count(2)
    expect(_links(chat).first).to_have_text("Moon phases in short")

    # Search, by title and by the text of the messages, as one types.
    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("BRITTANY")
    expect(_links(chat)).to_have_count(1)
    expect(_links(chat)).to_have_text("Brittany tides")
    search.fill("winter")  # only in the first conversation's question
    expect(_links(chat)).to_have_text("Brittany tides")
    search.fill("moon")  # a title, and (maybe) a word of the demo's answers: newest first
    expect(_links(chat).first).to_have_text("Moon phases in short")
    search.fill("submarine")
    expect(_sidebar(chat).get_by_text("No conversations match")).to_be_visible()
    expect(_links(chat)).to_have_count(0)
    search.fill("")
    expect(_links(chat)).to_have_count(2)

    # Delete asks first; Cancel and Escape keep the conversation.
    delete = page.get_by_role("button", name="Delete")
    dialog = page.get_by_role("dialog", name="Delete this conversation?")
    delete.click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Moon phases in short")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(delete).to_be_focused()
    delete.click()
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(_links(chat)).to_have_count(2)

    deleted_url = page.url
    delete.click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{chat.base_url}/")
    expect(heading).to_have_text("New chat")
    expect(_links(chat)).to_have_count(1)
    expect(_links(chat)).to_have_text("Brittany tides")
    deleted_id = deleted_url.rstrip("/").rsplit("/", 1)[-1]
    gone = page.request.get(f"{chat.base_url}/api/conversations/{deleted_id}")
    assert gone.status == 404
    chat.assert_clean()


def test_the_header_controls_fit_a_small_screen(chat: Session) -> None:
    page = chat.page
    page.set_viewport_size({"width": 375, "height": 740})
    chat.wait_final(chat.send("Small screens too"))
    for name in ("Rename", "Delete"):
        button = page.get_by_role("button", name=name)
        expect(button).to_be_in_viewport()
    expect(page.get_by_text("Export", exact=True)).to_be_in_viewport()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width} px wide on a 375 px screen"
    chat.assert_clean()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_search_rename_and_the_delete_dialog_are_accessible(
    new_session: Callable[..., Session], signed_up_state: dict[str, Any], scheme: str
) -> None:
    # The CSP is bypassed only so that axe-core can be injected.
    chat = new_session(storage_state=signed_up_state, bypass_csp=True, color_scheme=scheme)
    page = chat.page
    page.goto("/")
    chat.wait_final(chat.send("Accessible controls"))
    page.get_by_role("searchbox", name="Search conversations").fill("nothing like this")
    expect(page.get_by_text("No conversations match")).to_be_visible()
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("textbox", name="Title")).to_be_focused()
    assert serious_violations(page) == []

    page.keyboard.press("Escape")
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("dialog", name="Delete this conversation?")).to_be_visible()
    assert serious_violations(page) == []
