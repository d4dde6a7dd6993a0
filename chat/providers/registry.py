"""The models on offer, from `CHAT_MODELS`, and the provider that serves each."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from django.conf import settings

from chat.providers.base import Provider
from chat.providers.demo import DemoProvider

if TYPE_CHECKING:
    from chat.providers.anthropic import AnthropicProvider
    from chat.providers.openai import OpenAIProvider

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    id: str  # "provider:model", as in CHAT_MODELS
    provider: str
    model: str

    @property
    def label(self) -> str:
        return "Demo" if self.provider == "demo" else self.model


def _provider_available(name: str) -> bool:
    """Whether the provider is configured. A base URL alone is enough for `openai`: local
    OpenAI-compatible servers (Ollama, llama.cpp, vLLM) usually take no key."""
    if name == "openai":
        return bool(settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL)
    if name == "anthropic":
        return bool(settings.ANTHROPIC_API_KEY)
    return name == "demo"


def available_models() -> list[ModelChoice]:
    """The entries of CHAT_MODELS whose provider is configured, in the order given."""
    choices = []
    for entry in settings.CHAT_MODELS:
        provider, sep, model = entry.partition(":")
        if not sep or not model:
            logger.warning("ignoring CHAT_MODELS entry %r: expected provider:model", entry)
            continue
        if _provider_available(provider):
            choices.append(ModelChoice(entry, provider, model))
        else:
            logger.warning(
                "model %r is not offered: provider %r is not configured", entry, provider
            )
    return choices


def model_choice(model_id: str) -> ModelChoice | None:
    return next((choice for choice in available_models() if choice.id == model_id), None)


def default_model() -> str:
    choices = available_models()
    ids = [choice.id for choice in choices]
    if settings.CHAT_DEFAULT_MODEL in ids:
        return str(settings.CHAT_DEFAULT_MODEL)
    return ids[0] if ids else "demo:demo"


def provider_for(choice: ModelChoice) -> Provider:
    # The SDKs take seconds to import: only processes that use them pay (see warm_up).
    if choice.provider == "demo":
        return DemoProvider()
    if choice.provider == "openai":
        from chat.providers.openai import OpenAIProvider

        return _sdk_provider(
            OpenAIProvider, settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL, *_timeouts()
        )
    if choice.provider == "anthropic":
        from chat.providers.anthropic import AnthropicProvider

        return _sdk_provider(
            AnthropicProvider, settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL, *_timeouts()
        )
    raise LookupError(f"no provider named {choice.provider!r}")


def warm_up() -> None:
    """Import the SDKs of the providers on offer now, at server start, rather than
    during somebody's first answer."""
    for choice in available_models():
        if choice.provider != "demo":
            provider_for(choice)


def _timeouts() -> tuple[float, float]:
    return settings.CHAT_PROVIDER_CONNECT_TIMEOUT, settings.CHAT_PROVIDER_READ_TIMEOUT


@cache
def _sdk_provider(
    kind: type[OpenAIProvider | AnthropicProvider],
    api_key: str,
    base_url: str,
    *timeouts: float,
) -> Provider:
    """One provider, and so one pooled SDK client, per configuration for the process.

    The timeouts are part of the key only because the client is built with them.
    """
    return kind(api_key=api_key, base_url=base_url)
