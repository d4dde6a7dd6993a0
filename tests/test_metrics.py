"""/metrics after real generations: counters, histograms, the active gauge, several processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from chat.providers.base import ProviderError, Usage
from tests.helpers import BLOCK, ChatApi, ScriptedProvider, eventually

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
DEMO = {"model": "demo:demo"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(autouse=True)
def _token(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN


async def scrape(api: ChatApi) -> Samples:
    response = await api.get("/metrics", headers=BEARER)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


@pytest.mark.django_db(transaction=True)
async def test_a_finished_stream_shows_in_the_counters_and_histograms(api: ChatApi) -> None:
    before = await scrape(api)

    answer = await api.ask("Tell me something")
    stream = await api.read(answer["id"])
    message = await api.finished(answer["id"])
    after = await scrape(api)

    assert stream.final is not None and stream.final["status"] == "complete"

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    complete = {**DEMO, "status": "complete"}
    assert grew("chat_streams_started_total", **DEMO) == 1
    assert grew("chat_streams_finished_total", **complete) == 1
    assert value(after, "chat_streams_active") == value(before, "chat_streams_active")
    assert grew("chat_time_to_first_token_seconds_count", **DEMO) == 1
    assert grew("chat_time_to_first_token_seconds_sum", **DEMO) == pytest.approx(
        message["ttft_ms"] / 1000, abs=0.002
    )
    assert grew("chat_time_to_first_token_seconds_bucket", **DEMO, le="+Inf") == 1
    assert grew("chat_stream_duration_seconds_count", **complete) == 1
    assert grew("chat_stream_duration_seconds_sum", **complete) == pytest.approx(
        message["duration_ms"] / 1000, abs=0.002
    )
    assert grew("chat_completion_tokens_total", **DEMO) == message["usage"]["completion_tokens"]
    assert message["usage"]["completion_tokens"] > 0
    assert grew("chat_relayed_chars_total") == len(message["content"])


@pytest.mark.django_db(transaction=True)
async def test_a_provider_error_is_counted_by_its_code(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Half an ans", ProviderError("rate_limited", "Slow down.", retryable=True)]
    before = await scrape(api)

    answer = await api.ask(model=scripted.model_id)
    message = await api.finished(answer["id"])
    after = await scrape(api)

    failed = {"model": scripted.model_id, "status": "error"}
    assert message["status"] == "error"
    assert (
        value(after, "chat_provider_errors_total", code="rate_limited")
        - value(before, "chat_provider_errors_total", code="rate_limited")
        == 1
    )
    assert (
        value(after, "chat_streams_finished_total", **failed)
        - value(before, "chat_streams_finished_total", **failed)
        == 1
    )
    assert (
        value(after, "chat_stream_duration_seconds_count", **failed)
        - value(before, "chat_stream_duration_seconds_count", **failed)
        == 1
    )


@pytest.mark.django_db(transaction=True)
async def test_active_streams_count_running_generations(
    api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Thinking", Usage(3, 1), BLOCK]
    before = value(await scrape(api), "chat_streams_active")

    first = await api.ask(model=scripted.model_id)
    second = await api.ask(model=scripted.model_id)
    await eventually(lambda: len(scripted.runs) == 2 and all(r.yielded for r in scripted.runs))
    running = value(await scrape(api), "chat_streams_active")
    await api.stop(first["id"])
    await api.stop(second["id"])
    await api.finished(first["id"])
    await api.finished(second["id"])
    after = await scrape(api)

    assert running - before == 2
    assert value(after, "chat_streams_active") == before
    stopped = {"model": scripted.model_id, "status": "stopped"}
    assert value(after, "chat_streams_finished_total", **stopped) >= 2


# --- Several processes ---------------------------------------------------------------

# A stand-in for a server process: counts one finished stream and one running, then waits.
WORKER = """
import sys
from chat import metrics
metrics.STREAMS_STARTED.labels("demo:demo").inc()
metrics.STREAMS_FINISHED.labels("demo:demo", "complete").inc()
metrics.TTFT_SECONDS.labels("demo:demo").observe(0.2)
metrics.STREAMS_ACTIVE.inc()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "prometheus"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    return directory


@pytest.fixture
def workers(multiproc_dir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=ROOT,
            env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "PATH": ""},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
    for process in started:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_multiprocess_mode_sums_every_process_and_forgets_dead_ones(
    client: Client, workers: list[subprocess.Popen[str]]
) -> None:
    def scraped() -> Samples:
        response = client.get("/metrics", headers=BEARER)
        assert response.status_code == 200
        return parse(response.content.decode())

    both = scraped()
    assert value(both, "chat_streams_started_total", **DEMO) == 2
    assert value(both, "chat_time_to_first_token_seconds_count", **DEMO) == 2
    assert value(both, "chat_streams_active") == 2

    # A process killed mid-stream cannot say so: the scrape finds it gone.
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait(timeout=10)
    one = scraped()
    assert value(one, "chat_streams_active") == 1
    assert value(one, "chat_streams_started_total", **DEMO) == 2  # totals stay

    assert workers[1].stdin is not None
    workers[1].stdin.close()
    workers[1].wait(timeout=10)
    none = scraped()
    assert value(none, "chat_streams_active") == 0
    assert value(none, "chat_streams_finished_total", **DEMO, status="complete") == 2


def test_an_empty_multiprocess_directory_means_one_process() -> None:
    """As when `.env.example` is copied with the variable left blank."""
    code = (
        "import django; django.setup()\n"
        "from chat import metrics\n"
        "from prometheus_client import values\n"
        "print(values.ValueClass.__name__, metrics.multiprocess_dir())\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    env = {**clean, "DJANGO_SETTINGS_MODULE": "chatsite.settings", "DJANGO_DEBUG": "1"}

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "PROMETHEUS_MULTIPROC_DIR": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MutexValue", "None"]
