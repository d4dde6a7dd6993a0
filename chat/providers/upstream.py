"""What the SDK-backed providers share: client timeouts and the wording of upstream errors.

Upstream error texts are never passed on whole: some quote the API key (OpenAI's 401
names part of it). Codes come from statuses and error types, the messages are ours, and
the little upstream text kept (why a request was refused) has the key cut out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Mapping
from weakref import WeakKeyDictionary

import aiohttp
import httpx2
from django.conf import settings

from chat.providers.base import ProviderError

logger = logging.getLogger(__name__)

_CONTEXT_WORDING = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|prompt is too long|too many tokens",
    re.IGNORECASE,
)
_SERVER_KINDS = ("overloaded", "api_error", "server_error")
_AUTH_KINDS = ("authentication", "permission", "invalid_api_key", "unauthorized")


def client_timeout() -> httpx2.Timeout:
    """Fail fast on connect; a stream may pause at most CHAT_PROVIDER_READ_TIMEOUT between
    reads (headers included), so an upstream that sends headers and then nothing ends."""
    return httpx2.Timeout(
        settings.CHAT_PROVIDER_READ_TIMEOUT, connect=settings.CHAT_PROVIDER_CONNECT_TIMEOUT
    )


# The HTTP clients made on each event loop, so that they can be closed with it.
_http_clients: WeakKeyDictionary[asyncio.AbstractEventLoop, list[httpx2.AsyncClient]] = (
    WeakKeyDictionary()
)


def http_client[C: httpx2.AsyncClient](kind: Callable[..., C]) -> C:
    """A pooled HTTP client for an SDK on the running loop.

    `kind` is the SDK's `DefaultAioHttpClient`: the SDK's own transport over aiohttp,
    whose C parser and always-reading socket cost about half of what the default
    transport (httpx2, anyio) costs per streamed chunk.
    """
    client = kind(timeout=client_timeout())
    _http_clients.setdefault(asyncio.get_running_loop(), []).append(client)
    return client


async def close_http_clients() -> None:
    """Close the clients of the running loop. Servers never need this (they exit);
    tests, which run one event loop each, do."""
    for client in _http_clients.pop(asyncio.get_running_loop(), []):
        await client.aclose()


def transport_failure(error: BaseException) -> ProviderError | None:
    """The error for a provider that could not be reached or stopped answering, if that
    is what `error` comes from.

    Read from aiohttp's own exception under the SDK's: the SDK's aiohttp transport maps
    every connection error, a refused connection included, to a connect timeout.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, aiohttp.ServerTimeoutError):
            return timed_out()
        if isinstance(cause, aiohttp.ClientError):
            return broken()
        cause = cause.__cause__
    return None


def redact(text: str, secret: str, limit: int = 300) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(headers: Mapping[str, str] | None) -> int | None:
    """Whole seconds from `retry-after-ms` or `retry-after` (seconds form), if any."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name) or "nan") / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return math.ceil(seconds)
    return None


def classify(
    *,
    status: int | None,
    kind: str,
    text: str,
    secret: str,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """A ProviderError for an upstream error answer (`status`) or in-stream error (None).

    `kind` is the provider's error type and code, `text` its explanation.
    """
    kind = kind.lower()
    if status == 429 or "rate_limit" in kind or "quota" in kind:
        if "insufficient_quota" in kind:
            return ProviderError(
                "rate_limited", "The model provider account is out of quota.", retryable=False
            )
        wait = retry_after(headers)
        after = f"retry after {wait} s" if wait is not None else "try again in a moment"
        return ProviderError("rate_limited", f"The model provider is rate limiting; {after}.")
    if status in (401, 403) or any(word in kind for word in _AUTH_KINDS):
        return ProviderError(
            "auth", "The model provider refused this server's credentials.", retryable=False
        )
    if "content_filter" in kind or "content_policy" in kind:
        return content_filtered()
    if status == 413 or "too_large" in kind or "context_length" in kind:
        return context_too_long()
    if _CONTEXT_WORDING.search(text):
        return context_too_long()
    if status in (408, 504) or "timeout" in kind:
        return timed_out()
    if status is None or status >= 500 or any(word in kind for word in _SERVER_KINDS):
        where = f" (HTTP {status})" if status else ""
        return ProviderError("upstream", f"The model provider failed{where}; try again.")
    return ProviderError(
        "internal",
        f"The model provider refused the request (HTTP {status}): {redact(text, secret)}",
        retryable=False,
    )


def timed_out() -> ProviderError:
    return ProviderError("timeout", "The model provider stopped answering in time.")


def broken(what: str = "The connection to the model provider broke off") -> ProviderError:
    return ProviderError("upstream", f"{what}; try again.")


def context_too_long() -> ProviderError:
    return ProviderError(
        "context_length", "The conversation is too long for this model.", retryable=False
    )


def content_filtered() -> ProviderError:
    return ProviderError(
        "content_filter",
        "The model provider's content filter stopped this answer.",
        retryable=False,
    )


def log_failure(provider: str, error: Exception, secret: str) -> None:
    """One line for operators: the upstream's own words, with the key cut out."""
    detail = redact(str(error), secret)
    logger.warning("%s call failed: %s: %s", provider, type(error).__name__, detail)
