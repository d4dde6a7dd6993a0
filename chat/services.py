"""Every write and every business rule of the chat.

Views, consumers, the admin and the generation task call these functions; nothing else
writes chat rows. Functions that take a user scope every lookup to that user, so an
object of another user is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.events import Outcome
from chat.models import ApiToken, Conversation, Message, UserSettings
from chat.providers.base import ChatRequest, Turn
from chat.providers.registry import default_model, model_choice

User = AbstractBaseUser | AnonymousUser
Status = Message.Status

TITLE_CHARS = 60
# Seconds a new answer may wait for its task to start before it counts as orphaned.
ORPHAN_GRACE = 3.0


class ServiceError(Exception):
    """A request the rules refuse; views turn it into a JSON error."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class Throttled(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """Everything a generation needs, read in the transaction that created its message."""

    message_id: uuid.UUID
    user_id: Any
    model: str
    request: ChatRequest


# --- Lookups -----------------------------------------------------------------------


def _parse_id(raw: Any) -> uuid.UUID:
    try:
        return raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
    except ValueError:
        raise NotFound("No such object.") from None


def _user_id(user: User) -> int:
    if not user.is_authenticated or user.pk is None:
        raise NotFound("No such object.")
    return int(user.pk)


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(user_id=_user_id(user)).order_by("-updated_at")


# A search is a few words typed into a box; more than this is not a search.
SEARCH_MAX_CHARS = 200
SEARCH_MAX_WORDS = 8


def conversation_search(*, user: User, query: Any) -> QuerySet[Conversation]:
    """The user's conversations that contain every word of `query`, newest first.

    A word matches when the title or any message (of any branch) contains it, ignoring
    case. A blank query matches every conversation.
    """
    conversations = conversation_list(user=user)
    text = query[:SEARCH_MAX_CHARS] if isinstance(query, str) else ""
    for word in text.split()[:SEARCH_MAX_WORDS]:
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=word)
        conversations = conversations.filter(Q(title__icontains=word) | Exists(in_messages))
    return conversations


def conversation_for(*, user: User, conversation_id: Any) -> Conversation:
    try:
        return Conversation.objects.get(id=_parse_id(conversation_id), user_id=_user_id(user))
    except Conversation.DoesNotExist:
        raise NotFound("No such conversation.") from None


def message_for(*, user: User, message_id: Any) -> Message:
    try:
        message = Message.objects.select_related("conversation").get(
            id=_parse_id(message_id), conversation__user_id=_user_id(user)
        )
    except Message.DoesNotExist:
        raise NotFound("No such message.") from None
    return message_check_alive(message=message)


def conversation_branch(*, conversation: Conversation) -> list[Message]:
    """The current branch, root to leaf, each message with `sibling_ids` attached."""
    messages = list(conversation.messages.order_by("created_at"))
    by_id = {message.id: message for message in messages}
    siblings: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for message in messages:
        siblings.setdefault(message.parent_id, []).append(message.id)
    branch = []
    node = by_id.get(conversation.current_leaf_id) if conversation.current_leaf_id else None
    while node is not None:
        branch.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    branch.reverse()
    for message in branch:
        message.sibling_ids = siblings.get(message.parent_id, [message.id])  # type: ignore[attr-defined]
    return [message_check_alive(message=message) for message in branch]


def message_sibling_ids(*, message: Message) -> list[uuid.UUID]:
    if hasattr(message, "sibling_ids"):
        return list(message.sibling_ids)
    return list(
        Message.objects.filter(conversation_id=message.conversation_id, parent_id=message.parent_id)
        .order_by("created_at")
        .values_list("id", flat=True)
    )


# --- Conversations -----------------------------------------------------------------


def _clean_model(model: Any) -> str:
    if model is None:
        return default_model()
    if not isinstance(model, str) or model_choice(model) is None:
        raise ServiceError(f"Unknown model: {str(model)[:100]!r}.", code="unknown_model")
    return model


def _clean_text(value: Any, field: str, *, max_length: int) -> str:
    if not isinstance(value, str):
        raise ServiceError(f"{field} must be a string.")
    if len(value) > max_length:
        raise ServiceError(f"{field} is longer than {max_length} characters.")
    return value


def conversation_create(
    *, user: User, title: Any = None, model: Any = None, system_prompt: Any = None
) -> Conversation:
    return Conversation.objects.create(
        user_id=_user_id(user),
        title=_clean_text(title or "", "title", max_length=200).strip(),
        model=_clean_model(model),
        system_prompt=_clean_text(
            system_prompt or "", "system_prompt", max_length=settings.CHAT_MAX_PROMPT_CHARS
        ),
    )


def conversation_update(*, conversation: Conversation, changes: dict[str, Any]) -> Conversation:
    unknown = set(changes) - {"title", "model", "system_prompt"}
    if unknown:
        raise ServiceError(f"Unknown field: {sorted(unknown)[0]}.")
    if "title" in changes:
        conversation.title = _clean_text(changes["title"], "title", max_length=200).strip()
    if "model" in changes:
        conversation.model = _clean_model(changes["model"])
    if "system_prompt" in changes:
        conversation.system_prompt = _clean_text(
            changes["system_prompt"], "system_prompt", max_length=settings.CHAT_MAX_PROMPT_CHARS
        )
    # Only the fields asked for: a title generated (or a leaf moved) since this object
    # was read must not be written back over.
    conversation.save(update_fields=[*sorted(changes), "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


# --- Titles ------------------------------------------------------------------------
# A conversation's first message is its title until its first answer completes; then
# `chat.titles` asks the model for a better one. A title the user chose (on creation or
# by a rename) is never replaced: only the placeholder a first message gave is.

# Seconds after the first answer during which the page keeps looking for its title.
TITLE_WAIT_SECONDS = 30.0


def _title_is_placeholder(conversation: Conversation) -> bool:
    if not conversation.title:
        return False
    first_messages = Message.objects.filter(
        conversation=conversation, parent=None, role=Message.Role.USER
    ).values_list("content", flat=True)
    return any(_title_from(content) == conversation.title for content in first_messages)


def conversation_title_wanted(*, message_id: uuid.UUID) -> bool:
    """Whether the conversation of the answer `message_id` still has its placeholder title."""
    conversation = Conversation.objects.filter(messages__id=message_id).first()
    return conversation is not None and _title_is_placeholder(conversation)


def conversation_title_generated(*, message_id: uuid.UUID, title: str | None) -> bool:
    """Give the conversation of the answer `message_id` the title generated for it.

    `title` None (or blank) means that generating one failed: the placeholder, the first
    message cut at a word boundary, stays. A title the user set meanwhile wins. Returns
    whether the title changed.
    """
    conversation_id = (
        Message.objects.filter(id=message_id).values_list("conversation_id", flat=True).first()
    )
    if conversation_id is None:
        return False  # deleted meanwhile
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        if conversation is None or not _title_is_placeholder(conversation):
            return False
        new_title = _title_from(title or "")
        changed = bool(new_title) and new_title != conversation.title
        if changed:
            conversation.title = new_title
        # Saved even when unchanged: a conversation saved after its first answer ended
        # tells the page that no title is on its way any more.
        conversation.save(update_fields=["title", "updated_at"])
    return changed


def conversation_title_pending(*, conversation: Conversation) -> bool:
    """Whether a generated title is probably on its way: the first answer completed
    recently, nothing saved the conversation since, and its title is the placeholder.

    The page refreshes its conversation list while this holds, so the title shows up
    without a reload.
    """
    if not settings.CHAT_TITLES:
        return False
    since = max(conversation.updated_at, timezone.now() - timedelta(seconds=TITLE_WAIT_SECONDS))
    first_answer_ended = Message.objects.filter(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Status.COMPLETE,
        parent__isnull=False,
        parent__parent__isnull=True,
        updated_at__gt=since,
    ).exists()
    return first_answer_ended and _title_is_placeholder(conversation)


# --- Sending -----------------------------------------------------------------------


def _check_send_limits(*, user: User) -> None:
    limit = settings.CHAT_MAX_CONCURRENT_STREAMS
    if limit:
        running = Message.objects.filter(
            conversation__user_id=_user_id(user), status=Status.STREAMING
        ).count()
        if running >= limit:
            raise Throttled(
                f"You already have {running} answers streaming; stop one or wait.",
                retry_after=5,
                code="too_many_streams",
            )
    quota = user_daily_token_quota(user=user)
    if quota:
        now = timezone.now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = Message.objects.filter(
            conversation__user_id=_user_id(user), created_at__gte=midnight
        ).aggregate(total=Coalesce(Sum("prompt_tokens"), 0) + Coalesce(Sum("completion_tokens"), 0))
        if used["total"] >= quota:
            tomorrow = midnight + timedelta(days=1)
            raise Throttled(
                f"You have used your {quota} tokens for today.",
                retry_after=max(int((tomorrow - now).total_seconds()), 1),
                code="quota_exceeded",
            )
    per_minute = settings.CHAT_RATE_LIMIT_PER_MINUTE
    if per_minute:
        window = int(timezone.now().timestamp() // 60)
        key = f"chat:sends:{user.pk}:{window}"
        cache.add(key, 0, timeout=120)
        if cache.incr(key) > per_minute:
            retry_after = 60 - int(timezone.now().timestamp()) % 60
            raise Throttled("Too many messages; wait a moment.", retry_after=max(retry_after, 1))


def _messages_of(conversation: Conversation) -> dict[uuid.UUID, Message]:
    """The conversation's messages by id, with what a generation plan and the sibling
    lists need: one query however long the conversation."""
    found = Message.objects.filter(conversation_id=conversation.pk).only(
        "id", "parent_id", "role", "content", "created_at"
    )
    return {message.id: message for message in found}


def _path_to(message: Message | None, known: dict[uuid.UUID, Message]) -> list[Message]:
    """The messages from the conversation's root to `message`, from `known`."""
    path = []
    node = message
    while node is not None:
        path.append(node)
        node = known.get(node.parent_id) if node.parent_id else None
    path.reverse()
    return path


