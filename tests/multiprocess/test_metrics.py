"""/metrics with several server processes: any process answers with the sum of all."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.multiprocess.conftest import Client, Cluster, Server

pytestmark = pytest.mark.multiprocess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MODEL = {"model": "openai:fake-model"}
STOPPED = {**MODEL, "status": "stopped"}


def scrape(cluster: Cluster, server: Server) -> Samples:
    request = urllib.request.Request(
        f"{server.url}/metrics",
        headers={"Authorization": f"Bearer {cluster.env['METRICS_TOKEN']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_either_process_serves_the_streams_of_both(
    user: Client, a: Server, b: Server, cluster: Cluster
) -> None:
    before = scrape(cluster, a)
    assert scrape(cluster, b) == before  # one set of figures, whoever answers

    answers = [user.send(a, "Count to a thousand"), user.send(b, "Count to a thousand")]
    for server, answer in zip((a, b), answers, strict=True):
        user.read(server, answer["id"], stop_when=lambda events: len(events) >= 4)
        assert user.post(server, f"/api/messages/{answer['id']}/stop").status_code == 200

    def grew(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    deadline = time.monotonic() + 20
    while True:
        seen = [scrape(cluster, server) for server in (a, b)]
        settled = all(
            grew(samples, "chat_streams_finished_total", **STOPPED) == 2
            and value(samples, "chat_streams_active") == 0
            for samples in seen
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for samples in seen:
        assert grew(samples, "chat_streams_started_total", **MODEL) == 2
        assert grew(samples, "chat_streams_finished_total", **STOPPED) == 2
        assert grew(samples, "chat_time_to_first_token_seconds_count", **MODEL) == 2
        assert grew(samples, "chat_stream_duration_seconds_count", **STOPPED) == 2
        # A process killed mid-answer (another test does) no longer counts as streaming.
        assert value(samples, "chat_streams_active") == 0
