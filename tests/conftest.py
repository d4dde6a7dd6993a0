"""Fixtures for the behaviour tests: users, API clients, a scripted provider, isolation.

Generations run as tasks on each test's event loop; `_isolated_generations` makes sure
none outlives its test and that every test starts with an empty stream log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache

from chat import generation
from chat.providers import registry
from chat.providers.base import Provider
from chat.streams import get_stream_log
from tests.helpers import ChatApi, ScriptedProvider, async_client


def pytest_configure(config: pytest.Config) -> None:
    # WhiteNoise warns once per process when `collectstatic` has not run; tests serve no files.
    config.addinivalue_line("filterwarnings", "ignore:No directory at:UserWarning")


@pytest.fixture(autouse=True)
async def _isolated_generations() -> AsyncIterator[None]:
    """A fresh stream log per test; at the end, no generation left running."""
    get_stream_log.cache_clear()
    if isinstance(caches["default"], LocMemCache):
        cache.clear()  # rate-limit counters; never clear a shared (Redis) cache
    yield
    leftover = list(generation._running.values())
    for running in leftover:
        running.cancel("interrupted")
    tasks = [running.task for running in leftover if running.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    get_stream_log.cache_clear()


@pytest.fixture(autouse=True)
def _chat_settings(settings: Any) -> None:
    """A demo model fast enough that a whole answer takes a few hundredths of a second."""
    settings.CHAT_DEMO_TOKENS_PER_SECOND = 5000
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