def _sibling_ids(message: Message, known: dict[uuid.UUID, Message]) -> list[uuid.UUID]:
    """The versions of `message` (itself included), oldest first, from `known`."""
    siblings = [other for other in known.values() if other.parent_id == message.parent_id]
    siblings.sort(key=lambda other: other.created_at)
    return [other.id for other in siblings]


def _clean_content(content: Any) -> str:
    if not isinstance(content, str) or not content.strip():
        raise ServiceError("The message is empty.", code="empty_message")
    if len(content) > settings.CHAT_MAX_PROMPT_CHARS:
        raise TooLarge(f"The message is longer than {settings.CHAT_MAX_PROMPT_CHARS} characters.")
    return content


def _available_model(model_id: str) -> str:
    if model_choice(model_id) is None:
        raise ServiceError(f"The model {model_id!r} is not available.", code="unknown_model")
    return model_id


def _lock(conversation: Conversation) -> Conversation:
    """The conversation again, its row locked to the end of the transaction; its current
    leaf comes in the same query (a send's parent, unless it names another)."""
    return (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("current_leaf")
        .get(pk=conversation.pk)
    )


def _check_not_streaming(parent: Message | None) -> None:
    if parent is not None and parent.is_streaming:
        # An answer whose generation died must not block the conversation for good.
        parent = message_check_alive(message=parent)
    if parent is not None and parent.is_streaming:
        raise Conflict("The previous answer is still streaming; stop it first.")


