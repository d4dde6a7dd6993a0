"""What the app costs between a real provider and the browser, measured end to end.

The app runs under daphne in a subprocess (DEBUG off, SQLite in a temporary directory),
configured with the `openai` provider pointed at the fake OpenAI server of `tests/fakes`,
which runs in this process. Clients read the SSE stream with httpx2. Two numbers:

1. added latency: from the moment the fake upstream sent its first delta to the moment
   the client has the first `token` event (both `time.monotonic()`, one clock);
2. server CPU per 1,000 relayed tokens (utime + stime of the daphne process from
   /proc/<pid>/stat) with every stream fed at `--rate` tokens/s.

    .venv/bin/python bench/provider_relay.py [--streams 20] [--tokens 250] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import OpenAIServer, Script  # noqa: E402

CSRF = secrets.token_hex(16)  # 32 characters: a valid unmasked CSRF secret
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


SESSION_CODE = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
user = get_user_model().objects.create_user("bench")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


class App:
    def __init__(self, upstream: OpenAIServer, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "CHAT_MODELS": "openai:bench-model",
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"{upstream.url}/v1",
            "CHAT_RATE_LIMIT_PER_MINUTE": "0",
            "CHAT_MAX_CONCURRENT_STREAMS": "0",
            "CHAT_ABANDON_AFTER": "0",
        }
        self.env.pop("REDIS_URL", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        manage(self.env, "migrate", "--no-input")
        session_key = manage(self.env, "shell", "-c", SESSION_CODE).splitlines()[-1]
        daphne = str(Path(sys.executable).parent / "daphne")
        self.process = subprocess.Popen(
            [daphne, "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{self.url}/healthz").status_code == 200:
                    return session_key
            except httpx2.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("daphne did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


async def ask(client: httpx2.AsyncClient) -> str:
    """A new conversation and a message in it; the stream URL of the answer."""
    created = await client.post("/api/conversations", json={})
    created.raise_for_status()
    sent = await client.post(
        f"/api/conversations/{created.json()['id']}/messages", json={"content": "Go"}
    )
    sent.raise_for_status()
    return str(sent.json()["stream_url"])


async def read_stream(client: httpx2.AsyncClient, url: str) -> tuple[float | None, str]:
    """(when the first `token` event arrived, the final content)."""
    first_token: float | None = None
    event = ""
    async with client.stream("GET", url) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "token" and first_token is None:
                    first_token = time.monotonic()
                if event == "final":
                    return first_token, str(json.loads(line[6:])["content"])
    raise RuntimeError("the stream ended without `final`")


async def measure_latency(
    client: httpx2.AsyncClient, upstream: OpenAIServer, runs: int
) -> list[float]:
    """Milliseconds from the upstream's first delta to the client's first token event."""
    # The reader is connected well before the first delta, as a browser is.
    upstream.script = Script(deltas=[" word"] * 20, first_delta_delay=0.3, interval=0.02)
    added: list[float] = []
    for _ in range(runs):
        before = len(upstream.requests)
        url = await ask(client)
        first_token, content = await read_stream(client, url)
        request = upstream.requests[before]
        assert first_token is not None and content == " word" * 20
        added.append((first_token - request.delta_times[0]) * 1000)
    return added


async def measure_cpu(
    client: httpx2.AsyncClient,
    upstream: OpenAIServer,
    pid: int,
    streams: int,
    tokens: int,
    rate: float,
) -> dict[str, float]:
    upstream.script = Script(deltas=[" tok"] * tokens, interval=1 / rate, first_delta_delay=0.2)
    await asyncio.sleep(1.0)
    idle_from = cpu_seconds(pid)
    await asyncio.sleep(2.0)
    idle_per_second = (cpu_seconds(pid) - idle_from) / 2.0

    cpu_from, wall_from = cpu_seconds(pid), time.monotonic()
    urls = await asyncio.gather(*(ask(client) for _ in range(streams)))
    results = await asyncio.gather(*(read_stream(client, url) for url in urls))
    cpu, wall = cpu_seconds(pid) - cpu_from, time.monotonic() - wall_from
    assert all(content == " tok" * tokens for _first, content in results)
    relayed = streams * tokens
    return {
        "streams": streams,
        "tokens": relayed,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_1000_tokens": cpu * 1000 / (relayed / 1000),
        "idle_cpu_ms_per_s": idle_per_second * 1000,
        "cpu_ms_per_1000_tokens_minus_idle": (cpu - idle_per_second * wall) * 1e6 / relayed,
    }


async def main(args: argparse.Namespace) -> None:
    with OpenAIServer() as upstream, tempfile.TemporaryDirectory() as workdir:
        app = App(upstream, Path(workdir))
        session_key = app.start()
        try:
            assert app.process is not None
            async with httpx2.AsyncClient(
                base_url=app.url,
                cookies={"sessionid": session_key, "csrftoken": CSRF},
                headers={"X-CSRFToken": CSRF},
                timeout=60,
                limits=httpx2.Limits(max_connections=4 * args.streams + 10),
            ) as client:
                await measure_latency(client, upstream, 3)  # warm up
                added = await measure_latency(client, upstream, args.latency_runs)
                cpu = await measure_cpu(
                    client, upstream, app.process.pid, args.streams, args.tokens, args.rate
                )
        finally:
            app.stop()
    added.sort()
    print(
        f"added latency, upstream first delta -> client first token ({len(added)} runs): "
        f"median {statistics.median(added):.2f} ms, "
        f"p90 {added[int(len(added) * 0.9) - 1]:.2f} ms, max {added[-1]:.2f} ms"
    )
    print(
        f"server CPU at {args.rate:g} tokens/s per stream, {cpu['streams']:.0f} streams x "
        f"{args.tokens} tokens ({cpu['wall_s']:.1f} s): "
        f"{cpu['cpu_ms_per_1000_tokens']:.1f} ms CPU per 1,000 tokens "
        f"({cpu['cpu_ms_per_1000_tokens_minus_idle']:.1f} ms without the idle "
        f"{cpu['idle_cpu_ms_per_s']:.2f} ms/s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=250, help="tokens per stream")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens/s per stream")
    parser.add_argument("--latency-runs", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
