"""Operations endpoints (CONTRACT §8): liveness, readiness, metrics."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client

pytestmark = pytest.mark.django_db


def other_checks() -> dict[str, bool]:
    """The checks besides the database's, all passing: Redis when it is configured."""
    return {"redis": True} if settings.REDIS_URL else {}


def test_healthz_answers_200_to_anyone(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_readyz_answers_200_when_the_database_answers(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": True, **other_checks()}}


def test_readyz_answers_503_when_the_database_does_not(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        raise OperationalError("the database is down")

    monkeypatch.setattr(CursorWrapper, "execute", broken)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": False, **other_checks()},
    }


def test_metrics_need_the_token_or_a_staff_session(
    client: Client, settings: Any, django_user_model: Any
) -> None:
    settings.METRICS_TOKEN = "s3cret-metrics-token"

    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"chat_streams_started" in response.content

    client.force_login(django_user_model.objects.create_user("someone"))
    assert client.get("/metrics").status_code == 403
    client.force_login(django_user_model.objects.create_user("admin", is_staff=True))
    assert client.get("/metrics").status_code == 200


def test_metrics_are_closed_when_no_token_is_configured(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403