def _new_answer(*, conversation: Conversation, parent: Message, model_id: str) -> Message:
    return Message(
        conversation=conversation,
        parent=parent,
        role=Message.Role.ASSISTANT,
        status=Status.STREAMING,
        model=model_id,
        heartbeat_at=timezone.now(),
    )


def _make_current(conversation: Conversation, answer: Message, question: str) -> None:
    conversation.current_leaf = answer
    if not conversation.title:
        conversation.title = _title_from(question)
    conversation.save(update_fields=["current_leaf", "title", "updated_at"])


def _add_answer(
    *, user: User, conversation: Conversation, parent: Message, model_id: str
) -> tuple[Message, GenerationPlan]:
    """Add a streaming answer to `parent` (a user message) and make it current.

    Precondition: inside a transaction holding the conversation's row lock.
    """
    _check_send_limits(user=user)
    assistant = _new_answer(conversation=conversation, parent=parent, model_id=model_id)
    assistant.save(force_insert=True)
    _make_current(conversation, assistant, parent.content)
    known = _messages_of(conversation)
    return assistant, _generation_plan(conversation=conversation, assistant=assistant, known=known)


def _add_exchange(
    *,
    user: User,
    conversation: Conversation,
    parent: Message | None,
    content: str,
    model_id: str,
    client_key: str = "",
) -> tuple[Message, Message, GenerationPlan]:
    """Add a user message after `parent` and its streaming answer. Same precondition.

    Both rows go in with one INSERT, and one read of the conversation's messages gives
    the model its history and the new message its versions (`sibling_ids`).
    """
    _check_not_streaming(parent)
    _check_send_limits(user=user)
    user_message = Message(
        conversation=conversation,
        parent=parent,
        role=Message.Role.USER,
        content=content,
        status=Status.COMPLETE,
        client_key=client_key,
    )
    assistant = _new_answer(conversation=conversation, parent=user_message, model_id=model_id)
    Message.objects.bulk_create([user_message, assistant])
    _make_current(conversation, assistant, content)
    known = _messages_of(conversation)
    user_message.sibling_ids = _sibling_ids(user_message, known)  # type: ignore[attr-defined]
    # The first answer to a new question has no other versions.
    assistant.sibling_ids = [assistant.id]  # type: ignore[attr-defined]
    plan = _generation_plan(conversation=conversation, assistant=assistant, known=known)
    return user_message, assistant, plan


