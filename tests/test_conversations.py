"""Managing conversations: generated titles, rename, delete, search and export.

Titles are asked of the conversation's own model once its first answer has completed: the
demo model, the scripted provider and the real OpenAI SDK against the fake server each
answer the title request here, and the stories check what the conversation is called
afterwards, never how the request was made inside.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from chat import services, titles
from chat.models import Conversation, Message
from chat.providers.demo import demo_title
from tests.fakes import OpenAIServer, Script
from tests.helpers import ChatApi, Pause, ScriptedProvider, eventually

pytestmark = pytest.mark.django_db(transaction=True)

LONG_QUESTION = "Hello, could you explain how tides work on the coasts of Brittany in winter?"


@pytest.fixture
async def titled(settings: Any) -> AsyncIterator[None]:
    """Titles on (the suite turns them off elsewhere); none left running at the end."""
    settings.CHAT_TITLES = True
    yield
    await titles.titles_wait(5)


@pytest.fixture
def openai_server(settings: Any) -> Iterator[OpenAIServer]:
    """The OpenAI SDK against the fake server, offered as `openai:gpt-test`."""
    with OpenAIServer() as server:
        settings.CHAT_MODELS = ["demo:demo", "openai:gpt-test"]
        settings.OPENAI_API_KEY = "sk-test-titles"
        settings.OPENAI_BASE_URL = f"{server.url}/v1"
        yield server


async def _answered(api: ChatApi, message_id: str) -> dict[str, Any]:
    """Wait for the answer, then for the title it may have started."""
    message = await api.finished(message_id)
    await titles.titles_wait(5)
    return message


async def _title(api: ChatApi, conversation_id: str) -> str:
    response = await api.get(f"/api/conversations/{conversation_id}")
    assert response.status_code == 200
    title: str = response.json()["title"]
    return title


async def _sidebar(api: ChatApi, conversation_id: str, query: str = "") -> str:
    response = await api.get(f"/chat/sidebar?{urlencode({'current': conversation_id, 'q': query})}")
    assert response.status_code == 200
    return response.content.decode()


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- Titles: placeholders ------------------------------------------------------------------


def test_a_first_message_is_the_title_cut_at_a_word_boundary(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    message = "Please explain how the sidebar search finds my old conversations quickly and well"
    services.message_send(user=user, conversation=conversation, content=message)
    conversation.refresh_from_db()
    assert conversation.title == "Please explain how the sidebar search finds my old…"
    assert len(conversation.title) <= services.TITLE_CHARS
    # Whole words only: the text before the ellipsis is followed by a space in the message.
    kept = conversation.title.removesuffix("…")
    assert message.startswith(kept + " ")


def test_the_demo_titles_a_short_message_as_it_is_and_shortens_a_long_one() -> None:
    assert demo_title("Draw a table on a small screen.") == "Draw a table on a small screen."
    assert demo_title(LONG_QUESTION) == "Explain how tides work"
    assert demo_title("please   summarise the following long report about the harbour") == (
        "Summarise the following long report"
    )


@pytest.mark.parametrize(
    ("reply", "title"),
    [
        ("Tides of Brittany", "Tides of Brittany"),
        ('"Tides of Brittany"', "Tides of Brittany"),
        ("Title: **Tides of Brittany**", "Tides of Brittany"),
        ("# Tides of Brittany\n\nThis conversation is about tides.", "Tides of Brittany"),
        ("\n  \u201cMar\u00e9es  de Bretagne\u201d  \n", "Mar\u00e9es de Bretagne"),
        ("  \n ", ""),
    ],
)
def test_a_models_reply_is_cleaned_into_a_title(reply: str, title: str) -> None:
    assert titles.title_clean(reply) == title


# --- Titles: generated after the first exchange ---------------------------------------------


async def test_the_demo_model_titles_a_conversation_after_its_first_answer(
    api: ChatApi, titled: None
) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"], LONG_QUESTION)
    # Until the answer is complete, the first message is the title.
    assert sent["assistant_message"]["status"] == "streaming"
    assert await _title(api, conversation["id"]) == services._title_from(LONG_QUESTION)

    answer = await _answered(api, sent["assistant_message"]["id"])

    assert answer["status"] == "complete"
    assert await _title(api, conversation["id"]) == "Explain how tides work"
    sidebar = await _sidebar(api, conversation["id"])
    assert 'aria-current="page">Explain how tides work</a>' in sidebar
    assert "load delay" not in sidebar  # nothing more to wait for


async def test_only_the_first_exchange_is_titled(api: ChatApi, titled: None) -> None:
    conversation = await api.create_conversation()
    first = await api.send(conversation["id"], LONG_QUESTION)
    await _answered(api, first["assistant_message"]["id"])
    second = await api.send(conversation["id"], "Now tell me about the moon and the sun please")
    await _answered(api, second["assistant_message"]["id"])

    assert await _title(api, conversation["id"]) == "Explain how tides work"


async def test_the_scripted_model_is_asked_for_a_title_with_the_exchange(
    api: ChatApi, scripted: ScriptedProvider, titled: None
) -> None:
    # The provider plays the same script for the answer and for the title.
    scripted.script = ["Lisbon ", "trip ", "plans"]
    conversation = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(conversation["id"], "Where should I go in Portugal for a week?")
    await _answered(api, sent["assistant_message"]["id"])

    assert await _title(api, conversation["id"]) == "Lisbon trip plans"
    assert len(scripted.runs) == 2
    request = scripted.runs[1].request
    assert request.system_prompt == titles.SYSTEM_PROMPT
    assert [(turn.role, turn.content) for turn in request.turns] == [
        ("user", "Where should I go in Portugal for a week?"),
        ("assistant", "Lisbon trip plans"),
        ("user", titles.INSTRUCTION),
    ]
    assert request.max_output_tokens == titles.MAX_OUTPUT_TOKENS


async def test_the_sidebar_keeps_refreshing_while_a_title_is_on_its_way(
    api: ChatApi, scripted: ScriptedProvider, titled: None
) -> None:
    scripted.script = ["Slow ", "title", Pause(0.5)]
    conversation = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(conversation["id"], "What takes a while to name?")
    await api.finished(sent["assistant_message"]["id"])
    # The title request starts once the answer has ended.
    await eventually(lambda: len(scripted.runs) == 2)

    waiting = await _sidebar(api, conversation["id"])
    assert "chat:final from:document, load delay:1s" in waiting
    assert 'aria-current="page">What takes a while to name?</a>' in waiting

    await titles.titles_wait(5)
    done = await _sidebar(api, conversation["id"])
    assert "load delay" not in done
    assert 'aria-current="page">Slow title</a>' in done


async def test_openai_titles_the_conversation_through_the_sdk(
    api: ChatApi, openai_server: OpenAIServer, titled: None
) -> None:
    openai_server.queue(
        Script(deltas=["Tides ", "follow ", "the ", "moon."]),
        Script(deltas=['"Tides ', "of ", 'Brittany"']),
    )
    conversation = await api.create_conversation(model="openai:gpt-test")
    sent = await api.send(conversation["id"], LONG_QUESTION)
    answer = await _answered(api, sent["assistant_message"]["id"])

    assert answer["content"] == "Tides follow the moon."
    assert await _title(api, conversation["id"]) == "Tides of Brittany"
    title_request = openai_server.requests[1].json
    assert title_request["messages"] == [
        {"role": "system", "content": titles.SYSTEM_PROMPT},
        {"role": "user", "content": LONG_QUESTION},
        {"role": "assistant", "content": "Tides follow the moon."},
        {"role": "user", "content": titles.INSTRUCTION},
    ]
    assert title_request["max_tokens"] == titles.MAX_OUTPUT_TOKENS


@pytest.mark.parametrize(
    "title_script",
    [
        Script(status=500),
        Script(error_after=1),
        Script(deltas=["  ", "\n"]),
        Script(headers_delay=3),
    ],
    ids=["server-error", "error-mid-stream", "empty-reply", "too-slow"],
)
async def test_a_failed_title_leaves_the_first_message_and_the_answer_alone(
    api: ChatApi,
    openai_server: OpenAIServer,
    titled: None,
    monkeypatch: pytest.MonkeyPatch,
    title_script: Script,
) -> None:
    monkeypatch.setattr(titles, "TIMEOUT_SECONDS", 0.3)
    openai_server.queue(Script(deltas=["The ", "answer."]), title_script)
    conversation = await api.create_conversation(model="openai:gpt-test")
    sent = await api.send(conversation["id"], LONG_QUESTION)
    answer = await _answered(api, sent["assistant_message"]["id"])

    assert (answer["status"], answer["content"]) == ("complete", "The answer.")
    assert len(openai_server.requests) == 2  # the title was asked for
    title = await _title(api, conversation["id"])
    assert title == "Hello, could you explain how tides work on the coasts of…"
    assert LONG_QUESTION.startswith(title.removesuffix("…") + " ")
    # The page stops waiting for a title at once.
    assert "load delay" not in await _sidebar(api, conversation["id"])


async def test_a_rename_during_the_title_request_wins(
    api: ChatApi, openai_server: OpenAIServer, titled: None
) -> None:
    openai_server.queue(
        Script(deltas=["An answer."]), Script(deltas=["Generated"], headers_delay=1)
    )
    conversation = await api.create_conversation(model="openai:gpt-test")
    sent = await api.send(conversation["id"], LONG_QUESTION)
    await api.finished(sent["assistant_message"]["id"])
    await openai_server.await_requests(2)  # the model is working on the title

    renamed = await api.patch(f"/api/conversations/{conversation['id']}", {"title": "Mine"})
    assert renamed.status_code == 200
    await titles.titles_wait(5)

    assert await _title(api, conversation["id"]) == "Mine"


async def test_a_title_the_user_chose_is_never_asked_for(
    api: ChatApi, scripted: ScriptedProvider, titled: None
) -> None:
    scripted.script = ["Generated ", "title", Pause(0.3)]  # time to rename while it streams
    created = await api.create_conversation(title="Chosen at the start", model=scripted.model_id)
    sent = await api.send(created["id"], "A first question")
    await _answered(api, sent["assistant_message"]["id"])

    renamed = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(renamed["id"], "Another first question")
    await api.patch(f"/api/conversations/{renamed['id']}", {"title": "Renamed while streaming"})
    await _answered(api, sent["assistant_message"]["id"])

    assert await _title(api, created["id"]) == "Chosen at the start"
    assert await _title(api, renamed["id"]) == "Renamed while streaming"
    assert len(scripted.runs) == 2  # two answers, no title request


async def test_a_stopped_first_answer_asks_for_no_title(
    api: ChatApi, scripted: ScriptedProvider, titled: None
) -> None:
    scripted.script = ["Partial ", Pause(10)]
    conversation = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(conversation["id"], "Stop this one")
    await api.read(sent["assistant_message"]["id"], until=lambda stream: bool(stream.tokens))
    assert (await api.stop(sent["assistant_message"]["id"])).json()["status"] == "stopped"
    await titles.titles_wait(5)

    assert await _title(api, conversation["id"]) == "Stop this one"
    assert len(scripted.runs) == 1


async def test_with_titles_off_the_first_message_stays(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"], LONG_QUESTION)
    await _answered(api, sent["assistant_message"]["id"])
    assert await _title(api, conversation["id"]) == services._title_from(LONG_QUESTION)


# --- Rename and delete ----------------------------------------------------------------------


def test_a_change_writes_only_its_own_fields(user: Any) -> None:
    """A model change read before a title arrived does not put the old title back."""
    conversation = services.conversation_create(user=user, title="Before")
    read_earlier = Conversation.objects.get(pk=conversation.pk)
    Conversation.objects.filter(pk=conversation.pk).update(title="Arrived meanwhile")

    services.conversation_update(conversation=read_earlier, changes={"system_prompt": "Rhyme."})

    conversation.refresh_from_db()
    assert (conversation.title, conversation.system_prompt) == ("Arrived meanwhile", "Rhyme.")


async def test_delete_removes_the_conversation_and_its_messages(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"], "Soon gone")
    await api.finished(sent["assistant_message"]["id"])

    response = await api.delete(f"/api/conversations/{conversation['id']}")

    assert response.status_code == 204
    assert (await api.get(f"/api/conversations/{conversation['id']}")).status_code == 404
    assert not await Message.objects.filter(conversation_id=conversation["id"]).aexists()


async def test_another_users_conversation_cannot_be_renamed_deleted_or_exported(
    api: ChatApi, other_api: ChatApi
) -> None:
    conversation = await api.create_conversation(title="Private")
    path = f"/api/conversations/{conversation['id']}"

    assert (await other_api.delete(path)).status_code == 404
    assert (await other_api.patch(path, {"title": "Taken"})).status_code == 404
    assert (await other_api.get(f"{path}/export?format=md")).status_code == 404
    for extension in ("md", "json"):
        page = await other_api.get(f"/c/{conversation['id']}/export.{extension}")
        assert page.status_code == 404
    assert await _title(api, conversation["id"]) == "Private"


# --- Search ---------------------------------------------------------------------------------


@pytest.fixture
def library(user: Any, other_user: Any) -> dict[str, Conversation]:
    """Alice's conversations (and one of Bob's), oldest first."""

    def make(owner: Any, title: str, *texts: str, minutes_ago: int) -> Conversation:
        conversation = Conversation.objects.create(user=owner, title=title, model="demo:demo")
        parent = None
        for index, text in enumerate(texts):
            role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
            parent = Message.objects.create(
                conversation=conversation, parent=parent, role=role, content=text
            )
        # `updated_at` is automatic on save: set the age with an update.
        when = timezone.now() - timedelta(minutes=minutes_ago)
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=when)
        return conversation

    return {
        "lisbon": make(user, "A week in Lisbon", "Where to eat?", "Try pastéis.", minutes_ago=30),
        "tarts": make(user, "Baking", "How do I make Pastel de Nata?", minutes_ago=20),
        "tides": make(user, "Tides", "Why are there tides?", "The MOON pulls.", minutes_ago=10),
        "bob": make(other_user, "Lisbon for Bob", "pastel de nata", minutes_ago=5),
    }


def _titles_found(response: Any) -> list[str]:
    assert response.status_code == 200
    return [conversation["title"] for conversation in response.json()["conversations"]]


def test_search_finds_own_conversations_by_title_and_text_newest_first(
    user: Any, library: dict[str, Conversation]
) -> None:
    client = _client(user)

    def found(query: str) -> list[str]:
        return _titles_found(client.get("/api/conversations", {"q": query}))

    assert found("lisbon") == ["A week in Lisbon"]  # the title; Bob's is not Alice's
    assert found("LISBON") == found("Lisbon") == ["A week in Lisbon"]
    assert found("pastel") == ["Baking"]  # a question's text
    assert found("moon") == ["Tides"]  # an answer's text, any case
    assert found("past") == ["Baking", "A week in Lisbon"]  # newest first
    assert found("nata baking") == ["Baking"]  # every word, in the title or a message
    assert found("nata lisbon") == []
    assert found("") == ["Tides", "Baking", "A week in Lisbon"]
    assert found("100%_") == []  # LIKE wildcards are text


def test_the_sidebar_searches_as_the_page_types(
    user: Any, library: dict[str, Conversation]
) -> None:
    client = _client(user)

    matching = client.get("/chat/sidebar", {"q": "moon"}, headers={"HX-Request": "true"})
    html = matching.content.decode()
    assert matching.status_code == 200
    assert html.lstrip().startswith('<nav id="sidebar"')  # the fragment alone
    assert f'href="/c/{library["tides"].id}/"' in html
    assert "Baking" not in html and "Lisbon" not in html

    nothing = client.get("/chat/sidebar", {"q": "submarine"}).content.decode()
    assert "No conversations match." in nothing
    assert "<li>" not in nothing

    # The whole page filters its list too (the search form works without scripts).
    page = client.get("/", {"q": "pastel"}).content.decode()
    assert 'value="pastel"' in page
    assert "Baking" in page and "Tides" not in page


def test_the_page_offers_search_rename_delete_and_export(
    user: Any, library: dict[str, Conversation]
) -> None:
    conversation = library["tides"]
    html = _client(user).get(f"/c/{conversation.id}/").content.decode()

    assert '<label for="conversation-search" class="visually-hidden">Search conversations' in html
    assert 'hx-trigger="input changed delay:250ms, search"' in html
    assert ">Rename</button>" in html and ">Delete</button>" in html
    assert '<dialog id="delete-dialog"' in html
    assert '<label for="title-input" class="visually-hidden">Title</label>' in html
    assert f'href="/c/{conversation.id}/export.md">Export as Markdown</a>' in html
    assert f'href="/c/{conversation.id}/export.json">Export as JSON</a>' in html
    assert "onclick" not in html and "javascript:" not in html

    # A new chat has nothing to rename yet.
    home = _client(user).get("/").content.decode()
    assert 'id="conversation-actions" role="group" aria-label="This conversation" hidden' in home


# --- Export ---------------------------------------------------------------------------------


@pytest.fixture
def branched(user: Any) -> Conversation:
    """A question edited once: two versions, each answered; the second is current."""
    conversation = Conversation.objects.create(
        user=user, title="Tides of Brittany", model="demo:demo", system_prompt="Be brief."
    )
    first = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content="Why tides?"
    )
    Message.objects.create(
        conversation=conversation,
        parent=first,
        role=Message.Role.ASSISTANT,
        content="The moon.",
        model="demo:demo",
    )
    edited = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content="Why *big* tides?"
    )
    answer = Message.objects.create(
        conversation=conversation,
        parent=edited,
        role=Message.Role.ASSISTANT,
        content="The moon **and** the sun.",
        model="demo:demo",
        prompt_tokens=12,
        completion_tokens=6,
    )
    conversation.current_leaf = answer
    conversation.save()
    return conversation


def test_export_as_markdown_is_the_current_branch_as_a_file(
    user: Any, branched: Conversation
) -> None:
    response = _client(user).get(f"/c/{branched.id}/export.md")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="tides-of-brittany.md"'
    assert response["Cache-Control"] == "private, no-store"
    text = response.content.decode()
    assert text.startswith("# Tides of Brittany\n")
    assert "demo:demo" in text
    assert "## User\n\nWhy *big* tides?" in text
    assert "The moon **and** the sun." in text
    assert text.index("## User") < text.index("## Assistant")
    assert "Why tides?" not in text and "The moon." not in text  # another branch


def test_export_as_json_has_every_branch_and_the_current_one(
    user: Any, branched: Conversation
) -> None:
    response = _client(user).get(f"/c/{branched.id}/export.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="tides-of-brittany.json"'
    data = json.loads(response.content)
    assert (data["id"], data["title"], data["model"]) == (
        str(branched.id),
        "Tides of Brittany",
        "demo:demo",
    )
    assert data["system_prompt"] == "Be brief."
    messages = {message["content"]: message for message in data["messages"]}
    assert set(messages) == {
        "Why tides?",
        "The moon.",
        "Why *big* tides?",
        "The moon **and** the sun.",
    }
    answer = messages["The moon **and** the sun."]
    assert answer["parent_id"] == messages["Why *big* tides?"]["id"]
    assert answer["usage"] == {"prompt_tokens": 12, "completion_tokens": 6}
    assert (answer["role"], answer["status"], answer["model"]) == (
        "assistant",
        "complete",
        "demo:demo",
    )
    assert answer["created_at"]
    assert data["current_branch"] == [messages["Why *big* tides?"]["id"], answer["id"]]


async def test_the_api_exports_in_either_format(api: ChatApi, user: Any) -> None:
    conversation = await api.create_conversation(title="Überblick über Kyoto")
    path = f"/api/conversations/{conversation['id']}/export"

    markdown = await api.get(f"{path}?format=md")
    assert markdown.status_code == 200
    assert markdown["Content-Type"] == "text/markdown; charset=utf-8"
    assert markdown.content.decode().startswith("# Überblick über Kyoto\n")
    # A title beyond ASCII keeps its letters, in the RFC 5987 form browsers read.
    assert markdown["Content-Disposition"] == (
        "attachment; filename*=utf-8''%C3%BCberblick-%C3%BCber-kyoto.md"
    )

    default = await api.get(path)
    assert default["Content-Type"] == "application/json"
    assert json.loads(default.content)["title"] == "Überblick über Kyoto"

    refused = await api.get(f"{path}?format=pdf")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid"
    page = await api.get(f"/c/{conversation['id']}/export.pdf")
    assert page.status_code == 404


async def test_an_untitled_conversation_exports_as_conversation(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    response = await api.get(f"/c/{conversation['id']}/export.md")
    assert response["Content-Disposition"] == 'attachment; filename="conversation.md"'


async def test_the_title_wait_is_bounded(api: ChatApi, user: Any, settings: Any) -> None:
    """A title that never came (its process died) is not waited for forever."""
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"], "Named by nobody")
    await api.finished(sent["assistant_message"]["id"])  # titles are off: nothing ran
    settings.CHAT_TITLES = True
    found = await sync_to_async(services.conversation_for)(
        user=user, conversation_id=conversation["id"]
    )
    assert await sync_to_async(services.conversation_title_pending)(conversation=found)

    long_ago = timezone.now() - timedelta(seconds=services.TITLE_WAIT_SECONDS + 1)
    await Message.objects.filter(id=sent["assistant_message"]["id"]).aupdate(updated_at=long_ago)
    await Conversation.objects.filter(id=conversation["id"]).aupdate(
        updated_at=long_ago - timedelta(seconds=1)
    )
    found = await sync_to_async(services.conversation_for)(
        user=user, conversation_id=conversation["id"]
    )
    assert not await sync_to_async(services.conversation_title_pending)(conversation=found)
