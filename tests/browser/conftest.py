"""Browser tests: Debian's Chromium, driven by Playwright, against a real daphne server.

The server runs in its own process, exactly as in production (DEBUG off, whitenoise serving
the collected static files, a throwaway SQLite database), and users sign up through the
sign-up page like anybody else.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.html import Elements
from tests.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Fast enough that a whole demo answer (about 165 tokens) takes ~3 s, slow enough that a
# test can reliably catch it mid-answer.
TOKENS_PER_SECOND = 50
# The first token of this server's answers arrives only after 1 / 0.5 = 2 s.
SLOW_TOKENS_PER_SECOND = 0.5
PASSWORD = "correct-horse-battery-staple-42"

# Every assertion waits at most this long unless it says otherwise.
expect.set_options(timeout=10_000)


def demo_answer(prompt: str) -> str:
    """The exact answer the demo model gives to `prompt` (it depends only on the prompt)."""
    from chat.providers.demo import _ANSWERS

    digest = hashlib.sha256(prompt.encode()).digest()
    return _ANSWERS[digest[0] % len(_ANSWERS)]


# --- What an answer shows while it streams -------------------------------------------

# Samples an answer while it is written, until it is final, each time what it shows
# changes: the formatted blocks (their text, and where they end in the answer) and the
# plain-text tail after them.
SAMPLE_ANSWER = """(article) => new Promise((resolve, reject) => {
  const samples = [];
  const deadline = performance.now() + 20000;
  const tick = () => {
    const busy = article.getAttribute("aria-busy");
    const blocks = article.querySelector(".stream-blocks");
    const tail = article.querySelector(".stream-text")?.textContent ?? "";
    let rendered = 0, blocksText = "";
    if (blocks) {
      rendered = Number(blocks.dataset.rendered || 0);
      const copy = blocks.cloneNode(true);
      copy.querySelectorAll(".code-button").forEach((button) => button.remove());
      blocksText = copy.textContent;
    }
    const last = samples[samples.length - 1];
    if (!last || last.busy !== busy || last.rendered !== rendered || last.tail !== tail) {
      samples.push({ busy, rendered, tail, blocksText });
    }
    if (busy === "false") return resolve(samples);
    if (performance.now() > deadline) return reject(new Error("the answer never ended"));
    setTimeout(tick, 5);
  };
  tick();
})"""


def shown_source(sample: dict[str, Any], full: str) -> str:
    """The part of `full` that a streaming sample shows, checked: no word lost or repeated.

    The formatted blocks must show exactly the rendering of the answer up to where they
    end, and the plain tail must be the answer's text right after that.
    """
    from chat.rendering import render_markdown

    rendered, tail = sample["rendered"], sample["tail"]
    source = full[:rendered]
    squeeze = re.compile(r"\s+")
    expected_blocks = squeeze.sub("", Elements(render_markdown(source)).text)
    assert squeeze.sub("", sample["blocksText"]) == expected_blocks, (
        f"the formatted blocks do not show the answer up to {rendered}: {sample}"
    )
    assert full[rendered : rendered + len(tail)] == tail, (
        f"the plain tail does not continue the answer at {rendered}: {tail!r}"
    )
    return source + tail


# --- The live server ---------------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _server_env(database: Path, tokens_per_second: float) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CHAT_", "REDIS_", "DATABASE_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"sqlite:///{database}",
        CHAT_MODELS="demo:demo",
        CHAT_DEMO_TOKENS_PER_SECOND=str(tokens_per_second),
        PYTHONUNBUFFERED="1",
    )
    # Set, even empty, so that a developer's .env (read by the settings, which never
    # override the environment) cannot turn on HTTPS redirects, Redis or other limits.
    env.update(
        DJANGO_HTTPS="0",
        DJANGO_CSRF_TRUSTED_ORIGINS="",
        REDIS_URL="",
        CHAT_DEFAULT_MODEL="",
        CHAT_ALLOW_SIGNUP="1",
        CHAT_RATE_LIMIT_PER_MINUTE="20",
        CHAT_MAX_CONCURRENT_STREAMS="3",
        CHAT_DAILY_TOKEN_QUOTA="0",
        CHAT_MAX_OUTPUT_TOKENS="4096",
    )
    return env


def _manage(env: dict[str, str], *commands: list[str]) -> None:
    """Run manage.py commands in parallel; fail with their output if one fails."""
    processes = [
        (
            command,
            subprocess.Popen(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for command in commands
    ]
    for command, process in processes:
        output, _ = process.communicate(timeout=180)
        if process.returncode:
            pytest.fail(f"manage.py {' '.join(command)} failed:\n{output}")


def _wait_healthy(server: LiveServer, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    _stop(server)
    pytest.fail(f"the server did not become healthy:\n{server.log.read_text()[-4000:]}")


def _start(
    directory: Path,
    template_db: Path,
    tokens_per_second: float,
    extra_env: dict[str, str] | None = None,
) -> LiveServer:
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "browser.sqlite3"
    shutil.copyfile(template_db, database)
    env = {**_server_env(database, tokens_per_second), **(extra_env or {})}
    port = free_port()
    log = directory / "daphne.log"
    with log.open("wb") as output:
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
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return LiveServer(f"http://127.0.0.1:{port}", process, log)


def _stop(server: LiveServer) -> None:
    stop_process(server.process)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database that each server starts from, and collected static files."""
    directory = tmp_path_factory.mktemp("browser-db")
    database = directory / "template.sqlite3"
    env = _server_env(database, TOKENS_PER_SECOND)
    # Independent, and each spends seconds importing Django: run them side by side.
    _manage(env, ["migrate", "--no-input"], ["collectstatic", "--no-input"])
    # Fold the write-ahead log into the file so that a plain copy is complete.
    import sqlite3

    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")
    return database


