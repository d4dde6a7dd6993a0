"""Prometheus metrics of the streaming path, served at /metrics.

One process (the default) serves its own registry. Several server processes on one
machine share their figures through prometheus-client's multiprocess mode: with
`PROMETHEUS_MULTIPROC_DIR` set (before the first import of prometheus-client; `.env`
counts) every process writes its values to files there, and whichever process answers
/metrics sums them all. See docs/deploy.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    directory = os.environ.get(MULTIPROC_DIR_VARIABLE, "").strip()
    return Path(directory) if directory else None


if (_directory := multiprocess_dir()) is not None:
    # Metrics without labels write their file as they are defined, just below.
    _directory.mkdir(parents=True, exist_ok=True)


STREAMS_STARTED = Counter("chat_streams_started", "Generations started.", ["model"])
STREAMS_FINISHED = Counter(
    "chat_streams_finished", "Generations finished, by terminal status.", ["model", "status"]
)
STREAMS_ACTIVE = Gauge(
    "chat_streams_active",
    "Generations running now (in multiprocess mode, summed over live processes).",
    multiprocess_mode="livesum",
)
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

# prometheus-client names each process's files `<kind>_<pid>.db`; live gauges
# `gauge_live<mode>_<pid>.db`.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def prune_dead_processes(directory: Path) -> list[int]:
    """Forget the live gauges of processes that are gone (killed ones included).

    A process cannot clean up after a SIGKILL, and daphne has no exit hook, so the
    process answering a scrape does it: without this, a crashed process's running
    streams would count as active for ever. Counters and histograms of dead
    processes are kept: they are totals. Returns the pids marked dead.
    """
    dead = set()
    for path in directory.glob("gauge_live*_*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in sorted(dead):
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return sorted(dead)


def exposition() -> bytes:
    """Prometheus text: this process's metrics, or in multiprocess mode every process's."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    prune_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry)
