"""In the browser: answers formatted while they stream, hostile output inert, screen readers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Dialog, Page, Request, expect

from tests.browser.conftest import Session, serious_violations, start_server
from tests.fakes.base import Script
from tests.fakes.openai_server import OpenAIServer
from tests.xss_corpus import PAYLOADS, SPLIT_PAYLOADS

pytestmark = pytest.mark.browser

# Resolves once the answer shows a formatted code block and a formatted list; says whether
# the answer was still being written then.
_FORMATTED_WHILE_STREAMING = """(article) => new Promise((resolve, reject) => {
  const check = () => {
    const blocks = article.querySelector(".stream-blocks");
    if (blocks?.querySelector("pre code") && blocks.querySelector("ul li")) {
      return resolve(article.getAttribute("aria-busy"));
    }
    if (article.getAttribute("aria-busy") === "false") return resolve("ended unformatted");
    requestAnimationFrame(check);
  };
  setTimeout(() => reject(new Error("no formatting came")), 15000);
  check();
})"""

FOOTNOTE = re.compile(r"^demo:demo · \d+\.\d\d s to first token · \d+\.\d tokens/s$")


def test_a_code_block_and_a_list_are_formatted_before_the_answer_ends(chat: Session) -> None:
    answer = chat.send("Show me some formatting.")

    assert answer.evaluate(_FORMATTED_WHILE_STREAMING) == "true"
    chat.wait_final(answer)
    body = answer.locator(".message__body")
    expect(body.locator("pre.highlight")).to_have_count(1)
    expect(body.locator("ul li").first).to_be_visible()
    expect(answer.get_by_role("button", name="Code to clipboard")).to_be_enabled()
    expect(answer.get_by_role("button", name="Copy", exact=True)).to_be_enabled()
    footnote = answer.locator("[data-role=footnote]")
    expect(footnote).to_have_text(FOOTNOTE)

    # After a reload the server renders the same footnote.
    live_footnote = footnote.inner_text()
    chat.page.reload()
    again = chat.answers().last.locator("[data-role=footnote]")
    expect(again).to_have_text(live_footnote)
    chat.assert_clean()


def test_a_reload_mid_answer_shows_finished_blocks_formatted_and_continues(
    chat: Session,
) -> None:
    answer = chat.send("Reload me while you write.")
    assert answer.evaluate(_FORMATTED_WHILE_STREAMING) == "true"
    chat.page.reload()

    answer = chat.answers().last
    # The server renders the finished blocks formatted; the rest streams on.
    expect(answer.locator(".stream-blocks ul")).to_have_count(1, timeout=2000)
    chat.wait_final(answer)
    expect(answer.locator(".message__body pre.highlight")).to_have_count(1)
    stored = chat.api_message(answer)
    assert answer.get_attribute("data-markdown") == stored["content"]
    chat.assert_clean()


def test_screen_readers_hear_sentences_and_the_end_not_tokens(chat: Session) -> None:
    answer = chat.send("Tell me something.")
    chat.wait_final(answer)

    lines = chat.page.locator("#announcer p").all_inner_texts()
    assert lines[-1] == "Answer finished."
    spoken = lines[:-1]
    assert len(spoken) >= 5
    completion_tokens = chat.api_message(answer)["usage"]["completion_tokens"]
    assert len(spoken) < completion_tokens / 4, "updates are sentence-sized, not token-sized"
    assert all(not re.search(r"[#*`|]", line) for line in spoken), spoken
    assert any("Code block" in line for line in spoken)
    expect(chat.page.locator("#announcer")).to_have_attribute("aria-live", "polite")


def test_keyboard_enter_sends_shift_enter_breaks_the_line_and_stop_returns_focus(
    chat: Session,
) -> None:
    page = chat.page
    box = page.get_by_role("textbox", name="Message")
    box.click()
    page.keyboard.type("First line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("First line\nsecond line")
    expect(chat.answers()).to_have_count(0)

    page.keyboard.press("Enter")
    expect(chat.answers()).to_have_count(1)
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    question = chat.transcript.get_by_role("article", name="You").last
    expect(question).to_have_attribute("data-markdown", "First line\nsecond line")

    # Stop by button: when it disappears, focus is back in the composer.
    answer = chat.answers().last
    chat.wait_text(answer, 20)
    page.get_by_role("button", name="Stop").focus()
    page.keyboard.press("Enter")
    chat.wait_final(answer)
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(box).to_be_focused()
    chat.assert_clean()


# --- Hostile model output -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[OpenAIServer]:
    with OpenAIServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory, _template_db: Path, fake_openai: OpenAIServer
) -> Iterator[str]:
    """A server whose only model is a fake OpenAI upstream that says what a test scripts."""
    yield from start_server(
        tmp_path_factory,
        _template_db,
        CHAT_MODELS="openai:hostile",
        OPENAI_BASE_URL=f"{fake_openai.url}/v1",
        OPENAI_API_KEY="sk-test-hostile",
    )


class Alarms:
    """Everything on a page that would mean a payload ran."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        page.on("dialog", self._dialog)
        page.on("request", self._request)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _request(self, request: Request) -> None:
        if "xss-fired" in request.url or request.url.startswith(("javascript:", "data:")):
            self.requests.append(request.url)


