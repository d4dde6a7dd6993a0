"""The admin's usage page: figures per user, model and day; per-user daily token quotas."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from chat import services, usage
from chat.models import Conversation, Message, UserSettings
from tests.helpers import ChatApi, async_client
from tests.html import Elements
from tests.transcripts import ask, reply

pytestmark = pytest.mark.django_db

USAGE = "/admin/usage/"


@pytest.fixture
def superuser(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def reviewer(django_user_model: Any) -> Any:
    reviewer = django_user_model.objects.create_user("rita", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="Transcript reviewers"))
    return reviewer


def exchange(
    user: Any, *, model: str = "demo:demo", days_ago: int = 0, **answer: Any
) -> tuple[Message, Message]:
    """A question and its answer, `days_ago` days back (same time of day)."""
    conversation = Conversation.objects.create(user=user, model=model)
    question = ask(conversation, None, "Hello")
    reply_to = reply(conversation, question, "Hi there", **answer)
    if days_ago:
        when = timezone.now() - timedelta(days=days_ago)
        Message.objects.filter(pk__in=[question.pk, reply_to.pk]).update(created_at=when)
    return question, reply_to


def test_the_usage_page_counts_per_user_and_per_model_per_day(
    client: Client, superuser: Any, user: Any, other_user: Any
) -> None:
    today, yesterday = timezone.localdate(), timezone.localdate() - timedelta(days=1)
    exchange(user, prompt_tokens=10, completion_tokens=100)
    exchange(user, prompt_tokens=20, completion_tokens=200, model="test:other")
    exchange(user, prompt_tokens=1, completion_tokens=2, days_ago=1)
    exchange(other_user, prompt_tokens=5, completion_tokens=50, status="error")
    exchange(other_user, prompt_tokens=7, completion_tokens=70, days_ago=30)  # out of range
    client.force_login(superuser)

    response = client.get(f"{USAGE}?days=7")

    assert response.status_code == 200
    by_user = [
        (row.day, row.username, row.sent, row.answers, row.prompt_tokens, row.completion_tokens)
        for row in response.context["by_user"]
    ]
    assert by_user == [
        (today, "alice", 2, 2, 30, 300),
        (today, "bob", 1, 1, 5, 50),
        (yesterday, "alice", 1, 1, 1, 2),
    ]
    by_model = [
        (row.day, row.model, row.answers, row.errors, row.tokens)
        for row in response.context["by_model"]
    ]
    assert by_model == [
        (today, "demo:demo", 2, 1, 165),
        (today, "test:other", 1, 0, 220),
        (yesterday, "demo:demo", 1, 0, 3),
    ]
    assert response.context["totals"] == {"sent": 4, "answers": 4, "tokens": 388}
    # What the page shows is what the context holds.
    page = Elements(response.content.decode()).text
    assert "alice" in page and "165" in page and "388" in page
    # The window follows the choice.
    month = client.get(f"{USAGE}?days=90").context["totals"]
    assert month == {"sent": 5, "answers": 5, "tokens": 465}
    assert [row.username for row in client.get(f"{USAGE}?days=1").context["by_user"]] == [
        "alice",
        "bob",
    ]


def test_time_to_first_token_percentiles_per_model(
    client: Client, superuser: Any, user: Any
) -> None:
    for ttft in range(2000, 0, -100):  # 100, 200 … 2000 ms, stored out of order
        exchange(user, ttft_ms=ttft)
    exchange(user, model="test:other", ttft_ms=50)
    exchange(user, model="test:other", ttft_ms=None, status="stopped")  # no first token
    exchange(user, model="test:old", ttft_ms=10, days_ago=20)  # outside the window
    client.force_login(superuser)

    latency = client.get(USAGE).context["latency"]

    assert [(row.model, row.answers, row.p50, row.p95) for row in latency] == [
        ("demo:demo", 20, 1000, 1900),  # nearest rank: the 10th and the 19th of 20
        ("test:other", 1, 50, 50),
    ]


@pytest.mark.parametrize(
    ("count", "p50", "p95"), [(1, 0, 0), (2, 0, 1), (10, 4, 9), (20, 9, 18), (100, 49, 94)]
)
def test_nearest_rank(count: int, p50: int, p95: int) -> None:
    assert usage.nearest_rank(count, 50) == p50
    assert usage.nearest_rank(count, 95) == p95


def test_the_usage_page_takes_a_fixed_number_of_queries(
    client: Client,
    superuser: Any,
    django_user_model: Any,
    django_assert_num_queries: Any,
) -> None:
    client.force_login(superuser)
    exchange(django_user_model.objects.create_user("first"), ttft_ms=300)
    client.get(USAGE)
    for index in range(8):
        someone = django_user_model.objects.create_user(f"user{index}")
        exchange(someone, model=f"test:model{index}", ttft_ms=100 + index)
        services.user_quota_set(user=someone, quota=1000 * index)

    # Session, user; per user and per model per day; two for the percentiles; quotas,
    # today's tokens and the names of the listed users.
    with django_assert_num_queries(9):
        response = client.get(USAGE)
    assert len(response.context["quotas"]) == 9
    assert len(response.context["latency"]) == 9


# --- Quotas --------------------------------------------------------------------------


def quota_row(client: Client, username: str) -> usage.QuotaRow:
    rows = {row.username: row for row in client.get(USAGE).context["quotas"]}
    return rows[username]


def test_an_admin_sets_a_users_own_quota_on_the_usage_page(
    client: Client, superuser: Any, user: Any, settings: Any
) -> None:
    settings.CHAT_DAILY_TOKEN_QUOTA = 1000
    exchange(user, prompt_tokens=10, completion_tokens=30)
    client.force_login(superuser)
    assert quota_row(client, "alice") == usage.QuotaRow(user.pk, "alice", 40, None)
    assert quota_row(client, "alice").quota == 1000

    response = client.post(USAGE, {"username": "alice", "daily_token_quota": "500"})

    assert response.status_code == 302
    assert UserSettings.objects.get(user=user).daily_token_quota == 500
    assert services.user_daily_token_quota(user=user) == 500
    follow = client.get(response["Location"])
    assert "Daily token quota of alice: 500 tokens." in follow.content.decode()
    assert quota_row(client, "alice").quota == 500

    client.post(USAGE, {"username": "alice", "daily_token_quota": "0"})
    assert services.user_daily_token_quota(user=user) == 0  # unlimited

    client.post(USAGE, {"username": "alice", "daily_token_quota": ""})
    assert UserSettings.objects.get(user=user).daily_token_quota is None
    assert services.user_daily_token_quota(user=user) == 1000  # the site's again


def test_a_quota_can_be_given_to_a_user_who_has_not_chatted_yet(
    client: Client, superuser: Any, other_user: Any
) -> None:
    client.force_login(superuser)

    response = client.post(USAGE, {"username": "bob", "daily_token_quota": "42"})

    assert response.status_code == 302
    assert quota_row(client, "bob") == usage.QuotaRow(other_user.pk, "bob", 0, 42)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"username": "alice", "daily_token_quota": "-1"}, "greater than or equal to 0"),
        ({"username": "alice", "daily_token_quota": "lots"}, "Enter a whole number"),
        ({"username": "alice", "daily_token_quota": str(2**31)}, "less than or equal to"),
        ({"username": "nobody", "daily_token_quota": "5"}, "There is no user"),
    ],
)
def test_a_bad_quota_is_refused_and_changes_nothing(
    client: Client, superuser: Any, user: Any, data: dict[str, str], error: str
) -> None:
    client.force_login(superuser)

    response = client.post(USAGE, data)

    assert response.status_code == 400
    assert error in response.content.decode()
    assert not UserSettings.objects.filter(daily_token_quota__isnull=False).exists()


def test_a_reviewer_sees_quotas_but_cannot_change_them(
    client: Client, reviewer: Any, user: Any
) -> None:
    exchange(user)
    client.force_login(reviewer)

    page = client.get(USAGE)
    response = client.post(USAGE, {"username": "alice", "daily_token_quota": "1"})

    assert page.status_code == 200
    assert page.context["can_edit"] is False
    inputs = {attrs.get("name") for attrs in Elements(page.content.decode()).named("input")}
    assert "daily_token_quota" not in inputs
    assert "alice" in Elements(page.content.decode()).text
    assert response.status_code == 403
    assert not UserSettings.objects.filter(user=user).exists()


def test_the_service_refuses_quotas_out_of_range(user: Any) -> None:
    for bad in (-1, 2**31, True, 1.5, "10"):
        with pytest.raises(services.ServiceError):
            services.user_quota_set(user=user, quota=bad)  # type: ignore[arg-type]
    assert not UserSettings.objects.filter(user=user).exists()


def test_the_users_own_settings_api_cannot_change_the_quota(user: Any) -> None:
    with pytest.raises(services.ServiceError, match="Unknown field"):
        services.user_settings_update(user=user, changes={"daily_token_quota": 0})


@pytest.mark.django_db(transaction=True)
async def test_a_quota_set_on_the_usage_page_decides_the_429(
    api: ChatApi, other_api: ChatApi, user: Any, other_user: Any, superuser: Any, settings: Any
) -> None:
    """Site quota 100; alice and bob have both used 150 tokens today."""
    settings.CHAT_DAILY_TOKEN_QUOTA = 100
    await sync_to_async(exchange)(user, prompt_tokens=50, completion_tokens=100)
    await sync_to_async(exchange)(other_user, prompt_tokens=50, completion_tokens=100)
    admin = await sync_to_async(async_client)(superuser)

    async def send(chat: ChatApi) -> Any:
        conversation = await chat.create_conversation()
        return await chat.post(
            f"/api/conversations/{conversation['id']}/messages", {"content": "Again"}
        )

    async def set_quota(username: str, quota: str) -> None:
        response = await admin.post(USAGE, {"username": username, "daily_token_quota": quota})
        assert response.status_code == 302

    refused = await send(api)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"

    await set_quota("alice", "0")  # unlimited for alice only
    allowed = await send(api)
    assert allowed.status_code == 201
    await api.finished(allowed.json()["assistant_message"]["id"])
    assert (await send(other_api)).status_code == 429

    await set_quota("bob", "1000")  # more than the site's for bob
    assert (await send(other_api)).status_code == 201

    await set_quota("alice", "150")  # exactly what she used before today's answer
    again = await send(api)
    assert again.status_code == 429
    assert "150 tokens" in again.json()["error"]["message"]
