"""The JSON API (CONTRACT §4): conversations, sending, access, errors, limits, CSRF."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat import generation, services
from chat.models import Conversation, Message
from tests.helpers import BLOCK, ChatApi, ScriptedProvider, async_client

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE_KEYS = {
    "id",
    "conversation_id",
    "parent_id",
    "role",
    "content",
    "status",
    "model",
    "finish_reason",
    "error",
    "usage",
    "ttft_ms",
    "duration_ms",
    "sibling_ids",
    "created_at",
}


def assert_json_error(response: Any, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code


# --- Conversations -------------------------------------------------------------------------


async def test_create_a_conversation_with_defaults(api: ChatApi) -> None:
    response = await api.post("/api/conversations", {})

    assert response.status_code == 201
    created = response.json()
    uuid.UUID(created["id"])
    assert created["title"] == ""
    assert created["model"] == "demo:demo"
    assert created["system_prompt"] == ""
    assert created["current_leaf_id"] is None


async def test_create_a_conversation_with_fields(api: ChatApi) -> None:
    created = await api.create_conversation(
        title="  Plans  ", model="demo:demo", system_prompt="Be brief."
    )

    assert created["title"] == "Plans"
    assert created["system_prompt"] == "Be brief."
    fetched = (await api.get(f"/api/conversations/{created['id']}")).json()
    assert fetched["title"] == "Plans"
    assert fetched["messages"] == []


async def test_an_empty_body_creates_a_conversation_too(api: ChatApi) -> None:
    response = await api.client.post("/api/conversations", "", content_type="application/json")
    assert response.status_code == 201


@pytest.mark.parametrize(
    "fields",
    [{"model": "nope:nope"}, {"model": 42}, {"title": ["a"]}, {"system_prompt": 1}],
)
async def test_create_refuses_bad_fields(api: ChatApi, fields: dict[str, Any]) -> None:
    assert_json_error(await api.post("/api/conversations", fields), 400)


async def test_list_is_newest_first_and_only_mine(api: ChatApi, other_api: ChatApi) -> None:
    older = await api.create_conversation(title="older")
    newer = await api.create_conversation(title="newer")
    await other_api.create_conversation(title="not mine")

    listing = (await api.get("/api/conversations")).json()["conversations"]
    assert [c["id"] for c in listing] == [newer["id"], older["id"]]

    # Sending into a conversation makes it the most recent.
    sent = await api.send(older["id"], "Bring me back up")
    await api.finished(sent["assistant_message"]["id"])
    listing = (await api.get("/api/conversations")).json()["conversations"]
    assert [c["id"] for c in listing] == [older["id"], newer["id"]]
    assert listing[0]["title"] == "older"


async def test_get_shows_the_current_branch_root_to_leaf(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    first = await api.send(conversation["id"], "First question")
    await api.finished(first["assistant_message"]["id"])
    second = await api.send(conversation["id"], "Second question")
    await api.finished(second["assistant_message"]["id"])

    fetched = (await api.get(f"/api/conversations/{conversation['id']}")).json()

    messages = fetched["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["id"] for m in messages] == [
        first["user_message"]["id"],
        first["assistant_message"]["id"],
        second["user_message"]["id"],
        second["assistant_message"]["id"],
    ]
    assert messages[0]["parent_id"] is None
    for parent, child in itertools.pairwise(messages):
        assert child["parent_id"] == parent["id"]
    for message in messages:
        assert set(message) == MESSAGE_KEYS
        assert message["sibling_ids"] == [message["id"]]
        assert message["conversation_id"] == conversation["id"]
    assert messages[1]["status"] == "complete"
    assert messages[1]["content"]
    assert messages[0]["content"] == "First question"
    assert fetched["current_leaf_id"] == second["assistant_message"]["id"]
    assert fetched["title"] == "First question"


async def test_get_lists_every_sibling_oldest_first(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"], "Question")
    await api.finished(sent["assistant_message"]["id"])

    def add_sibling() -> Message:
        original = Message.objects.get(id=sent["assistant_message"]["id"])
        return Message.objects.create(
            conversation=original.conversation,
            parent=original.parent,
            role="assistant",
            content="Another version",
            status="complete",
            model="demo:demo",
        )

    sibling = await sync_to_async(add_sibling)()
    fetched = (await api.get(f"/api/conversations/{conversation['id']}")).json()

    answer = fetched["messages"][1]
    assert answer["sibling_ids"] == [sent["assistant_message"]["id"], str(sibling.id)]
    single = await api.message(str(sibling.id))
    assert single["sibling_ids"] == answer["sibling_ids"]


async def test_patch_changes_title_and_model(api: ChatApi) -> None:
    conversation = await api.create_conversation(title="Before")
    path = f"/api/conversations/{conversation['id']}"

    response = await api.patch(path, {"title": "After", "system_prompt": "Rhyme."})
    assert response.status_code == 200
    assert response.json()["title"] == "After"
    assert response.json()["system_prompt"] == "Rhyme."
    assert response.json()["messages"] == []

    response = await api.patch(path, {"model": "demo:demo"})
    assert response.status_code == 200
    assert response.json()["model"] == "demo:demo"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "gpt-9:unknown"}, "unknown_model"),
        ({"colour": "blue"}, None),
        ({"title": None}, None),
        ("[1, 2]", "bad_json"),
        ("{not json", "bad_json"),
    ],
)
async def test_patch_refuses_bad_input(api: ChatApi, body: Any, code: str | None) -> None:
    conversation = await api.create_conversation(title="Kept")
    path = f"/api/conversations/{conversation['id']}"

    assert_json_error(await api.patch(path, body), 400, code)
    assert (await api.get(path)).json()["title"] == "Kept"


async def test_delete_then_gone(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"])
    await api.finished(sent["assistant_message"]["id"])
    path = f"/api/conversations/{conversation['id']}"

    response = await api.delete(path)
    assert response.status_code == 204
    assert response.content == b""

    assert_json_error(await api.get(path), 404, "not_found")
    assert_json_error(await api.delete(path), 404, "not_found")
    assert_json_error(await api.get(f"/api/messages/{sent['user_message']['id']}"), 404)
    assert not await Message.objects.filter(conversation_id=conversation["id"]).aexists()


async def test_delete_while_streaming_ends_cleanly(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Some text", BLOCK]
    conversation = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(conversation["id"])
    message_id = sent["assistant_message"]["id"]
    stream = await api.open_stream(message_id)
    try:
        await stream.read(until=lambda s: s.text == "Some text")
        response = await api.delete(f"/api/conversations/{conversation['id']}")
        assert response.status_code == 204
        assert_json_error(await api.stop(message_id), 404)
    finally:
        await stream.close()
    # The generation still ends by itself (its row is gone, so its writes touch nothing).
    generation.generation_cancel(uuid.UUID(message_id))
    await generation.generation_wait(uuid.UUID(message_id), 5)
    assert not generation.is_running(uuid.UUID(message_id))


# --- Sending -------------------------------------------------------------------------------


async def test_send_answers_201_with_both_messages_and_the_stream_url(api: ChatApi) -> None:
    conversation = await api.create_conversation()

    response = await api.post(
        f"/api/conversations/{conversation['id']}/messages", {"content": "Hi there"}
    )

    assert response.status_code == 201
    sent = response.json()
    assert set(sent) == {"user_message", "assistant_message", "stream_url"}
    question, answer = sent["user_message"], sent["assistant_message"]
    assert set(question) == MESSAGE_KEYS
    assert set(answer) == MESSAGE_KEYS
    assert question["role"] == "user"
    assert question["content"] == "Hi there"
    assert question["status"] == "complete"
    assert question["parent_id"] is None
    assert answer["role"] == "assistant"
    assert answer["status"] == "streaming"
    assert answer["parent_id"] == question["id"]
    assert answer["model"] == "demo:demo"
    assert answer["content"] == ""
    assert answer["usage"] == {"prompt_tokens": None, "completion_tokens": None}
    assert sent["stream_url"] == f"/api/messages/{answer['id']}/stream"

    finished = await api.finished(answer["id"])
    assert finished["status"] == "complete"
    assert finished["finish_reason"] == "stop"
    assert finished["usage"]["completion_tokens"] > 0
    assert finished["usage"]["prompt_tokens"] > 0
    assert finished["duration_ms"] is not None
    assert finished["ttft_ms"] is not None
    assert finished["error"] is None


async def test_send_follows_the_current_leaf_or_the_given_parent(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    first = await api.send(conversation["id"], "One")
    await api.finished(first["assistant_message"]["id"])
    second = await api.send(conversation["id"], "Two")
    await api.finished(second["assistant_message"]["id"])

    # A branch from the first answer: a sibling of the second question.
    branch = await api.send(
        conversation["id"], "Two, differently", parent_id=first["assistant_message"]["id"]
    )
    await api.finished(branch["assistant_message"]["id"])

    assert second["user_message"]["parent_id"] == first["assistant_message"]["id"]
    assert branch["user_message"]["parent_id"] == first["assistant_message"]["id"]
    fetched = (await api.get(f"/api/conversations/{conversation['id']}")).json()
    assert [m["content"] for m in fetched["messages"][::2]] == ["One", "Two, differently"]
    assert fetched["messages"][2]["sibling_ids"] == [
        second["user_message"]["id"],
        branch["user_message"]["id"],
    ]


async def test_send_with_a_model_uses_it(api: ChatApi, scripted: ScriptedProvider) -> None:
    scripted.script = ["From the test model."]
    conversation = await api.create_conversation()

    sent = await api.send(conversation["id"], "Hi", model=scripted.model_id)
    finished = await api.finished(sent["assistant_message"]["id"])

    assert finished["model"] == scripted.model_id
    assert finished["content"] == "From the test model."
    assert scripted.runs[0].request.turns[-1].content == "Hi"


async def test_the_provider_sees_the_branch_and_the_system_prompt(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    scripted.script = ["Answer."]
    conversation = await api.create_conversation(model=scripted.model_id)
    first = await api.send(conversation["id"], "One")
    await api.finished(first["assistant_message"]["id"])
    second = await api.send(conversation["id"], "Two")
    await api.finished(second["assistant_message"]["id"])
    await api.patch(f"/api/conversations/{conversation['id']}", {"system_prompt": "Be terse."})
    third = await api.send(conversation["id"], "Three")
    await api.finished(third["assistant_message"]["id"])

    first_request, _, third_request = (run.request for run in scripted.runs)
    assert first_request.system_prompt == settings.CHAT_SYSTEM_PROMPT
    assert [(t.role, t.content) for t in third_request.turns] == [
        ("user", "One"),
        ("assistant", "Answer."),
        ("user", "Two"),
        ("assistant", "Answer."),
        ("user", "Three"),
    ]
    assert third_request.system_prompt == "Be terse."
    assert third_request.max_output_tokens == settings.CHAT_MAX_OUTPUT_TOKENS


async def test_a_send_while_the_previous_answer_streams_is_a_conflict(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Still ", "going", BLOCK]
    conversation = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(conversation["id"])

    response = await api.post(
        f"/api/conversations/{conversation['id']}/messages", {"content": "Again"}
    )

    assert_json_error(response, 409, "conflict")
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 2
    await api.stop(sent["assistant_message"]["id"])
    again = await api.send(conversation["id"], "Now it may")
    assert again["user_message"]["parent_id"] == sent["assistant_message"]["id"]


async def test_a_send_after_a_dead_answer_is_not_a_conflict(api: ChatApi) -> None:
    conversation = await api.create_conversation()

    def kill_answer_of(sent: dict[str, Any]) -> None:
        Message.objects.filter(id=sent["assistant_message"]["id"]).update(
            status="streaming", heartbeat_at=timezone.now() - timedelta(hours=1)
        )

    sent = await api.send(conversation["id"], "First")
    await api.finished(sent["assistant_message"]["id"])
    await sync_to_async(kill_answer_of)(sent)  # as if the server died mid-answer

    again = await api.send(conversation["id"], "Second")

    assert again["user_message"]["parent_id"] == sent["assistant_message"]["id"]
    dead = await api.message(sent["assistant_message"]["id"])
    assert dead["status"] == "interrupted"


@pytest.mark.parametrize("content", ["", "   ", "\n\t \n"])
async def test_an_empty_message_is_refused(api: ChatApi, content: str) -> None:
    conversation = await api.create_conversation()
    response = await api.post(
        f"/api/conversations/{conversation['id']}/messages", {"content": content}
    )
    assert_json_error(response, 400, "empty_message")
    assert not await Message.objects.filter(conversation_id=conversation["id"]).aexists()


@pytest.mark.parametrize("body", [{}, {"content": None}, {"content": 12}, {"content": ["hi"]}])
async def test_a_missing_or_non_text_message_is_refused(api: ChatApi, body: Any) -> None:
    conversation = await api.create_conversation()
    response = await api.post(f"/api/conversations/{conversation['id']}/messages", body)
    assert_json_error(response, 400)


async def test_a_too_long_message_is_413(api: ChatApi, settings: Any) -> None:
    settings.CHAT_MAX_PROMPT_CHARS = 100
    conversation = await api.create_conversation()
    path = f"/api/conversations/{conversation['id']}/messages"

    assert_json_error(await api.post(path, {"content": "x" * 101}), 413, "too_large")
    response = await api.post(path, {"content": "x" * 100})
    assert response.status_code == 201
    await api.finished(response.json()["assistant_message"]["id"])


@pytest.mark.parametrize("body", ["{not json", "[]", '"text"', b"\xff\xfe"])
async def test_a_malformed_body_is_400(api: ChatApi, body: Any) -> None:
    conversation = await api.create_conversation()
    response = await api.post(f"/api/conversations/{conversation['id']}/messages", body)
    assert_json_error(response, 400, "bad_json")


@pytest.mark.parametrize(
    "parent_id", [str(uuid.uuid4()), "garbage", "user-message"], ids=["unknown", "bad", "user"]
)
async def test_a_bad_parent_is_refused(api: ChatApi, parent_id: str) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"])
    await api.finished(sent["assistant_message"]["id"])
    if parent_id == "user-message":
        parent_id = sent["user_message"]["id"]

    response = await api.post(
        f"/api/conversations/{conversation['id']}/messages",
        {"content": "Hi", "parent_id": parent_id},
    )

    assert response.status_code in {400, 404}
    assert_json_error(response, response.status_code)


async def test_send_with_an_unknown_model_is_400(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    response = await api.post(
        f"/api/conversations/{conversation['id']}/messages",
        {"content": "Hi", "model": "nope:nope"},
    )
    assert_json_error(response, 400, "unknown_model")


@pytest.mark.parametrize("conversation_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
async def test_an_unknown_conversation_is_404(api: ChatApi, conversation_id: str) -> None:
    path = f"/api/conversations/{conversation_id}"
    assert_json_error(await api.get(path), 404, "not_found")
    assert_json_error(await api.patch(path, {"title": "x"}), 404, "not_found")
    assert_json_error(await api.delete(path), 404, "not_found")
    assert_json_error(await api.post(f"{path}/messages", {"content": "Hi"}), 404, "not_found")


@pytest.mark.parametrize("message_id", [str(uuid.uuid4()), "not-a-uuid"])
async def test_an_unknown_message_is_404(api: ChatApi, message_id: str) -> None:
    assert_json_error(await api.get(f"/api/messages/{message_id}"), 404, "not_found")
    assert_json_error(await api.stop(message_id), 404, "not_found")
    stream = await api.open_stream(message_id)
    assert not stream.response.streaming
    assert_json_error(stream.response, 404, "not_found")


async def test_an_unknown_api_path_is_a_json_404(api: ChatApi, anon_api: ChatApi) -> None:
    assert_json_error(await api.get("/api/nothing-here"), 404, "not_found")
    assert_json_error(await anon_api.get("/api/nothing/here/either"), 404, "not_found")


async def test_a_wrong_method_is_a_json_405(api: ChatApi) -> None:
    response = await api.client.put("/api/conversations")
    assert_json_error(response, 405)
    assert "POST" in response["Allow"]


# --- Access --------------------------------------------------------------------------------


async def test_another_users_objects_are_404(
    api: ChatApi, other_api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Private ", "words", BLOCK]
    conversation = await api.create_conversation(title="Mine", model=scripted.model_id)
    sent = await api.send(conversation["id"], "Secret")
    answer_id = sent["assistant_message"]["id"]
    await asyncio.wait_for(scripted.runs[0].started.wait(), 5)
    path = f"/api/conversations/{conversation['id']}"

    assert_json_error(await other_api.get(path), 404, "not_found")
    assert_json_error(await other_api.patch(path, {"title": "Theirs"}), 404, "not_found")
    assert_json_error(await other_api.delete(path), 404, "not_found")
    assert_json_error(await other_api.post(f"{path}/messages", {"content": "Hi"}), 404)
    for message_id in (sent["user_message"]["id"], answer_id):
        assert_json_error(await other_api.get(f"/api/messages/{message_id}"), 404, "not_found")
    assert_json_error(await other_api.stop(answer_id), 404, "not_found")
    stream = await other_api.open_stream(answer_id)
    assert not stream.response.streaming
    assert_json_error(stream.response, 404, "not_found")
    assert (await other_api.get("/api/conversations")).json() == {"conversations": []}

    # Nothing of theirs touched mine.
    assert generation.is_running(uuid.UUID(answer_id))
    mine = (await api.get(path)).json()
    assert mine["title"] == "Mine"
    assert len(mine["messages"]) == 2
    assert (await api.stop(answer_id)).json()["status"] == "stopped"


async def test_anonymous_users_get_401_and_never_a_stream(api: ChatApi, anon_api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"])
    answer_id = sent["assistant_message"]["id"]
    path = f"/api/conversations/{conversation['id']}"

    assert_json_error(await anon_api.get("/api/conversations"), 401, "unauthenticated")
    assert_json_error(await anon_api.post("/api/conversations", {}), 401, "unauthenticated")
    assert_json_error(await anon_api.get(path), 401, "unauthenticated")
    assert_json_error(await anon_api.patch(path, {"title": "x"}), 401, "unauthenticated")
    assert_json_error(await anon_api.delete(path), 401, "unauthenticated")
    assert_json_error(await anon_api.post(f"{path}/messages", {"content": "Hi"}), 401)
    assert_json_error(await anon_api.get(f"/api/messages/{answer_id}"), 401, "unauthenticated")
    assert_json_error(await anon_api.stop(answer_id), 401, "unauthenticated")
    stream = await anon_api.open_stream(answer_id)
    assert not stream.response.streaming
    assert_json_error(stream.response, 401, "unauthenticated")
    assert await Conversation.objects.acount() == 1
    await api.finished(answer_id)


async def test_csrf_is_enforced_for_session_posts_with_a_json_error(user: Any) -> None:
    client = async_client(enforce_csrf_checks=True)
    await client.aforce_login(user)

    response = await client.post("/api/conversations", "{}", content_type="application/json")
    assert_json_error(response, 403, "csrf_failed")
    assert not await Conversation.objects.aexists()

    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    response = await client.post(
        "/api/conversations", "{}", content_type="application/json", headers={"X-CSRFToken": secret}
    )
    assert response.status_code == 201
    conversation_id = response.json()["id"]
    response = await client.delete(f"/api/conversations/{conversation_id}")
    assert_json_error(response, 403, "csrf_failed")


# --- Stop ----------------------------------------------------------------------------------


async def test_stop_of_a_finished_answer_changes_nothing(api: ChatApi) -> None:
    answer = await api.ask()
    finished = await api.finished(answer["id"])

    response = await api.stop(answer["id"], seen=3)

    assert response.status_code == 200
    assert response.json()["status"] == "complete"
    assert response.json()["content"] == finished["content"]


@pytest.mark.parametrize("seen", [-1, "5", 1.5, True])
async def test_stop_refuses_a_bad_seen(api: ChatApi, seen: Any) -> None:
    answer = await api.ask()
    assert_json_error(await api.stop(answer["id"], seen=seen), 400)
    await api.finished(answer["id"])


async def test_stop_of_an_answer_no_generation_writes_marks_it_stopped(api: ChatApi) -> None:
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"])
    answer_id = sent["assistant_message"]["id"]
    await api.finished(answer_id)
    await Message.objects.filter(id=answer_id).aupdate(
        status="streaming", content="Partial", heartbeat_at=timezone.now()
    )

    response = await api.stop(answer_id)

    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    assert response.json()["content"] == "Partial"


# --- Limits --------------------------------------------------------------------------------


async def test_too_many_concurrent_streams_is_429_with_retry_after(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_MAX_CONCURRENT_STREAMS = 2
    scripted.script = [BLOCK]
    first = await api.ask(model=scripted.model_id)
    await api.ask(model=scripted.model_id)
    third = await api.create_conversation(model=scripted.model_id)

    response = await api.post(f"/api/conversations/{third['id']}/messages", {"content": "Hi"})

    assert_json_error(response, 429, "too_many_streams")
    assert int(response["Retry-After"]) >= 1
    await api.stop(first["id"])
    assert (await api.send(third["id"]))["assistant_message"]["status"] == "streaming"


@pytest.fixture
def mid_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock for the rules that reads 10 s past a minute when the test starts.

    The per-minute window then cannot roll over during the test, whatever the real time.
    """
    now = timezone.now()
    shift = timedelta(seconds=now.second - 10, microseconds=now.microsecond)
    monkeypatch.setattr(services, "timezone", SimpleNamespace(now=lambda: timezone.now() - shift))