# --- Idempotent sends ---------------------------------------------------------------

MAX_CLIENT_KEY_CHARS = 100


def _clean_client_key(raw: Any) -> str:
    """A client's idempotency key: up to 100 printable ASCII characters; "" for none."""
    if raw is None or raw == "":
        return ""
    if (
        not isinstance(raw, str)
        or len(raw) > MAX_CLIENT_KEY_CHARS
        or not all(" " < char < "\x7f" for char in raw)
    ):
        raise ServiceError(
            f"The idempotency key must be 1 to {MAX_CLIENT_KEY_CHARS} printable ASCII "
            "characters without spaces.",
            code="invalid",
        )
    return raw


def _replay(
    *, conversation: Conversation, client_key: str, content: str, parent_id: Any
) -> tuple[Message, Message] | None:
    """The exchange an earlier request with this key created, or None if there is none.

    `parent_id` is the parent the new request asks for (`...` when it names none): a key
    reused for a different message is refused rather than silently answered with the
    wrong exchange.
    """
    question = (
        Message.objects.filter(conversation=conversation, client_key=client_key)
        .select_related("conversation")
        .first()
    )
    if question is None:
        return None
    answer = (
        Message.objects.filter(parent=question, role=Message.Role.ASSISTANT)
        .select_related("conversation")
        .order_by("created_at")
        .first()
    )
    same_parent = parent_id is ... or question.parent_id == parent_id
    if question.content != content or not same_parent or answer is None:
        raise Conflict(
            "This idempotency key was already used for a different message.",
            code="idempotency_key_reused",
        )
    return question, message_check_alive(message=answer)


def _send_once(
    *,
    conversation: Conversation,
    client_key: str,
    content: str,
    parent_id: Any,
    create: Callable[[Conversation], tuple[Message, Message, GenerationPlan]],
) -> tuple[Message, Message, GenerationPlan | None]:
    """Run `create(conversation)` in a transaction that holds the conversation's lock,
    unless an earlier request with `client_key` already created this exchange: then that
    exchange, and no plan (its answer was started, or has ended, already)."""
    try:
        with transaction.atomic():
            locked = _lock(conversation)
            if client_key:
                replayed = _replay(
                    conversation=locked,
                    client_key=client_key,
                    content=content,
                    parent_id=parent_id,
                )
                if replayed is not None:
                    return (*replayed, None)
            user_message, assistant, plan = create(locked)
            return user_message, assistant, plan
    except IntegrityError:
        # Two requests with one key raced past the check; the unique constraint let one
        # through, and this one replays it.
        if not client_key:
            raise
        with transaction.atomic():
            replayed = _replay(
                conversation=conversation,
                client_key=client_key,
                content=content,
                parent_id=parent_id,
            )
        if replayed is None:
            raise
        return (*replayed, None)


