"""Fixtures for the behaviour tests: users, API clients, a scripted provider, isolation.

Generations run as tasks on each test's event loop; `_isolated_generations` makes sure
none outlives its test and that every test starts with an empty stream log.

The suite runs twice: on SQLite with in-process delivery, and on PostgreSQL with Redis
(`REDIS_URL` set; the root conftest gives the run a key prefix of its own). Tests use the
configured stream log through its interface, so most of them run on both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache

from chat import generation
from chat.db import release_connections
from chat.providers import registry, upstream
from chat.providers.base import Provider
from chat.streams import get_stream_log
from tests.helpers import ChatApi, ScriptedProvider, async_client


def pytest_configure(config: pytest.Config) -> None:
    # WhiteNoise warns once per process when `collectstatic` has not run; tests serve no files.
    config.addinivalue_line("filterwarnings", "ignore:No directory at:UserWarning")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """A PostgreSQL test database of this run's own (SQLite's is per process already).

    Django drops a test database it finds in its way: two runs sharing one name on a
    machine would drop each other's.
    """
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = f"test_{database['NAME']}_{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def _quick_postgres_flush() -> Iterator[None]:
    """Empty PostgreSQL's tables after each transactional test by DELETE, not TRUNCATE.

    TRUNCATE gives every table and index a new file: about 0.2 s for this schema, more on
    a busy disk, after each of hundreds of tests; deleting their few rows takes
    milliseconds. The flush runs in one transaction and foreign keys are checked at its
    commit, so the order of the tables does not matter.
    """
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        yield
        return
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def delete(
        self: DatabaseOperations,
        style: Any,
        tables: list[str],
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences or allow_cascade:
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        # The names are Django's own tables, quoted.
        return [f"DELETE FROM {self.quote_name(table)};" for table in tables]  # noqa: S608

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", delete)
        yield


@pytest.fixture(scope="session")
def _redis_namespace() -> Iterator[redis.Redis | None]:
    """A client of the run's Redis (None without one); the run's keys go at the end."""
    if not settings.REDIS_URL:
        yield None
        return
    prefix = settings.CHAT_REDIS_PREFIX
    assert prefix.startswith("chat-test-"), f"not a test run's own prefix: {prefix!r}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        yield client
    finally:
        _delete_matching(client, f"{prefix}*")
        client.close()


def _delete_matching(client: redis.Redis, pattern: str) -> None:
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
async def _isolated_generations(_redis_namespace: redis.Redis | None) -> AsyncIterator[None]:
    """A fresh stream log and cache per test; at the end, no generation left running."""
    get_stream_log.cache_clear()
    default = caches["default"]
    if isinstance(default, LocMemCache):
        default.clear()  # rate-limit counters
    elif isinstance(default, RedisCache) and _redis_namespace is not None:
        # `clear()` would empty the whole Redis database: delete this run's entries only.
        _delete_matching(_redis_namespace, default.make_key("*"))
    yield
    leftover = list(generation._running.values())
    for running in leftover:
        running.cancel("interrupted")
    tasks = [running.task for running in leftover if running.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    await get_stream_log().aclose()
    get_stream_log.cache_clear()
    await upstream.close_http_clients()
    # The test client keeps the connection of the thread its async views run in (to keep
    # a test's transaction); no connection may outlive its test, or the test database
    # cannot be dropped at the end.
    await sync_to_async(release_connections)()


@pytest.fixture(autouse=True)
def _chat_settings(settings: Any) -> None:
    """A demo model fast enough that a whole answer takes a few hundredths of a second."""
    settings.CHAT_DEMO_TOKENS_PER_SECOND = 5000
    # No title requests unless a test is about titles: a title asked of a scripted or fake
    # provider would be one more request among those a test counts.
    settings.CHAT_TITLES = False
    # Pages link static files by name: no `collectstatic` manifest needed in a fresh clone.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[[str], Any]:
    def make(username: str) -> Any:
        return django_user_model.objects.create_user(username=username)

    return make


@pytest.fixture
def user(make_user: Callable[[str], Any]) -> Any:
    return make_user("alice")


@pytest.fixture
def other_user(make_user: Callable[[str], Any]) -> Any:
    return make_user("bob")


@pytest.fixture
def api(user: Any) -> ChatApi:
    """The JSON API, signed in as `user` (CSRF checks off, as for an API client)."""
    return ChatApi(async_client(user))


@pytest.fixture
def other_api(other_user: Any) -> ChatApi:
    return ChatApi(async_client(other_user))


@pytest.fixture
def anon_api() -> ChatApi:
    return ChatApi(async_client())


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, settings: Any) -> ScriptedProvider:
    """Offer the model `test:scripted`, served by a provider that plays a test's script.

    The provider is a dependency of the code under test: it is registered the way a real
    provider is (offered in CHAT_MODELS, looked up by the registry), nothing else changes.
    """
    provider = ScriptedProvider()
    settings.CHAT_MODELS = [*settings.CHAT_MODELS, provider.model_id]
    available = registry._provider_available
    provider_for = registry.provider_for

    def scripted_available(name: str) -> bool:
        return name == provider.name or available(name)

    def scripted_provider_for(choice: registry.ModelChoice) -> Provider:
        return provider if choice.provider == provider.name else provider_for(choice)

    monkeypatch.setattr(registry, "_provider_available", scripted_available)
    monkeypatch.setattr(registry, "provider_for", scripted_provider_for)
    # The generation module imported the function by name.
    monkeypatch.setattr(generation, "provider_for", scripted_provider_for, raising=False)
    return provider
