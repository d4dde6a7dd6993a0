"""Usage figures for the admin: tokens and messages per day, latency per model, quotas.

Reads only. Every figure comes from a fixed number of queries, whatever the number of
users, models or days, and uses nothing beyond portable SQL (the percentiles are picked
in Python from one ordered scan), so it runs the same on SQLite and PostgreSQL. Days are
calendar days in the site's time zone (UTC), the same days the daily quota counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from chat.models import Message, UserSettings

Role = Message.Role
Status = Message.Status


@dataclass(frozen=True, slots=True)
class UserDay:
    day: date
    user_id: int
    username: str
    sent: int  # the user's own messages
    answers: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ModelDay:
    day: date
    model: str
    answers: int
    errors: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Latency:
    """Time to first token of a model's answers, in milliseconds."""

    model: str
    answers: int  # answers that produced a first token
    p50: int
    p95: int


@dataclass(frozen=True, slots=True)
class QuotaRow:
    user_id: int
    username: str
    used_today: int
    own_quota: int | None  # None: the site's quota applies

    @property
    def quota(self) -> int:
        """The quota in force, 0 = unlimited."""
        return settings.CHAT_DAILY_TOKEN_QUOTA if self.own_quota is None else self.own_quota


def tokens_per_second(message: Message) -> float | None:
    """Completion tokens per second after the first token; None without the figures."""
    if not message.completion_tokens or message.duration_ms is None:
        return None
    seconds = (message.duration_ms - (message.ttft_ms or 0)) / 1000
    return message.completion_tokens / seconds if seconds > 0 else None


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=timezone.get_current_timezone())


def window_start(days: int) -> datetime:
    """The start of the window of `days` calendar days that ends today."""
    return day_start(timezone.localdate() - timedelta(days=days - 1))


def usage_by_user_day(*, since: datetime) -> list[UserDay]:
    rows = (
        Message.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day", "conversation__user_id", "conversation__user__username")
        .annotate(
            sent=Count("id", filter=Q(role=Role.USER)),
            answers=Count("id", filter=Q(role=Role.ASSISTANT)),
            prompt=Coalesce(Sum("prompt_tokens"), 0),
            completion=Coalesce(Sum("completion_tokens"), 0),
        )
        .order_by("-day", "conversation__user__username")
    )
    return [
        UserDay(
            day=row["day"],
            user_id=row["conversation__user_id"],
            username=row["conversation__user__username"],
            sent=row["sent"],
            answers=row["answers"],
            prompt_tokens=row["prompt"],
            completion_tokens=row["completion"],
        )
        for row in rows
    ]


def usage_by_model_day(*, since: datetime) -> list[ModelDay]:
    rows = (
        Message.objects.filter(created_at__gte=since, role=Role.ASSISTANT)
        .annotate(day=TruncDate("created_at"))
        .values("day", "model")
        .annotate(
            answers=Count("id"),
            errors=Count("id", filter=Q(status=Status.ERROR)),
            prompt=Coalesce(Sum("prompt_tokens"), 0),
            completion=Coalesce(Sum("completion_tokens"), 0),
        )
        .order_by("-day", "model")
    )
    return [
        ModelDay(
            day=row["day"],
            model=row["model"],
            answers=row["answers"],
            errors=row["errors"],
            prompt_tokens=row["prompt"],
            completion_tokens=row["completion"],
        )
        for row in rows
    ]


def nearest_rank(count: int, percent: float) -> int:
    """The 0-based index of the `percent`th percentile of `count` sorted values."""
    return max(math.ceil(percent / 100 * count), 1) - 1


def latency_by_model(*, since: datetime) -> list[Latency]:
    """Time to first token p50 and p95 per model (nearest rank), in two queries."""
    answers = Message.objects.filter(
        created_at__gte=since, role=Role.ASSISTANT, ttft_ms__isnull=False
    )
    counts = dict(
        answers.values("model").annotate(n=Count("id")).order_by().values_list("model", "n")
    )
    ranks = {model: (nearest_rank(n, 50), nearest_rank(n, 95)) for model, n in counts.items()}
    p50: dict[str, int] = {}
    p95: dict[str, int] = {}
    # One ordered scan, streamed: memory stays flat however many answers there are.
    current, position = None, 0
    ordered = answers.order_by("model", "ttft_ms").values_list("model", "ttft_ms")
    for model, ttft_ms in ordered.iterator(chunk_size=2000):
        if ttft_ms is None:  # excluded by the filter; says so to the type checker
            continue
        if model != current:
            current, position = model, 0
        p50_at, p95_at = ranks.get(model, (-1, -1))
        if position == p50_at:
            p50[model] = ttft_ms
        if position == p95_at:
            p95[model] = ttft_ms
        position += 1
    return [
        Latency(model=model, answers=counts[model], p50=p50[model], p95=p95[model])
        for model in sorted(counts)
        # An answer finished between the two queries can shift a rank past the end.
        if model in p50 and model in p95
    ]


def quota_rows(*, user_ids: Iterable[int]) -> list[QuotaRow]:
    """Today's tokens and the quota of the given users and of everyone with their own quota."""
    own = dict(
        UserSettings.objects.filter(daily_token_quota__isnull=False).values_list(
            "user_id", "daily_token_quota"
        )
    )
    ids = set(user_ids) | set(own)
    used = dict(
        Message.objects.filter(
            created_at__gte=day_start(timezone.localdate()), conversation__user_id__in=ids
        )
        .values("conversation__user_id")
        .annotate(total=Coalesce(Sum("prompt_tokens"), 0) + Coalesce(Sum("completion_tokens"), 0))
        .order_by()
        .values_list("conversation__user_id", "total")
    )
    names = dict(get_user_model()._default_manager.filter(pk__in=ids).values_list("pk", "username"))
    rows = [
        QuotaRow(
            user_id=user_id,
            username=names[user_id],
            used_today=used.get(user_id, 0),
            own_quota=own.get(user_id),
        )
        for user_id in ids
        if user_id in names
    ]
    return sorted(rows, key=lambda row: row.username.lower())