def hostile_answer() -> list[str]:
    deltas: list[str] = ["Here is everything at once.\n\n"]
    for payload in PAYLOADS:
        deltas += [payload, "\n\n"]
    for pieces in SPLIT_PAYLOADS:
        deltas += [*pieces, "\n\n"]
    return [*deltas, "The end."]


def test_hostile_output_runs_nothing_while_streaming_after_final_or_after_reload(
    new_session: Callable[..., Session], hostile_server: str, fake_openai: OpenAIServer
) -> None:
    fake_openai.script = Script(deltas=hostile_answer(), interval=0.01)
    session = new_session(hostile_server)
    alarms = Alarms(session.page)
    session.sign_up()

    # The question itself is hostile too: the page shows it as text.
    question = "<img src=x onerror=alert('q')> [x](javascript:alert('q'))"
    answer = session.send(question)
    session.wait_final(answer)
    session.page.wait_for_timeout(300)  # anything deferred would have run by now
    transcript = session.transcript
    expect(transcript.get_by_role("article", name="You").last).to_contain_text(question)
    body = answer.locator(".message__body")
    expect(body).to_contain_text("<script>alert(1)</script>")
    expect(body).to_contain_text("The end.")

    session.page.reload()
    expect(session.answers().last).to_have_attribute("aria-busy", "false")
    session.page.wait_for_timeout(300)

    assert alarms.dialogs == []
    assert alarms.requests == []
    dangerous = session.page.evaluate(
        """() => [...document.querySelectorAll('[role=log] *')].filter((node) =>
            ["SCRIPT", "IMG", "SVG", "IFRAME", "OBJECT", "EMBED", "FORM", "STYLE", "LINK"]
              .includes(node.tagName.toUpperCase())
            || [...node.attributes].some((a) =>
                 /^(on|hx-|data-hx-)/.test(a.name) && a.name !== "hx-disable")
            || /^\\s*(javascript|data):/i.test(node.getAttribute("href") || "")
          ).map((node) => node.outerHTML.slice(0, 120))"""
    )
    assert dangerous == []
    session.assert_clean()


# --- Accessibility ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_sign_in_page_has_no_serious_accessibility_violation(
    new_session: Callable[..., Session], scheme: str
) -> None:
    session = new_session(bypass_csp=True, color_scheme=scheme)
    session.page.goto("/accounts/login/")
    expect(session.page.get_by_role("button", name="Sign in")).to_be_visible()
    assert serious_violations(session.page) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_chat_page_has_no_serious_accessibility_violation(
    new_session: Callable[..., Session], signed_up_state: dict[str, Any], scheme: str
) -> None:
    session = new_session(storage_state=signed_up_state, bypass_csp=True, color_scheme=scheme)
    session.page.goto("/")
    answer = session.send("Check my accessibility.")
    session.wait_final(answer)
    assert serious_violations(session.page) == []


def test_sidebar_on_a_phone_has_no_serious_accessibility_violation(
    new_session: Callable[..., Session], signed_up_state: dict[str, Any]
) -> None:
    session = new_session(
        storage_state=signed_up_state, bypass_csp=True, viewport={"width": 390, "height": 800}
    )
    session.page.goto("/")
    menu = session.page.get_by_role("button", name="Menu")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(session.page.get_by_role("navigation", name="Conversations")).to_be_visible()
    assert serious_violations(session.page) == []