@pytest.mark.usefixtures("mid_minute")
async def test_too_many_sends_per_minute_is_429_with_retry_after(
    api: ChatApi, settings: Any
) -> None:
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 2
    conversation = await api.create_conversation()
    for _ in range(2):
        sent = await api.send(conversation["id"])
        await api.finished(sent["assistant_message"]["id"])

    response = await api.post(f"/api/conversations/{conversation['id']}/messages", {"content": "3"})

    assert_json_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 4


@pytest.mark.usefixtures("mid_minute")
async def test_the_rate_limit_is_per_user(api: ChatApi, other_api: ChatApi, settings: Any) -> None:
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    mine = await api.ask()
    await api.finished(mine["id"])
    theirs = await other_api.ask()
    await other_api.finished(theirs["id"])


async def test_the_daily_token_quota_is_429_with_retry_after(api: ChatApi, settings: Any) -> None:
    settings.CHAT_DAILY_TOKEN_QUOTA = 10
    conversation = await api.create_conversation()
    sent = await api.send(conversation["id"])
    finished = await api.finished(sent["assistant_message"]["id"])
    assert finished["usage"]["completion_tokens"] > 10

    response = await api.post(f"/api/conversations/{conversation['id']}/messages", {"content": "2"})

    assert_json_error(response, 429, "quota_exceeded")
    assert int(response["Retry-After"]) >= 1
