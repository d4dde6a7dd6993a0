"""The models on offer, from `CHAT_MODELS`, and the provider that serves each."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings

from chat.providers.base import Provider
from chat.providers.demo import DemoProvider

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    id: str  # "provider:model", as in CHAT_MODELS
    provider: str
    model: str

    @property
    def label(self) -> str:
        return "Demo (offline)" if self.provider == "demo" else self.model


def _provider_available(name: str) -> bool:
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
    if choice.provider == "demo":
        return DemoProvider()
    raise LookupError(f"no provider named {choice.provider!r}")