def message_send(
    *,
    user: User,
    conversation: Conversation,
    content: Any,
    parent_id: Any = None,
    model: Any = None,
    client_key: Any = None,
) -> tuple[Message, Message, GenerationPlan | None]:
    """Add a user message and a streaming assistant answer after `parent_id`.

    Without `parent_id` the message follows the conversation's current leaf. The caller
    must start the returned plan's generation once this function has returned (and so
    committed), or the answer would stay `streaming` until the stale sweep.

    With `client_key`, a second request with the same key returns the exchange the first
    one created, and no plan: nothing new is created or started.
    """
    content = _clean_content(content)
    key = _clean_client_key(client_key)
    model_id = _available_model(conversation.model if model is None else _clean_model(model))
    wanted_parent = ... if parent_id is None else _parse_id(parent_id)

    def create(conversation: Conversation) -> tuple[Message, Message, GenerationPlan]:
        if parent_id is None:
            parent = conversation.current_leaf
        else:
            try:
                parent = conversation.messages.get(id=_parse_id(parent_id))
            except Message.DoesNotExist:
                raise ServiceError("parent_id is not a message of this conversation.") from None
        if parent is not None and parent.role != Message.Role.ASSISTANT:
            raise ServiceError(
                "A message must follow an answer (parent_id of an assistant message)."
            )
        return _add_exchange(
            user=user,
            conversation=conversation,
            parent=parent,
            content=content,
            model_id=model_id,
            client_key=key,
        )

    return _send_once(
        conversation=conversation,
        client_key=key,
        content=content,
        parent_id=wanted_parent,
        create=create,
    )


def message_edit(
    *, user: User, message: Message, content: Any, client_key: Any = None
) -> tuple[Message, Message, GenerationPlan | None]:
    """A new version of a user message, beside the old one, with a new answer.

    Nothing is deleted: the old version and everything after it stay reachable.
    Same caller duty, and the same meaning of `client_key`, as `message_send`.
    """
    if message.role != Message.Role.USER:
        raise ServiceError("Only your own messages can be edited.", code="not_a_user_message")
    content = _clean_content(content)
    key = _clean_client_key(client_key)

    def create(conversation: Conversation) -> tuple[Message, Message, GenerationPlan]:
        return _add_exchange(
            user=user,
            conversation=conversation,
            parent=message.parent,
            content=content,
            model_id=_available_model(conversation.model),
            client_key=key,
        )

    return _send_once(
        conversation=message.conversation,
        client_key=key,
        content=content,
        parent_id=message.parent_id,
        create=create,
    )


def message_regenerate(*, user: User, message: Message) -> tuple[Message, GenerationPlan]:
    """A new version of an answer, beside the old one. Same caller duty as `message_send`."""
    if message.role != Message.Role.ASSISTANT or message.parent is None:
        raise ServiceError("Only answers can be regenerated.", code="not_an_answer")
    _check_not_streaming(message)
    with transaction.atomic():
        conversation = _lock(message.conversation)
        model_id = _available_model(conversation.model)
        return _add_answer(
            user=user, conversation=conversation, parent=message.parent, model_id=model_id
        )


def message_select(*, message: Message) -> Conversation:
    """Make the branch through `message` current, down to its most recent leaf."""
    children: dict[uuid.UUID | None, list[tuple[Any, uuid.UUID]]] = {}
    for child_id, parent_id, created_at in Message.objects.filter(
        conversation_id=message.conversation_id
    ).values_list("id", "parent_id", "created_at"):
        children.setdefault(parent_id, []).append((created_at, child_id))
    leaf = message.id
    while children.get(leaf):
        leaf = max(children[leaf])[1]
    with transaction.atomic():
        conversation = _lock(message.conversation)
        conversation.current_leaf_id = leaf
        # Switching versions is reading, not activity: the list order stays.
        conversation.save(update_fields=["current_leaf"])
    return conversation


