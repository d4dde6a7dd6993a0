"""Idempotent sends: a repeated client key replays the first exchange and starts nothing.

A double-submitted send (a double click, a retry after a dropped response) carries the
same `Idempotency-Key` header (or WebSocket `client_key`): the first answers 201 and
starts one generation, every repeat answers 200 with the very same two messages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from chat.models import Message
from tests.helpers import BLOCK, ChatApi, ScriptedProvider
from tests.test_consumers import ORIGIN, headers, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def keyed(key: str) -> dict[str, Any]:
    return {"headers": {"Idempotency-Key": key}}


def ids(sent: dict[str, Any]) -> tuple[str, str]:
    return sent["user_message"]["id"], sent["assistant_message"]["id"]


@pytest.fixture
def blocking(scripted: ScriptedProvider) -> ScriptedProvider:
    """Answers that stream until stopped: a repeat arrives while the first still streams."""
    scripted.script = ["Working on it", BLOCK]
    return scripted


async def test_a_repeated_key_replays_the_first_send_with_200(
    api: ChatApi, blocking: ScriptedProvider
) -> None:
    conversation = await api.create_conversation(model=blocking.model_id)
    path = f"/api/conversations/{conversation['id']}/messages"

    first = await api.post(path, {"content": "Hello"}, **keyed("key-1"))
    again = await api.post(path, {"content": "Hello"}, **keyed("key-1"))

    assert (first.status_code, again.status_code) == (201, 200)
    assert ids(first.json()) == ids(again.json())
    assert again.json()["stream_url"] == first.json()["stream_url"]
    assert again.json()["user_message"]["content"] == "Hello"
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 2
    assert len(blocking.runs) == 1
    # A new key is a new message (here refused: the first answer still streams).
    other = await api.post(path, {"content": "Hello"}, **keyed("key-2"))
    assert other.status_code == 409
    await api.stop(first.json()["assistant_message"]["id"])


async def test_a_double_submit_at_the_same_moment_starts_one_generation(
    api: ChatApi, blocking: ScriptedProvider
) -> None:
    conversation = await api.create_conversation(model=blocking.model_id)
    path = f"/api/conversations/{conversation['id']}/messages"

    responses = await asyncio.gather(
        *(api.post(path, {"content": "Only once"}, **keyed("double-click")) for _ in range(3))
    )

    assert sorted(response.status_code for response in responses) == [200, 200, 201]
    assert len({ids(response.json()) for response in responses}) == 1
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 2
    await asyncio.sleep(0.1)
    assert len(blocking.runs) == 1
    await api.stop(responses[0].json()["assistant_message"]["id"])


async def test_a_replay_passes_the_limits_that_the_first_send_used(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    scripted.script = ["Done."]
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    conversation = await api.create_conversation(model=scripted.model_id)
    path = f"/api/conversations/{conversation['id']}/messages"

    first = await api.post(path, {"content": "Hi"}, **keyed("k"))
    finished = await api.finished(first.json()["assistant_message"]["id"])
    again = await api.post(path, {"content": "Hi"}, **keyed("k"))

    assert again.status_code == 200
    # The replay shows the answer as it is now: finished, not a new one.
    assert again.json()["assistant_message"] == finished
    assert (await api.post(path, {"content": "Hi"}, **keyed("new"))).status_code == 429
    assert len(scripted.runs) == 1


async def test_a_key_reused_for_another_message_is_a_conflict(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Done."]
    conversation = await api.create_conversation(model=scripted.model_id)
    path = f"/api/conversations/{conversation['id']}/messages"
    first = await api.post(path, {"content": "One thing"}, **keyed("same"))
    await api.finished(first.json()["assistant_message"]["id"])

    response = await api.post(path, {"content": "Another thing"}, **keyed("same"))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 2


async def test_keys_belong_to_their_conversation(api: ChatApi) -> None:
    one = await api.create_conversation()
    two = await api.create_conversation()
    for conversation in (one, two):
        response = await api.post(
            f"/api/conversations/{conversation['id']}/messages", {"content": "Hi"}, **keyed("k")
        )
        assert response.status_code == 201
        await api.finished(response.json()["assistant_message"]["id"])


@pytest.mark.parametrize("key", ["x" * 101, "has space", "tab\there", "é"])
async def test_a_malformed_key_is_refused(api: ChatApi, key: str) -> None:
    conversation = await api.create_conversation()
    response = await api.post(
        f"/api/conversations/{conversation['id']}/messages", {"content": "Hi"}, **keyed(key)
    )
    assert response.status_code == 400
    assert not await Message.objects.filter(conversation_id=conversation["id"]).aexists()


async def test_a_repeated_edit_makes_one_new_version(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Answer."]
    conversation = await api.create_conversation(model=scripted.model_id)
    sent = await api.send(conversation["id"], "Original")
    await api.finished(sent["assistant_message"]["id"])
    path = f"/api/messages/{sent['user_message']['id']}/edit"

    first = await api.post(path, {"content": "Edited"}, **keyed("edit-1"))
    again = await api.post(path, {"content": "Edited"}, **keyed("edit-1"))

    assert (first.status_code, again.status_code) == (201, 200)
    assert ids(first.json()) == ids(again.json())
    versions = Message.objects.filter(conversation_id=conversation["id"], role="user")
    assert [m.content async for m in versions.order_by("created_at")] == ["Original", "Edited"]
    await api.finished(first.json()["assistant_message"]["id"])
    assert len(scripted.runs) == 2


# --- The WebSocket ---------------------------------------------------------------------


@pytest.fixture
async def socket(user: Any) -> AsyncIterator[WebsocketCommunicator]:
    from chatsite.asgi import application

    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=headers(await session_cookie(user), ORIGIN)
    )
    accepted, _ = await communicator.connect(timeout=5)
    assert accepted
    yield communicator
    await communicator.disconnect()


async def _frames_until(
    socket: WebsocketCommunicator, kind: str, message_id: str
) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = json.loads(await socket.receive_from(timeout=5))
        frames.append(frame)
        if frame["type"] == kind and frame.get("message_id") == message_id:
            return frames


async def test_a_repeated_client_key_on_the_socket_replays_the_first_send(
    socket: WebsocketCommunicator, api: ChatApi, blocking: ScriptedProvider
) -> None:
    conversation = await api.create_conversation(model=blocking.model_id)
    frame = {
        "type": "send",
        "conversation_id": conversation["id"],
        "content": "Hello",
        "client_key": "ws-1",
    }

    await socket.send_json_to({**frame, "ref": 1})
    first = json.loads(await socket.receive_from(timeout=5))
    answer = first["assistant_message"]["id"]
    await _frames_until(socket, "token", answer)
    await socket.send_json_to({**frame, "ref": 2})
    # The first answer is silent now (its provider blocks): the next frame is the reply.
    second = json.loads(await socket.receive_from(timeout=5))

    assert first["type"] == second["type"] == "accepted"
    assert (first["ref"], second["ref"]) == (1, 2)
    assert ids(first) == ids(second)
    # The repeat follows the same answer again, from its start.
    replayed = await _frames_until(socket, "token", answer)
    assert replayed[0]["type"] == "start"
    assert replayed[-1]["text"] == "Working on it"
    assert await Message.objects.filter(conversation_id=conversation["id"]).acount() == 2
    assert len(blocking.runs) == 1
    await api.stop(answer)
