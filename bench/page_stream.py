"""What a long answer costs the page: bytes on the wire and the browser's main-thread time.

Streams one 4,000-token Markdown answer at 100 tokens/s from a fake OpenAI upstream through
the app (daphne, its own process) into Chromium, and reports:

- bytes of the answer's event stream per byte of the answer (live formatting included),
  read by a second reader of the same stream;
- the page's main-thread time while the answer streams (Chromium's performance metrics:
  tasks, scripts, layout, style), in total and per second of streaming.

    uv run python bench/page_stream.py [--tokens 4000] [--rate 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.fakes.base import Script  # noqa: E402
from tests.fakes.openai_server import OpenAIServer  # noqa: E402
from tests.processes import free_port, stop_process  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = secrets.token_urlsafe(16)
WORDS = [
    *("stream", "token", "answer", "block", "server", "reader", "browser", "frame", "latency"),
    *("python", "django", "render", "markdown", "table", "list", "code", "event", "socket"),
    *("proxy", "cache", "queue", "worker", "model", "prompt"),
]


def markdown_tokens(count: int, seed: int = 4) -> list[str]:
    """About `count` token-sized deltas of varied Markdown: prose, lists, code, tables."""
    rng = random.Random(seed)
    tokens: list[str] = []

    def words(n: int) -> list[str]:
        return [" " + rng.choice(WORDS) for _ in range(n)]

    while len(tokens) < count:
        kind = rng.random()
        if kind < 0.45:
            tokens += ["The", *words(rng.randint(20, 60)), ".", "\n\n"]
        elif kind < 0.65:
            for _ in range(rng.randint(2, 5)):
                tokens += ["- ", "**item**", *words(rng.randint(4, 12)), "\n"]
            tokens.append("\n")
        elif kind < 0.85:
            tokens += ["```python\n"]
            for _ in range(rng.randint(3, 12)):
                tokens += ["def", " f", "(x", "):", " return", " x", " *", " 2", "\n"]
            tokens += ["```\n\n"]
        else:
            tokens += ["| a | b |\n", "|---|---|\n"]
            for _ in range(rng.randint(2, 6)):
                tokens += ["|", *words(2), " |", *words(2), " |\n"]
            tokens.append("\n")
    return tokens[:count]


def start_app(upstream: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=f"sqlite:///{directory / 'bench.sqlite3'}",
        REDIS_URL="",
        CHAT_MODELS="openai:bench",
        OPENAI_BASE_URL=f"{upstream}/v1",
        OPENAI_API_KEY="sk-bench",
        CHAT_MAX_OUTPUT_TOKENS="100000",
        CHAT_ABANDON_AFTER="0",
    )
    for command in (["migrate", "--no-input"], ["collectstatic", "--no-input"]):
        subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "chatsite.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.1)
    stop_process(process)
    raise SystemExit("the app did not start")


def count_stream_bytes(url: str, path: str, cookie: str, into: dict[str, int]) -> None:
    """Read one event stream to its end; record its body's size and the answer's length."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("GET", path, headers={"Cookie": cookie, "Accept": "text/event-stream"})
    response = connection.getresponse()
    body = b""
    while chunk := response.read1(65536):
        body += chunk
    connection.close()
    into["wire"] = len(body)
    for block in body.decode().split("\n\n"):
        if block.startswith("id:") and "event: final" in block:
            data = json.loads(block.split("data: ", 1)[1])
            into["answer"] = len(data["content"].encode())
            into["html"] = len(data["html"].encode())
    into["events"] = body.count(b"\nevent: token\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second")
    args = parser.parse_args()

    deltas = markdown_tokens(args.tokens)
    with tempfile.TemporaryDirectory() as tmp, OpenAIServer() as upstream:
        upstream.script = Script(deltas=deltas, interval=1 / args.rate)
        app, url = start_app(upstream.url, Path(tmp))
        try:
            report = measure(url, args)
        finally:
            stop_process(app)
    print(json.dumps(report, indent=2))


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 800})
        page.goto("/accounts/signup/")
        page.get_by_label("Username").fill(f"bench-{secrets.token_hex(4)}")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password confirmation").fill(PASSWORD)
        page.get_by_role("button", name="Sign up").click()
        page.get_by_role("textbox", name="Message").fill("A long answer, please.")
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())

        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def metrics() -> dict[str, float]:
            values = cdp.send("Performance.getMetrics")["metrics"]
            return {m["name"]: m["value"] for m in values}

        # The page's own cost at rest (caret, timers), to set against the streaming cost.
        idle_start = metrics()
        page.wait_for_timeout(5000)
        before = metrics()
        idle_ms_per_second = (before["TaskDuration"] - idle_start["TaskDuration"]) * 1000 / 5
        started = time.monotonic()
        page.get_by_role("button", name="Send").click()
        answer = page.get_by_role("log").get_by_role("article", name="Assistant").last
        answer.wait_for()
        stream_path = answer.get_attribute("data-stream-url") or ""
        wire: dict[str, int] = {}
        reader = threading.Thread(target=count_stream_bytes, args=(url, stream_path, cookie, wire))
        reader.start()
        page.wait_for_function(
            "(a) => a.getAttribute('aria-busy') === 'false'",
            arg=answer.element_handle(),
            timeout=(args.tokens / args.rate + 60) * 1000,
        )
        seconds = time.monotonic() - started
        after = metrics()
        reader.join(60)
        browser.close()

    def spent(name: str) -> float:
        return round((after[name] - before[name]) * 1000, 1)

    main_thread_ms = spent("TaskDuration")
    return {
        "tokens": args.tokens,
        "tokens_per_second": args.rate,
        "streaming_seconds": round(seconds, 1),
        "answer_bytes": wire.get("answer"),
        "stream_bytes": wire.get("wire"),
        "stream_bytes_per_answer_byte": round(wire["wire"] / wire["answer"], 2)
        if wire.get("answer")
        else None,
        "final_html_bytes": wire.get("html"),
        "token_events": wire.get("events"),
        "main_thread_ms": main_thread_ms,
        "main_thread_ms_per_second": round(main_thread_ms / seconds, 1),
        "idle_main_thread_ms_per_second": round(idle_ms_per_second, 1),
        "script_ms": spent("ScriptDuration"),
        "layout_ms": spent("LayoutDuration"),
        "style_ms": spent("RecalcStyleDuration"),
    }


if __name__ == "__main__":
    main()