def _title_from(content: str) -> str:
    """A title made of `content`: whitespace collapsed, cut at a word boundary with "…"."""
    words = " ".join(content.split())
    if len(words) <= TITLE_CHARS:
        return words
    cut = words[: TITLE_CHARS - 1]
    space = cut.rfind(" ")
    # Cut before the word the limit falls in, unless one long word makes most of the title.
    if words[len(cut)] != " " and space >= TITLE_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _generation_plan(
    *, conversation: Conversation, assistant: Message, known: dict[uuid.UUID, Message]
) -> GenerationPlan:
    """What the generation of `assistant` asks the model; `known`: the conversation's
    messages (`_messages_of`), the new ones included."""
    choice = model_choice(assistant.model)
    assert choice is not None
    turns = tuple(
        Turn(role=message.role, content=message.content)  # type: ignore[arg-type]
        for message in _path_to(assistant.parent, known)
    )
    return GenerationPlan(
        message_id=assistant.id,
        user_id=conversation.user_id,
        model=assistant.model,
        request=ChatRequest(
            model=choice.model,
            system_prompt=conversation.system_prompt or settings.CHAT_SYSTEM_PROMPT,
            turns=turns,
            max_output_tokens=settings.CHAT_MAX_OUTPUT_TOKENS,
        ),
    )


# --- The generation's writes -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flush:
    """A running answer's state to save: its text (None: unchanged) and time to first token."""

    message_id: uuid.UUID
    content: str | None
    ttft_ms: int | None


def message_flush_many(*, flushes: Sequence[Flush]) -> None:
    """Save several running answers (only those still streaming) in one statement.

    Every running answer of a process is saved once a second, so this is one of the
    server's hottest paths: one ORM update per answer cost ~0.35 ms of CPU on SQLite and
    ~0.6 ms on PostgreSQL, 5-10% of a core at 160 answers. The same UPDATE, prepared once
    and run with each answer's values (`executemany`), costs a fraction of that.
    """
    if not flushes:
        return
    connection = connections[router.db_for_write(Message)]
    quote = connection.ops.quote_name
    now = Message._meta.get_field("updated_at").get_db_prep_value(timezone.now(), connection)
    key = Message._meta.pk
    assert key is not None and key.column is not None
    table, content, ttft = quote(Message._meta.db_table), quote("content"), quote("ttft_ms")
    # Names from the model, quoted by the backend; every value is a parameter.
    sql = (
        f"UPDATE {table} SET {quote('heartbeat_at')} = %s, {quote('updated_at')} = %s, "  # noqa: S608
        f"{content} = COALESCE(%s, {content}), {ttft} = COALESCE(%s, {ttft}) "
        f"WHERE {quote(key.column)} = %s AND {quote('status')} = %s"
    )
    rows = [
        (
            now,
            now,
            flush.content,
            flush.ttft_ms,
            key.get_db_prep_value(flush.message_id, connection),
            Status.STREAMING.value,
        )
        for flush in flushes
    ]
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def message_finish(
    *,
    message_id: uuid.UUID,
    content: str,
    outcome: Outcome,
    ttft_ms: int | None,
    duration_ms: int,
) -> None:
    """Record how a generation ended. Its word is final, even over a stale sweep's guess."""
    Message.objects.filter(id=message_id).update(
        content=content,
        status=outcome.status,
        finish_reason=outcome.finish_reason,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        ttft_ms=ttft_ms,
        duration_ms=duration_ms,
        heartbeat_at=None,
        updated_at=timezone.now(),
    )


# --- Liveness ----------------------------------------------------------------------


def _generation_is_local(message_id: uuid.UUID) -> bool:
    from chat.generation import is_running  # the registry of this process's tasks

    return is_running(message_id)


def _is_orphaned(message: Message) -> bool:
    if not message.is_streaming or _generation_is_local(message.id):
        return False
    # Without Redis one process serves everything: a generation not running here runs
    # nowhere, once the moment between commit and task start has passed.
    stale_after = settings.CHAT_HEARTBEAT_STALE_AFTER if settings.REDIS_URL else ORPHAN_GRACE
    stale_before = timezone.now() - timedelta(seconds=stale_after)
    return message.heartbeat_at is None or message.heartbeat_at < stale_before


