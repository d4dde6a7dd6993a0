"""One async interface for every model provider, and one error taxonomy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

ErrorCode = Literal[
    "rate_limited", "auth", "timeout", "upstream", "context_length", "content_filter", "internal"
]

RETRYABLE: frozenset[str] = frozenset({"rate_limited", "timeout", "upstream", "internal"})


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    system_prompt: str
    turns: tuple[Turn, ...]
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str


StreamItem = TextDelta | Usage | Finish


class ProviderError(Exception):
    """A failure of the model provider, already classified for the user."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retryable = code in RETRYABLE if retryable is None else retryable


class Provider(ABC):
    """Streams one answer. Closing the iterator early must close the upstream request."""

    name: str

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem]: ...

    async def complete(self, request: ChatRequest) -> str:
        """The whole text of a short answer that nobody watches arrive (a title, say)."""
        parts: list[str] = []
        stream = self.stream(request)
        try:
            async for item in stream:
                if isinstance(item, TextDelta):
                    parts.append(item.text)
        finally:
            await stream.aclose()
        return "".join(parts)