@pytest.fixture(scope="session")
def _servers(
    tmp_path_factory: pytest.TempPathFactory, _template_db: Path
) -> Iterator[dict[str, str]]:
    """Both servers, started side by side (each spends seconds importing Django)."""
    servers: dict[str, LiveServer] = {}
    try:
        for name, tokens_per_second in (
            ("server", TOKENS_PER_SECOND),
            ("slow-server", SLOW_TOKENS_PER_SECOND),
        ):
            directory = tmp_path_factory.mktemp(name)
            servers[name] = _start(directory, _template_db, tokens_per_second)
        for server in servers.values():
            _wait_healthy(server)
        yield {name: server.url for name, server in servers.items()}
    finally:
        for server in servers.values():
            _stop(server)


def start_server(
    tmp_path_factory: pytest.TempPathFactory, template_db: Path, **env: str
) -> Iterator[str]:
    """Another server with its own environment (e.g. models of a fake provider), until the end."""
    server = _start(tmp_path_factory.mktemp("server"), template_db, TOKENS_PER_SECOND, env)
    try:
        _wait_healthy(server)
        yield server.url
    finally:
        _stop(server)


@pytest.fixture(scope="session")
def server(_servers: dict[str, str]) -> str:
    """The base URL of a daphne server whose demo model writes TOKENS_PER_SECOND."""
    return _servers["server"]


@pytest.fixture(scope="session")
def slow_server(_servers: dict[str, str]) -> str:
    """A second server whose demo model takes two seconds to its first token."""
    return _servers["slow-server"]


# --- The browser -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated_generations() -> None:
    """Overrides the API tests' async fixture of that name: generations run in the server.

    (An async fixture cannot run here anyway: Playwright's sync API keeps its own event
    loop running in this thread.)
    """


@pytest.fixture(autouse=True)
def _chat_settings() -> None:
    """Overrides the API tests' fixture: the server process has its own settings."""


# Module scope, not session: while Playwright's sync API is alive it keeps an event loop
# running in this thread, which would break the async tests that run after these.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        subprocess.run([str(ROOT / "scripts" / "ensure-chromium")], check=True)
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class PageProblems:
    """Console errors (CSP violations among them) and uncaught exceptions seen on a page."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.console_errors, *self.page_errors]


# Records CSP violations in the page; they also show up as console errors in Chromium.
_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push({
    directive: event.violatedDirective, blocked: event.blockedURI, sample: event.sample,
  });
});
"""


_TIME_FIRST_TOKEN = """() => new Promise((resolve, reject) => {
  const log = document.querySelector("[role=log]");
  const before = log.querySelectorAll("article.message--assistant").length;
  const check = () => {
    const answers = log.querySelectorAll("article.message--assistant");
    const body = answers[before]?.querySelector(".message__body");
    if (body && body.textContent.length > 0) {
      observer.disconnect();
      resolve(performance.now() - started);
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(log, { childList: true, subtree: true, characterData: true });
  setTimeout(() => reject(new Error("no first token")), 10000);
  const started = performance.now();
  document.querySelector("#send-button").click();
})"""


