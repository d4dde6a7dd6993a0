"""Versions: edit adds a user sibling, regenerate an answer sibling, select switches branch.

The story: ask, edit the question twice, regenerate the last answer once; then walk every
version through the API and check what the provider was sent for each answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import BLOCK, ChatApi, ScriptedProvider

pytestmark = pytest.mark.django_db(transaction=True)


async def _edit(api: ChatApi, message_id: str, content: str) -> dict[str, Any]:
    response = await api.post(f"/api/messages/{message_id}/edit", {"content": content})
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    assert body["stream_url"] == f"/api/messages/{body['assistant_message']['id']}/stream"
    await api.finished(body["assistant_message"]["id"])
    return body


async def _regenerate(api: ChatApi, message_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/messages/{message_id}/regenerate")
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    assert set(body) == {"assistant_message", "stream_url"}
    await api.finished(body["assistant_message"]["id"])
    return body


async def _branch(api: ChatApi, conversation_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/api/conversations/{conversation_id}")
    assert response.status_code == 200
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def _path(provider: ScriptedProvider, index: int) -> list[tuple[str, str]]:
    return [(turn.role, turn.content) for turn in provider.runs[index].request.turns]


async def test_edit_twice_regenerate_once_then_walk_every_version(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["An ", "answer."]
    conversation = await api.create_conversation(model=scripted.model_id)
    first = await api.send(conversation["id"], "What is 2+2?")
    await api.finished(first["assistant_message"]["id"])
    follow_up = await api.send(conversation["id"], "And 3+3?")
    await api.finished(follow_up["assistant_message"]["id"])

    # Edit the follow-up twice, then regenerate the newest answer.
    edit_1 = await _edit(api, follow_up["user_message"]["id"], "And 4+4?")
    edit_2 = await _edit(api, follow_up["user_message"]["id"], "And 5+5?")
    regenerated = await _regenerate(api, edit_2["assistant_message"]["id"])

    # Each answer saw exactly its own path: root to its user message.
    assert _path(scripted, 1) == [
        ("user", "What is 2+2?"),
        ("assistant", "An answer."),
        ("user", "And 3+3?"),
    ]
    assert _path(scripted, 2)[-1] == ("user", "And 4+4?")
    assert _path(scripted, 3)[-1] == ("user", "And 5+5?")
    assert _path(scripted, 4) == _path(scripted, 3)
    assert len(scripted.runs) == 5

    # The current branch ends at the regenerated answer, with every version listed.
    branch = await _branch(api, conversation["id"])
    assert [m["id"] for m in branch] == [
        first["user_message"]["id"],
        first["assistant_message"]["id"],
        edit_2["user_message"]["id"],
        regenerated["assistant_message"]["id"],
    ]
    user_versions = [
        follow_up["user_message"]["id"],
        edit_1["user_message"]["id"],
        edit_2["user_message"]["id"],
    ]
    assert branch[2]["sibling_ids"] == user_versions
    assert branch[3]["sibling_ids"] == [
        edit_2["assistant_message"]["id"],
        regenerated["assistant_message"]["id"],
    ]
    assert branch[0]["sibling_ids"] == [first["user_message"]["id"]]

    # Walk the user versions: each select shows that version and its newest answer.
    expected_answer = {
        follow_up["user_message"]["id"]: follow_up["assistant_message"]["id"],
        edit_1["user_message"]["id"]: edit_1["assistant_message"]["id"],
        edit_2["user_message"]["id"]: regenerated["assistant_message"]["id"],
    }
    for version in user_versions:
        response = await api.post(f"/api/messages/{version}/select")
        assert response.status_code == 200
        selected = response.json()["messages"]
        assert [m["id"] for m in selected[2:]] == [version, expected_answer[version]]
        assert selected == await _branch(api, conversation["id"])

    # Selecting the older answer version keeps its question.
    response = await api.post(f"/api/messages/{edit_2['assistant_message']['id']}/select")
    assert [m["id"] for m in response.json()["messages"][2:]] == [
        edit_2["user_message"]["id"],
        edit_2["assistant_message"]["id"],
    ]

    # A send follows the current branch's leaf.
    next_send = await api.send(conversation["id"], "Thanks")
    await api.finished(next_send["assistant_message"]["id"])
    assert next_send["user_message"]["parent_id"] == edit_2["assistant_message"]["id"]
    assert _path(scripted, 5)[-3:] == [
        ("user", "And 5+5?"),
        ("assistant", "An answer."),
        ("user", "Thanks"),
    ]


async def test_editing_the_first_message_adds_a_root_version(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Fine."]
    conversation = await api.create_conversation(model=scripted.model_id)
    first = await api.send(conversation["id"], "Hi")
    await api.finished(first["assistant_message"]["id"])
    edited = await _edit(api, first["user_message"]["id"], "Hello")
    assert edited["user_message"]["parent_id"] is None
    assert edited["user_message"]["sibling_ids"] == [
        first["user_message"]["id"],
        edited["user_message"]["id"],
    ]
    assert _path(scripted, 1) == [("user", "Hello")]


async def test_rules_for_edit_regenerate_and_select(
    api: ChatApi, other_api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Working", BLOCK]
    sent = await api.ask("Hi", model=scripted.model_id)
    question = sent["parent_id"]

    # Only user messages are edited, only answers regenerated; a streaming answer first stops.
    response = await api.post(f"/api/messages/{sent['id']}/edit", {"content": "x"})
    assert response.status_code == 400
    response = await api.post(f"/api/messages/{question}/regenerate")
    assert response.status_code == 400
    response = await api.post(f"/api/messages/{sent['id']}/regenerate")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    await api.stop(sent["id"])

    response = await api.post(f"/api/messages/{question}/edit", {"content": "  "})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_message"

    # Another user's messages are not found, and nothing changes.
    for action, body in (("edit", {"content": "x"}), ("regenerate", None), ("select", None)):
        target = question if action == "edit" else sent["id"]
        response = await other_api.post(f"/api/messages/{target}/{action}", body)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    message = await api.message(sent["id"])
    assert message["sibling_ids"] == [sent["id"]]
