"""Two real server processes sharing PostgreSQL and Redis, as a scaled deployment runs.

The tests need PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres) and Redis on
127.0.0.1:6379. Each run gets its own database and its own Redis key prefix.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
import redis

from tests.fakes.base import Script
from tests.fakes.openai_server import OpenAIServer
from tests.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"
DAPHNE = [sys.executable, "-m", "daphne"]

pytestmark = pytest.mark.multiprocess


def _services_up() -> str | None:
    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except Exception as error:
        return f"PostgreSQL and Redis are needed: {error}"
    return None


@pytest.fixture(autouse=True)
def _isolated_generations() -> None:
    """Overrides the in-process fixture: generations run in the server processes."""


@pytest.fixture(autouse=True)
def _chat_settings() -> None:
    """Overrides the in-process fixture: the servers have their own settings."""


@pytest.fixture(scope="session")
def services() -> None:
    problem = _services_up()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Cluster:
    env: dict[str, str]
    upstream: OpenAIServer
    directory: Path
    servers: list[Server]

    def start(self, name: str) -> Server:
        port = free_port()
        log = self.directory / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*DAPHNE, "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        server = Server(name, f"http://127.0.0.1:{port}", process, log)
        self.servers.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{server.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return server
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        server.stop()
        pytest.fail(f"server {name} did not become ready:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def cluster(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    database = f"chat_mp_{secrets.token_hex(4)}"
    prefix = f"chat-test-{secrets.token_hex(4)}:"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    upstream = OpenAIServer(Script(deltas=[f"word{i} " for i in range(400)], interval=0.02))
    upstream.start()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CHAT_", "REDIS_", "DATABASE_", "OPENAI_", "ANTHROPIC_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_HTTPS="0",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
        REDIS_URL=REDIS,
        CHAT_REDIS_PREFIX=prefix,
        CHAT_MODELS="openai:fake-model,demo:demo",
        CHAT_DEFAULT_MODEL="openai:fake-model",
        OPENAI_BASE_URL=f"{upstream.url}/v1",
        OPENAI_API_KEY="sk-test-multiprocess",
        CHAT_HEARTBEAT_STALE_AFTER="3",
        CHAT_RATE_LIMIT_PER_MINUTE="0",
        CHAT_MAX_CONCURRENT_STREAMS="0",
        CHAT_ABANDON_AFTER="0",
        # A title request would be one more upstream request among those the tests count.
        CHAT_TITLES="0",
        PYTHONUNBUFFERED="1",
        # Every server process writes its metrics here; any of them serves the sum.
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path_factory.mktemp("prometheus")),
        METRICS_TOKEN=secrets.token_urlsafe(16),
    )
    # The servers run as in production: pages link the collected, hashed static files.
    for command in (["migrate", "--no-input", "-v0"], ["collectstatic", "--no-input", "-v0"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, timeout=180
        )
    running = Cluster(env, upstream, tmp_path_factory.mktemp("cluster"), [])
    try:
        yield running
    finally:
        for server in running.servers:
            server.stop()
        upstream.stop()
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


@pytest.fixture(scope="session")
def a(cluster: Cluster) -> Server:
    return cluster.start("a")


@pytest.fixture(scope="session")
def b(cluster: Cluster) -> Server:
    return cluster.start("b")


class Client:
    """One signed-in user; the session cookie is valid on every server of the cluster."""

    def __init__(self, first: Server) -> None:
        self.http = httpx.Client(timeout=30)
        signup = f"{first.url}/accounts/signup/"
        self.http.get(signup)
        password = secrets.token_urlsafe(16)
        answer = self.http.post(
            signup,
            data={
                "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
                "username": f"user-{secrets.token_hex(4)}",
                "password1": password,
                "password2": password,
            },
        )
        assert answer.status_code == 302, answer.text

    def post(self, server: Server, path: str, body: Any = None) -> httpx.Response:
        headers = {"X-CSRFToken": self.http.cookies["csrftoken"]}
        return self.http.post(f"{server.url}{path}", json=body or {}, headers=headers)

    def send(self, server: Server, content: str = "Hello", **conversation: Any) -> dict[str, Any]:
        created = self.post(server, "/api/conversations", conversation)
        assert created.status_code == 201, created.text
        sent = self.post(
            server, f"/api/conversations/{created.json()['id']}/messages", {"content": content}
        )
        assert sent.status_code == 201, sent.text
        message: dict[str, Any] = sent.json()["assistant_message"]
        return message

    def message(self, server: Server, message_id: str) -> dict[str, Any]:
        answer = self.http.get(f"{server.url}/api/messages/{message_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def read(
        self,
        server: Server,
        message_id: str,
        *,
        after: int | None = None,
        header: bool = False,
        stop_when: Callable[[list[dict[str, Any]]], bool] = lambda events: False,
    ) -> list[dict[str, Any]]:
        """Events of the stream (each `{"id", "event", "data"}`), until final or `stop_when`."""
        url = f"{server.url}/api/messages/{message_id}/stream"
        headers = {}
        if after is not None and header:
            headers["Last-Event-ID"] = str(after)
        elif after is not None:
            url += f"?after={after}"
        events: list[dict[str, Any]] = []
        with self.http.stream("GET", url, headers=headers, timeout=90) as response:
            assert response.status_code == 200, response.read()
            current: dict[str, Any] = {}
            for line in response.iter_lines():
                if line.startswith("id: "):
                    current["id"] = int(line[4:])
                elif line.startswith("event: "):
                    current["event"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif line == "" and "event" in current:
                    events.append(current)
                    current = {}
                    if events[-1]["event"] == "final" or stop_when(events):
                        break
        return events


@pytest.fixture(scope="session")
def user(a: Server) -> Client:
    return Client(a)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == "token")