def message_check_alive(*, message: Message) -> Message:
    """Turn a `streaming` message whose generation is gone into `interrupted`."""
    if _is_orphaned(message):
        updated = Message.objects.filter(id=message.id, status=Status.STREAMING).update(
            status=Status.INTERRUPTED,
            error_code="",
            heartbeat_at=None,
            updated_at=timezone.now(),
        )
        if updated:
            message.status = Status.INTERRUPTED
            message.heartbeat_at = None
        else:
            message.refresh_from_db()
    return message


def message_status(*, message_id: uuid.UUID) -> str:
    return str(Message.objects.values_list("status", flat=True).get(id=message_id))


def message_end_orphan(*, message_id: uuid.UUID, status: str) -> None:
    """End a `streaming` message that no generation in reach is writing any more."""
    Message.objects.filter(id=message_id, status=Status.STREAMING).update(
        status=status, heartbeat_at=None, updated_at=timezone.now()
    )


def messages_sweep_orphans() -> int:
    """Mark every orphaned `streaming` message `interrupted`; returns how many."""
    swept = 0
    for message in Message.objects.filter(status=Status.STREAMING).only(
        "id", "status", "heartbeat_at"
    ):
        if _is_orphaned(message):
            swept += Message.objects.filter(id=message.id, status=Status.STREAMING).update(
                status=Status.INTERRUPTED, heartbeat_at=None, updated_at=timezone.now()
            )
    return swept


def message_outcome(*, message: Message) -> Outcome:
    from chat.providers.base import RETRYABLE

    return Outcome(
        status=message.status,
        finish_reason=message.finish_reason,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        error_code=message.error_code,
        error_message=message.error_message,
        retryable=message.error_code in RETRYABLE,
        ttft_ms=message.ttft_ms,
        duration_ms=message.duration_ms,
    )


# --- User settings -----------------------------------------------------------------


def user_settings_for(*, user: User) -> UserSettings:
    """The user's settings: the defaults, unsaved, until they change one."""
    user_id = _user_id(user)
    try:
        return UserSettings.objects.get(user_id=user_id)
    except UserSettings.DoesNotExist:
        return UserSettings(user_id=user_id)


def user_settings_update(*, user: User, changes: dict[str, Any]) -> UserSettings:
    unknown = set(changes) - {"transport"}
    if unknown:
        raise ServiceError(f"Unknown field: {sorted(unknown)[0]}.")
    values: dict[str, Any] = {}
    if "transport" in changes:
        transport = changes["transport"]
        if transport not in UserSettings.Transport.values:
            choices = ", ".join(UserSettings.Transport.values)
            raise ServiceError(f"transport must be one of: {choices}.")
        values["transport"] = transport
    user_settings, _created = UserSettings.objects.update_or_create(
        user_id=_user_id(user), defaults=values
    )
    return user_settings


# --- Quotas --------------------------------------------------------------------------

MAX_DAILY_TOKEN_QUOTA = 2_147_483_647  # the largest value every database's column holds


def user_daily_token_quota(*, user: User) -> int:
    """Tokens the user may use per day, 0 = unlimited: their own quota, else the site's."""
    own = (
        UserSettings.objects.filter(user_id=_user_id(user))
        .values_list("daily_token_quota", flat=True)
        .first()
    )
    return settings.CHAT_DAILY_TOKEN_QUOTA if own is None else own


def user_quota_set(*, user: User, quota: int | None) -> UserSettings:
    """Give `user` their own daily token quota (0 = unlimited), or None for the site's.

    An admin's decision: the user's own settings API cannot change it.
    """
    if quota is not None and (
        isinstance(quota, bool)
        or not isinstance(quota, int)
        or not 0 <= quota <= MAX_DAILY_TOKEN_QUOTA
    ):
        raise ServiceError(
            f"The daily token quota must be a whole number from 0 to {MAX_DAILY_TOKEN_QUOTA}."
        )
    user_settings, _created = UserSettings.objects.update_or_create(
        user_id=_user_id(user), defaults={"daily_token_quota": quota}
    )
    return user_settings


# --- API tokens --------------------------------------------------------------------