class Session:
    """One signed-up user in one browser context."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.page = context.new_page()
        self.problems = PageProblems()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.problems.page_errors.append(str(error)))
        self.page.add_init_script(_CSP_LISTENER)
        self.username = ""

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.console_errors.append(f"{message.text} ({message.location})")

    def sign_up(self, username: str = "") -> str:
        page = self.page
        self.username = username or f"user-{uuid4().hex[:12]}"
        page.goto(f"{self.base_url}/accounts/signup/")
        page.get_by_label("Username").fill(self.username)
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password confirmation").fill(PASSWORD)
        page.get_by_role("button", name="Sign up").click()
        expect(page.get_by_role("textbox", name="Message")).to_be_visible()
        return self.username

    # --- The chat page ------------------------------------------------------------

    @property
    def transcript(self) -> Locator:
        return self.page.get_by_role("log")

    def answers(self) -> Locator:
        return self.transcript.get_by_role("article", name="Assistant")

    def send(self, text: str) -> Locator:
        """Send `text` with the Send button; the new answer's article once it is on the page."""
        count = self.answers().count()
        self.page.get_by_role("textbox", name="Message").fill(text)
        self.page.get_by_role("button", name="Send").click()
        expect(self.answers()).to_have_count(count + 1)
        return self.answers().nth(count)

    def wait_final(self, answer: Locator, timeout: float = 15_000) -> None:
        expect(answer).to_have_attribute("aria-busy", "false", timeout=timeout)

    def wait_text(self, answer: Locator, min_chars: int) -> None:
        """Wait until at least `min_chars` of the answer are shown."""
        answer.locator(".message__body").evaluate(
            """(body, minChars) => new Promise((resolve, reject) => {
                const deadline = performance.now() + 10000;
                const check = () => {
                  if (body.textContent.length >= minChars) return resolve();
                  if (performance.now() > deadline) return reject(new Error("no text came"));
                  setTimeout(check, 10);
                };
                check();
            })""",
            min_chars,
        )

    def first_token_times(self, count: int, prompt: str) -> list[float]:
        """Milliseconds from clicking Send to the answer's first text, for `count` sends.

        Each answer is stopped after its first text, so the next send can follow at once.
        """
        timings = []
        for index in range(count):
            self.page.get_by_role("textbox", name="Message").fill(f"{prompt} {index}.")
            timings.append(float(self.page.evaluate(_TIME_FIRST_TOKEN)))
            answer = self.answers().last
            self.page.keyboard.press("Escape")
            self.wait_final(answer)
        return timings

    def api_message(self, answer: Locator) -> dict[str, Any]:
        message_id = answer.get_attribute("data-message-id")
        response = self.page.request.get(f"{self.base_url}/api/messages/{message_id}")
        assert response.ok, response.text()
        data: dict[str, Any] = response.json()
        return data

    def csp_violations(self) -> list[Any]:
        violations: list[Any] = self.page.evaluate("window.__cspViolations || []")
        return violations

    def assert_clean(self) -> None:
        """No console error, uncaught exception or CSP violation so far."""
        problems = self.problems.all() + [str(v) for v in self.csp_violations()]
        assert not problems, "the page reported problems:\n" + "\n".join(problems)


@pytest.fixture
def new_session(browser: Browser, server: str) -> Iterator[Callable[..., Session]]:
    """Make sessions (browser contexts) on a server; they close at the end of the test."""
    contexts: list[BrowserContext] = []

    def make(base_url: str = server, **options: Any) -> Session:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        options.setdefault("color_scheme", "light")
        context = browser.new_context(base_url=base_url, **options)
        contexts.append(context)
        return Session(context, base_url)

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def signed_up_state(browser: Browser, server: str) -> dict[str, Any]:
    """The cookies of one user who signed up through the page, shared by a module's tests.

    Signing up costs a deliberately slow password hash; tests that need a user of their
    own (or a first visit) call `Session.sign_up` themselves.
    """
    context = browser.new_context(base_url=server)
    try:
        Session(context, server).sign_up()
        state: dict[str, Any] = context.storage_state()  # type: ignore[assignment]
    finally:
        context.close()
    return state


@pytest.fixture
def chat(new_session: Callable[..., Session], signed_up_state: dict[str, Any]) -> Session:
    """A signed-up user on a fresh chat page ("New chat"), desktop size."""
    session = new_session(storage_state=signed_up_state)
    session.page.goto("/")
    expect(session.page.get_by_role("textbox", name="Message")).to_be_visible()
    return session


# --- Accessibility -------------------------------------------------------------------

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not AXE.exists():
        pytest.fail("axe-core is missing: run scripts/ensure-node-tools (make test does)")
    page.add_script_tag(path=str(AXE))
    results: dict[str, Any] = page.evaluate(
        """async () => {
            const results = await axe.run(document);
            return {
              passes: results.passes.length,
              violations: results.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")),
              })),
            };
        }"""
    )
    assert results["passes"] > 10, "axe-core did not check the page"
    violations: list[dict[str, Any]] = results["violations"]
    return [v for v in violations if v["impact"] in {"serious", "critical"}]
