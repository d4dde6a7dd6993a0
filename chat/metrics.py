"""Prometheus metrics of the streaming path, served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAMS_STARTED = Counter("chat_streams_started", "Generations started.", ["model"])
STREAMS_FINISHED = Counter(
    "chat_streams_finished", "Generations finished, by terminal status.", ["model", "status"]
)
STREAMS_ACTIVE = Gauge("chat_streams_active", "Generations running in this process.")
TTFT_SECONDS = Histogram(
    "chat_time_to_first_token_seconds",
    "From the generation's start to the provider's first text.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
STREAM_SECONDS = Histogram(
    "chat_stream_duration_seconds",
    "From the generation's start to its end.",
    ["model", "status"],
    buckets=(0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
)
TOKENS_RELAYED = Counter(
    "chat_completion_tokens", "Completion tokens the providers reported.", ["model"]
)
CHARS_RELAYED = Counter("chat_relayed_chars", "Characters of answers written to the stream log.")
PROVIDER_ERRORS = Counter("chat_provider_errors", "Generations that ended in an error.", ["code"])