API_TOKEN_PREFIX = "chat_"  # noqa: S105 - a label, not a secret
# How many characters of a token stay readable, so that its owner can tell tokens apart.
API_TOKEN_SHOWN_CHARS = 12
MAX_API_TOKENS = 50
# `last_used_at` is written at most this often per token, not on every request.
API_TOKEN_USE_PRECISION = timedelta(minutes=1)


def _token_hash(secret: str) -> str:
    # The secret is 256 random bits: a fast hash is enough, and no salt is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    """The user's tokens that still work, newest first."""
    return ApiToken.objects.filter(user_id=_user_id(user), revoked_at__isnull=True).order_by(
        "-created_at"
    )


def api_token_create(*, user: User, name: Any) -> tuple[ApiToken, str]:
    """A new token for `user`, and its secret: the only time the secret is known."""
    name = _clean_text(name if name is not None else "", "name", max_length=100).strip()
    if not name:
        raise ServiceError("Give the token a name, so that you can recognise it later.")
    if api_token_list(user=user).count() >= MAX_API_TOKENS:
        raise ServiceError(f"You may have at most {MAX_API_TOKENS} tokens; revoke one first.")
    secret = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user_id=_user_id(user),
        name=name,
        prefix=secret[:API_TOKEN_SHOWN_CHARS],
        token_hash=_token_hash(secret),
    )
    return token, secret


def api_token_for(*, user: User, token_id: Any) -> ApiToken:
    try:
        return api_token_list(user=user).get(id=_parse_id(token_id))
    except ApiToken.DoesNotExist:
        raise NotFound("No such token.") from None


def api_token_revoke(*, token: ApiToken) -> None:
    """Revoke a token at once: requests, streams and sockets it opened end."""
    from chat.revocation import credentials_changed

    ApiToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    credentials_changed(user_id=token.user_id)


def api_token_for_secret(*, secret: str) -> ApiToken | None:
    """The live token whose secret this is (its user loaded), or None.

    None for anything else: an unknown or revoked token, or one of an inactive user.
    """
    if not secret.startswith(API_TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=_token_hash(secret), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= API_TOKEN_USE_PRECISION:
        ApiToken.objects.filter(id=token.id).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- Sign-in attempts --------------------------------------------------------------

LOGIN_WINDOW_SECONDS = 3600


def _login_keys(*, username: str, ip: str | None) -> list[tuple[str, int]]:
    """The cache counters a sign-in attempt counts against, with their limits."""
    window = int(timezone.now().timestamp()) // LOGIN_WINDOW_SECONDS
    # Hashed: a cache key must not hold whatever a visitor typed as a user name.
    name = hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:32]
    keys = [(f"chat:login:user:{name}:{window}", settings.CHAT_LOGIN_ATTEMPTS_PER_HOUR)]
    if ip:
        keys.append((f"chat:login:ip:{ip}:{window}", settings.CHAT_LOGIN_ATTEMPTS_PER_IP_PER_HOUR))
    return [(key, limit) for key, limit in keys if limit]


def login_throttle_check(*, username: str, ip: str | None) -> None:
    """Refuse a sign-in attempt (Throttled) once its user name or address has failed too often.

    Checked before the password, so a throttled guess learns nothing, right or wrong.
    """
    for key, limit in _login_keys(username=username, ip=ip):
        if (cache.get(key) or 0) >= limit:
            retry_after = (
                LOGIN_WINDOW_SECONDS - int(timezone.now().timestamp()) % LOGIN_WINDOW_SECONDS
            )
            raise Throttled(
                "Too many failed sign-in attempts. "
                f"Try again in {max(retry_after // 60, 1)} minutes.",
                retry_after=max(retry_after, 1),
                code="login_throttled",
            )


def login_failure_record(*, username: str, ip: str | None) -> None:
    for key, _limit in _login_keys(username=username, ip=ip):
        cache.add(key, 0, timeout=LOGIN_WINDOW_SECONDS + 60)
        try:
            cache.incr(key)
        except ValueError:  # expired between the two calls
            cache.set(key, 1, timeout=LOGIN_WINDOW_SECONDS + 60)


def login_success_record(*, username: str) -> None:
    """A right password clears its user name's failures (not its address's)."""
    for key, _limit in _login_keys(username=username, ip=None):
        cache.delete(key)
