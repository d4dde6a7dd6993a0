"""Every write and every business rule of the chat.

Views, consumers, the admin and the generation task call these functions; nothing else
writes chat rows. Functions that take a user scope every lookup to that user, so an
object of another user is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.events import Outcome
from chat.models import Conversation, Message, UserSettings
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
    conversation.save()
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


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
    quota = settings.CHAT_DAILY_TOKEN_QUOTA
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


def _path_to(message: Message | None) -> list[Message]:
    path = []
    while message is not None:
        path.append(message)
        message = message.parent
    path.reverse()
    return path


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
    return Conversation.objects.select_for_update().get(pk=conversation.pk)


def _check_not_streaming(parent: Message | None) -> None:
    if parent is not None and parent.is_streaming:
        # An answer whose generation died must not block the conversation for good.
        parent = message_check_alive(message=parent)
    if parent is not None and parent.is_streaming:
        raise Conflict("The previous answer is still streaming; stop it first.")


def _add_answer(
    *, user: User, conversation: Conversation, parent: Message, model_id: str
) -> tuple[Message, GenerationPlan]:
    """Add a streaming answer to `parent` (a user message) and make it current.

    Precondition: inside a transaction holding the conversation's row lock.
    """
    _check_send_limits(user=user)
    assistant = Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=Message.Role.ASSISTANT,
        status=Status.STREAMING,
        model=model_id,
        heartbeat_at=timezone.now(),
    )
    conversation.current_leaf = assistant
    if not conversation.title:
        conversation.title = _title_from(parent.content)
    conversation.save(update_fields=["current_leaf", "title", "updated_at"])
    return assistant, _generation_plan(conversation=conversation, assistant=assistant)


def _add_exchange(
    *,
    user: User,
    conversation: Conversation,
    parent: Message | None,
    content: str,
    model_id: str,
) -> tuple[Message, Message, GenerationPlan]:
    """Add a user message after `parent` and its streaming answer. Same precondition."""
    _check_not_streaming(parent)
    user_message = Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=Message.Role.USER,
        content=content,
        status=Status.COMPLETE,
    )
    assistant, plan = _add_answer(
        user=user, conversation=conversation, parent=user_message, model_id=model_id
    )
    return user_message, assistant, plan


def message_send(
    *,
    user: User,
    conversation: Conversation,
    content: Any,
    parent_id: Any = None,
    model: Any = None,
) -> tuple[Message, Message, GenerationPlan]:
    """Add a user message and a streaming assistant answer after `parent_id`.

    Without `parent_id` the message follows the conversation's current leaf. The caller
    must start the returned plan's generation once this function has returned (and so
    committed), or the answer would stay `streaming` until the stale sweep.
    """
    content = _clean_content(content)
    model_id = _available_model(conversation.model if model is None else _clean_model(model))
    with transaction.atomic():
        conversation = _lock(conversation)
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
            user=user, conversation=conversation, parent=parent, content=content, model_id=model_id
        )


def message_edit(
    *, user: User, message: Message, content: Any
) -> tuple[Message, Message, GenerationPlan]:
    """A new version of a user message, beside the old one, with a new answer.

    Nothing is deleted: the old version and everything after it stay reachable.
    Same caller duty as `message_send`.
    """
    if message.role != Message.Role.USER:
        raise ServiceError("Only your own messages can be edited.", code="not_a_user_message")
    content = _clean_content(content)
    with transaction.atomic():
        conversation = _lock(message.conversation)
        model_id = _available_model(conversation.model)
        return _add_exchange(
            user=user,
            conversation=conversation,
            parent=message.parent,
            content=content,
            model_id=model_id,
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
    words = " ".join(content.split())
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1].rstrip() + "…"


def _generation_plan(*, conversation: Conversation, assistant: Message) -> GenerationPlan:
    choice = model_choice(assistant.model)
    assert choice is not None
    turns = tuple(
        Turn(role=message.role, content=message.content)  # type: ignore[arg-type]
        for message in _path_to(assistant.parent)
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


def message_flush(*, message_id: uuid.UUID, content: str | None, ttft_ms: int | None) -> None:
    """Save the text so far and prove the generation is alive. Only while streaming."""
    fields: dict[str, Any] = {"heartbeat_at": timezone.now(), "updated_at": timezone.now()}
    if content is not None:
        fields["content"] = content
    if ttft_ms is not None:
        fields["ttft_ms"] = ttft_ms
    Message.objects.filter(id=message_id, status=Status.STREAMING).update(**fields)


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
