"""The business rules in chat.services: scoping, validation, the tree, liveness."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import generation, recovery, services
from chat.events import Outcome
from chat.models import Conversation, Message
from chat.serializers import message_json
from tests.helpers import BLOCK, ChatApi, ScriptedProvider

pytestmark = pytest.mark.django_db


def answer(conversation: Conversation, parent: Message | None, **fields: Any) -> Message:
    fields = {"role": "assistant", "status": "complete", "model": "demo:demo", **fields}
    return Message.objects.create(conversation=conversation, parent=parent, **fields)


def question(conversation: Conversation, parent: Message | None, content: str) -> Message:
    return Message.objects.create(
        conversation=conversation, parent=parent, role="user", content=content
    )


def streaming(conversation: Conversation, *, heartbeat_age: float, content: str = "") -> Message:
    asked = question(conversation, conversation.current_leaf, "Hi")
    message = answer(
        conversation,
        asked,
        status="streaming",
        content=content,
        heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age),
    )
    conversation.current_leaf = message
    conversation.save()
    return message


# --- Scoping -------------------------------------------------------------------------------


def test_objects_are_scoped_to_their_user(user: Any, other_user: Any) -> None:
    conversation = services.conversation_create(user=user, title="Mine")
    message = question(conversation, None, "Hello")

    assert services.conversation_for(user=user, conversation_id=conversation.id) == conversation
    assert services.message_for(user=user, message_id=str(message.id)) == message
    for someone in (other_user, AnonymousUser()):
        with pytest.raises(services.NotFound):
            services.conversation_for(user=someone, conversation_id=conversation.id)
        with pytest.raises(services.NotFound):
            services.message_for(user=someone, message_id=message.id)
    assert list(services.conversation_list(user=other_user)) == []


@pytest.mark.parametrize("raw", ["garbage", "", "1", None, 12, str(uuid.uuid4())])
def test_unknown_or_malformed_ids_are_not_found(user: Any, raw: Any) -> None:
    with pytest.raises(services.NotFound):
        services.conversation_for(user=user, conversation_id=raw)
    with pytest.raises(services.NotFound):
        services.message_for(user=user, message_id=raw)


# --- Conversations -------------------------------------------------------------------------


def test_conversation_create_defaults_and_validation(user: Any, settings: Any) -> None:
    created = services.conversation_create(user=user, title="  Spaced  ")
    assert created.title == "Spaced"
    assert created.model == settings.CHAT_DEFAULT_MODEL == "demo:demo"
    assert created.system_prompt == ""

    with pytest.raises(services.ServiceError) as unknown:
        services.conversation_create(user=user, model="nope:nope")
    assert unknown.value.code == "unknown_model"
    with pytest.raises(services.ServiceError):
        services.conversation_create(user=user, title="x" * 201)


def test_conversation_update_accepts_known_fields_only(user: Any) -> None:
    conversation = services.conversation_create(user=user)

    services.conversation_update(conversation=conversation, changes={"title": " New "})
    conversation.refresh_from_db()
    assert conversation.title == "New"
    with pytest.raises(services.ServiceError):
        services.conversation_update(conversation=conversation, changes={"user": 2})
    with pytest.raises(services.ServiceError):
        services.conversation_update(conversation=conversation, changes={"model": "x:y"})


# --- Sending -------------------------------------------------------------------------------


def test_message_send_creates_a_question_and_a_streaming_answer(user: Any) -> None:
    conversation = services.conversation_create(user=user, system_prompt="Be kind.")

    asked, answered, plan = services.message_send(
        user=user, conversation=conversation, content="What   is\nthis?"
    )

    conversation.refresh_from_db()
    assert asked.parent is None
    assert asked.status == "complete"
    assert answered.parent_id == asked.id
    assert answered.status == "streaming"
    assert answered.heartbeat_at is not None
    assert conversation.current_leaf_id == answered.id
    assert conversation.title == "What is this?"
    assert plan.message_id == answered.id
    assert plan.model == "demo:demo"
    assert plan.request.system_prompt == "Be kind."
    assert [(t.role, t.content) for t in plan.request.turns] == [("user", "What   is\nthis?")]


def test_the_history_sent_is_the_branch_and_costs_the_same_queries_however_long(
    user: Any,
) -> None:
    def send_after(exchanges: int) -> tuple[int, list[tuple[str, str]]]:
        conversation = services.conversation_create(user=user)
        # A side branch the history must leave out: an earlier version of the first answer.
        first = question(conversation, None, "q0")
        answer(conversation, first, content="old a0")
        parent: Message | None = None
        for n in range(exchanges):
            asked = first if n == 0 else question(conversation, parent, f"q{n}")
            parent = answer(conversation, asked, content=f"a{n}")
        conversation.current_leaf = parent
        conversation.save()
        with CaptureQueriesContext(connection) as queries:
            _, _, plan = services.message_send(user=user, conversation=conversation, content="q")
        assert plan is not None
        return len(queries), [(t.role, t.content) for t in plan.request.turns]

    short, turns = send_after(1)
    long, long_turns = send_after(6)

    assert turns == [("user", "q0"), ("assistant", "a0"), ("user", "q")]
    assert long_turns[:2] == [("user", "q0"), ("assistant", "a0")]
    assert long_turns[-3:] == [("user", "q5"), ("assistant", "a5"), ("user", "q")]
    assert len(long_turns) == 13
    assert long == short


def test_a_send_inserts_both_messages_at_once_and_its_reply_needs_no_more_queries(
    user: Any,
) -> None:
    conversation = services.conversation_create(user=user)
    q0 = question(conversation, None, "q0")
    a0 = answer(conversation, q0, content="a0")
    q1 = question(conversation, a0, "q1")
    conversation.current_leaf = answer(conversation, q1, content="a1")
    conversation.save()

    with CaptureQueriesContext(connection) as queries:
        # A new version of q1: a send after a0, which already has a follow-up.
        asked, answered, plan = services.message_send(
            user=user, conversation=conversation, content="q1, again", parent_id=str(a0.id)
        )
        replies = [message_json(asked), message_json(answered)]

    statements = [query["sql"] for query in queries]
    assert len([sql for sql in statements if sql.startswith("INSERT")]) == 1
    assert len([sql for sql in statements if 'FROM "chat_conversation"' in sql]) == 1
    assert replies[0]["sibling_ids"] == [str(q1.id), str(asked.id)]
    assert replies[1]["sibling_ids"] == [str(answered.id)]
    assert Message.objects.get(id=answered.id).parent_id == asked.id
    assert plan is not None
    assert [(t.role, t.content) for t in plan.request.turns] == [
        ("user", "q0"),
        ("assistant", "a0"),
        ("user", "q1, again"),
    ]


def test_a_long_first_message_makes_a_short_title(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    services.message_send(user=user, conversation=conversation, content="word " * 40)
    conversation.refresh_from_db()
    assert len(conversation.title) <= services.TITLE_CHARS
    assert conversation.title.endswith("…")


@pytest.mark.parametrize(
    ("content", "error", "code"),
    [
        ("", services.ServiceError, "empty_message"),
        (" \n\t", services.ServiceError, "empty_message"),
        (None, services.ServiceError, "empty_message"),
        ("x" * 33, services.TooLarge, "too_large"),
    ],
)
def test_message_send_refuses_bad_content(
    user: Any, settings: Any, content: Any, error: type[Exception], code: str
) -> None:
    settings.CHAT_MAX_PROMPT_CHARS = 32
    conversation = services.conversation_create(user=user)
    with pytest.raises(error) as raised:
        services.message_send(user=user, conversation=conversation, content=content)
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert not Message.objects.exists()


def test_message_send_after_a_live_answer_is_a_conflict(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    streaming(conversation, heartbeat_age=0)

    with pytest.raises(services.Conflict):
        services.message_send(user=user, conversation=conversation, content="More")


def test_message_send_after_a_dead_answer_interrupts_it_and_goes_on(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    dead = streaming(conversation, heartbeat_age=3600, content="Half")

    asked, _, _ = services.message_send(user=user, conversation=conversation, content="More")

    dead.refresh_from_db()
    assert dead.status == "interrupted"
    assert dead.content == "Half"
    assert asked.parent_id == dead.id


# --- The tree ------------------------------------------------------------------------------


def test_the_branch_runs_root_to_leaf_with_siblings_oldest_first(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    q1 = question(conversation, None, "Q1")
    a1 = answer(conversation, q1, content="A1")
    a1b = answer(conversation, q1, content="A1, again")
    q2 = question(conversation, a1b, "Q2")
    q2b = question(conversation, a1b, "Q2, edited")
    a2 = answer(conversation, q2b, content="A2")
    conversation.current_leaf = a2
    conversation.save()

    branch = services.conversation_branch(conversation=conversation)

    assert branch == [q1, a1b, q2b, a2]
    assert [services.message_sibling_ids(message=m) for m in branch] == [
        [q1.id],
        [a1.id, a1b.id],
        [q2.id, q2b.id],
        [a2.id],
    ]
    # Without the branch's cache, the query says the same.
    assert services.message_sibling_ids(message=Message.objects.get(id=q2b.id)) == [q2.id, q2b.id]


def test_an_empty_conversation_has_an_empty_branch(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    assert services.conversation_branch(conversation=conversation) == []


# --- The generation's writes and liveness ----------------------------------------------------


def test_flush_writes_only_while_streaming(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    message = streaming(conversation, heartbeat_age=10)

    services.message_flush_many(flushes=[services.Flush(message.id, "Some", 12)])
    message.refresh_from_db()
    assert (message.content, message.ttft_ms, message.status) == ("Some", 12, "streaming")
    assert message.heartbeat_at is not None
    assert timezone.now() - message.heartbeat_at < timedelta(seconds=5)

    services.message_finish(
        message_id=message.id,
        content="Some text",
        outcome=Outcome("complete", "stop", 3, 2),
        ttft_ms=12,
        duration_ms=50,
    )
    services.message_flush_many(flushes=[services.Flush(message.id, "Some", 99)])
    message.refresh_from_db()
    assert (message.content, message.status, message.ttft_ms) == ("Some text", "complete", 12)
    assert message.heartbeat_at is None
    assert (message.prompt_tokens, message.completion_tokens) == (3, 2)


def test_one_flush_saves_many_answers_and_keeps_what_it_does_not_send(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    grown = streaming(conversation, heartbeat_age=10, content="Old")
    same = streaming(conversation, heartbeat_age=10, content="Kept ☃")
    services.message_flush_many(flushes=[services.Flush(same.id, "Kept ☃", 7)])
    before = timezone.now()

    services.message_flush_many(
        flushes=[services.Flush(grown.id, "Old and new ✓", 5), services.Flush(same.id, None, None)]
    )

    grown.refresh_from_db()
    same.refresh_from_db()
    assert (grown.content, grown.ttft_ms) == ("Old and new ✓", 5)
    assert (same.content, same.ttft_ms) == ("Kept ☃", 7)  # None: unchanged
    for message in (grown, same):
        assert message.heartbeat_at is not None and message.heartbeat_at >= before
        assert message.updated_at >= before
    services.message_flush_many(flushes=[])  # nothing to save: no statement, no error


def test_the_generation_has_the_last_word_over_a_sweep(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    message = streaming(conversation, heartbeat_age=3600)
    assert services.messages_sweep_orphans() == 1

    services.message_finish(
        message_id=message.id,
        content="Finished after all",
        outcome=Outcome("error", "error", error_code="upstream", error_message="Upstream down"),
        ttft_ms=None,
        duration_ms=10,
    )

    message.refresh_from_db()
    assert message.status == "error"
    assert message.error_code == "upstream"
    assert services.message_outcome(message=message).retryable is True


def test_check_alive_interrupts_only_stale_streaming_answers(user: Any, settings: Any) -> None:
    # With Redis another process may be writing: its heartbeat decides, not a grace.
    settings.CHAT_HEARTBEAT_STALE_AFTER = services.ORPHAN_GRACE
    conversation = services.conversation_create(user=user)
    fresh = streaming(conversation, heartbeat_age=services.ORPHAN_GRACE / 3)
    stale = streaming(conversation, heartbeat_age=services.ORPHAN_GRACE + 1)
    done = answer(conversation, None, content="Done")

    assert services.message_check_alive(message=fresh).status == "streaming"
    assert services.message_check_alive(message=stale).status == "interrupted"
    assert services.message_check_alive(message=done).status == "complete"
    assert Message.objects.get(id=stale.id).status == "interrupted"
    assert Message.objects.get(id=fresh.id).status == "streaming"


def test_the_sweep_marks_every_orphan_interrupted(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    stale = [streaming(conversation, heartbeat_age=3600, content=f"{i}") for i in range(2)]
    never_beat = streaming(conversation, heartbeat_age=0)
    Message.objects.filter(id=never_beat.id).update(heartbeat_at=None)
    fresh = streaming(conversation, heartbeat_age=0)
    done = answer(conversation, None)

    assert services.messages_sweep_orphans() == 3

    statuses = {m.id: m.status for m in Message.objects.all()}
    assert [statuses[m.id] for m in stale] == ["interrupted", "interrupted"]
    assert statuses[never_beat.id] == "interrupted"
    assert statuses[fresh.id] == "streaming"
    assert statuses[done.id] == "complete"
    assert Message.objects.get(id=stale[0].id).content == "0"
    assert services.messages_sweep_orphans() == 0


@pytest.mark.django_db(transaction=True)  # the sweep closes its connection, as a thread does
def test_the_start_up_recovery_sweeps(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    stale = streaming(conversation, heartbeat_age=3600)

    recovery._sweep()

    assert Message.objects.get(id=stale.id).status == "interrupted"


def test_ending_an_orphan_only_touches_streaming_answers(user: Any) -> None:
    conversation = services.conversation_create(user=user)
    live = streaming(conversation, heartbeat_age=0)
    done = answer(conversation, None)

    services.message_end_orphan(message_id=live.id, status="stopped")
    services.message_end_orphan(message_id=done.id, status="stopped")

    assert Message.objects.get(id=live.id).status == "stopped"
    assert Message.objects.get(id=done.id).status == "complete"


@pytest.mark.django_db(transaction=True)
async def test_a_running_generation_is_never_swept_however_old_its_heartbeat(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["working", BLOCK]
    message = await api.ask(model=scripted.model_id)
    await asyncio.wait_for(scripted.runs[0].started.wait(), 5)
    await Message.objects.filter(id=message["id"]).aupdate(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )

    assert await sync_to_async(services.messages_sweep_orphans)() == 0
    assert (await api.message(message["id"]))["status"] == "streaming"
    assert generation.is_running(uuid.UUID(message["id"]))
    await api.stop(message["id"])
    assert (await api.message(message["id"]))["status"] == "stopped"
