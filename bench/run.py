"""The relay benchmark: the app against the limit and the naive relay, in one run.

    make bench                  # quick mode, under 3 minutes
    make bench-full             # every configuration, longer windows and finer ramps
    python -m bench.run --mode quick --servers daphne --relays app,raw
    python -m bench.run --profile daphne:app    # pyinstrument profile of the app under load

One process per server under test, pinned to core 0 (`taskset`); this load generator and
the upstream (bench/upstream.py, its own process) are pinned to core 1, and their CPU is
reported beside the server's so that it shows they were not the bottleneck. Relays:

- `raw`: bench/baselines/raw_relay.py, the limit (ASGI, httpx2, json, one event a token);
- `naive`: bench/baselines/naive_relay.py, a tutorial's Django view (one event a token);
- `naive-parsed`: the same view reading the upstream through the app's own provider;
- `app`, `app-redis`: the app (bench/app_asgi.py), with the in-process or the Redis log.

Every stream is a 500-token answer. Phases per configuration: warm-up; idle streams (RSS);
Send-to-first-token (one at a time); the server's CPU per answer of five tokens (what an
answer costs apart from its tokens); a cohort at 200 tokens/s; then a closed-loop ramp at
50 tokens/s: N sessions each streaming answer after answer (the first of random length, so
that answers end and start at a steady rate), N rising level by level, each level
measured over a window; capacity is the last level whose p99 added latency is at most
100 ms. Added latency = the client's receipt of a token minus the upstream's stamp
of its chunk (one monotonic clock for all processes). In full mode, four more rounds
then compare the Redis log with the in-process log, one reference window of each in
turns (see `alternating_windows`). Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from bench import report
from bench.clients import HttpConnection
from bench.load import (
    HOST,
    Account,
    AppSseTarget,
    AppWsTarget,
    Conversations,
    LoopWatch,
    Meter,
    RelayTarget,
    StreamRecord,
    Target,
    Tracker,
    first_token_latencies,
    percentile,
    token_latencies,
    tokens_received,
)
from bench.upstream import directive

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RAW = RESULTS / "raw"
BIN = Path(sys.executable).parent
SERVER_CORE, LOAD_CORE = 0, 1
LIMIT_MS = 100.0  # capacity: p99 added latency at most this
REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "openai:bench-model"
SLOW, FAST = 50.0, 200.0  # tokens/s per stream
PHASES = ("idle", "stft", "answers", "fast", "slow", "ws", "ramp")


@dataclass(frozen=True)
class Mode:
    name: str
    configs: tuple[tuple[str, str], ...]  # (server, relay)
    tokens: int = 500
    ref_streams: int = 40  # the reference load at 50 tokens/s: 2,000 tokens/s
    fast_streams: int = 10  # the 200 tokens/s cohort: 2,000 tokens/s too
    idle_streams: int = 40
    stft_runs: int = 6
    short_answers: int = 60  # answers of five tokens, for the CPU of an answer
    idle_sample: float = 1.0  # seconds of the idle server's CPU, taken out of theirs
    levels: tuple[int, ...] = (20, 40, 80, 120, 160, 200, 240, 300)
    settle: float = 1.2  # seconds from a level's start to its window
    window: float = 1.0  # seconds measured per level
    delay: float = 0.2  # upstream: request to first token, in load phases
    # New sessions start spread over this many seconds: a whole flush interval, so that
    # the answers' once-a-second database writes do not all fall at the same moment.
    stagger: float = 1.0
    ramp: frozenset[str] = frozenset({"raw", "naive", "app"})  # relays that get a ramp
    ws: frozenset[str] = frozenset({"app"})  # relays also measured over the WebSocket
    ws_ramp: bool = False  # the WebSocket: a ramp too (else the reference level only)
    ws_fast: bool = False  # the WebSocket: the 200 tokens/s cohort too
    slow_cohort: bool = False  # a whole-life cohort at 50 tokens/s as well
    users: int = 20
    conversations: int = 120  # prepared per user and configuration
    # Rounds of one reference window each of the in-process and the Redis log, in turns
    # (see `alternating_windows`).
    pairs: int = 0
    # Rounds of one ramp each of the bare relay and the app, in turns, in steps of
    # `turn_step` streams (see `capacity_turns`).
    capacity_rounds: int = 0
    turn_step: int = 10
    phases: frozenset[str] = frozenset(PHASES)


RELAYS = ("raw", "naive", "naive-parsed", "app", "app-redis")
ALL = tuple((s, r) for s in ("daphne", "uvicorn") for r in RELAYS)
MODES = {
    # Under 3 minutes: everything on daphne (the Procfile's server), the limit and the
    # app on uvicorn; coarse ramps and short windows.
    "quick": Mode(
        "quick",
        configs=(
            ("daphne", "raw"),
            ("daphne", "naive"),
            ("daphne", "app"),
            ("daphne", "app-redis"),
            ("uvicorn", "raw"),
            ("uvicorn", "app"),
        ),
    ),
    "full": Mode(
        "full",
        configs=ALL,
        idle_streams=300,
        stft_runs=30,
        short_answers=400,
        idle_sample=2.0,
        levels=(20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 230, 260, 300, 350, 400, 500),
        # New streams join at no more than ~15 sends a second, nearer a steady state.
        settle=3.5,
        window=5.0,
        delay=0.5,
        stagger=3.0,
        ramp=frozenset({"raw", "naive", "naive-parsed", "app", "app-redis"}),
        ws=frozenset({"app", "app-redis"}),
        ws_ramp=True,
        ws_fast=True,
        slow_cohort=True,
        users=50,
        conversations=400,
        pairs=4,
        capacity_rounds=2,
    ),
}


# --- Processes ---------------------------------------------------------------------


def pinned(core: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command]


def start_upstream(log: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        pinned(LOAD_CORE, [sys.executable, "-m", "bench.upstream"]),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("READY "):
        raise RuntimeError(f"the upstream did not start: {line!r}")
    return process, int(line.split()[1])


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def procfile_env() -> dict[str, str]:
    """The variables that the `Procfile`'s `web` line sets for the server (VAR=value …)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            words = line.removeprefix("web:").split()
            pairs = itertools.takewhile(lambda word: "=" in word, words)
            return dict(pair.split("=", 1) for pair in pairs)
    return {}


def server_command(server: str, module: str, port: int) -> list[str]:
    if server == "daphne":
        # The Procfile's flags.
        return [
            str(BIN / "daphne"),
            "-b",
            HOST,
            "-p",
            str(port),
            "--proxy-headers",
            "--websocket-max-message-size",
            "1048576",
            module,
        ]
    return [
        str(BIN / "uvicorn"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--ws-max-size",
        "1048576",
        module,
    ]


# --- The app's database --------------------------------------------------------------

SETUP = """
import json
import django
django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.db import connection
from chat.models import Conversation
call_command("migrate", verbosity=0)
out = []
for n in range(users):
    user = get_user_model().objects.create_user(f"bench{n}")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    made = Conversation.objects.bulk_create(
        Conversation(user=user, model=model) for _ in range(per_user)
    )
    out.append({"session": session.session_key, "conversations": [str(c.id) for c in made]})
# Everything into the main file, which each configuration copies.
with connection.cursor() as cursor:
    cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
connection.close()
print(json.dumps(out))
"""


def app_env(workdir: Path, upstream_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CHAT_", "OPENAI_", "ANTHROPIC_", "REDIS_"))
        and key not in {"DATABASE_URL", "METRICS_TOKEN"}
    }
    env.update(
        {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": f"sqlite:///{workdir / 'template.sqlite3'}",
            "CHAT_MODELS": MODEL,
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"http://{HOST}:{upstream_port}/v1",
            # Limits far above the load, so that their checks run but never refuse.
            "CHAT_RATE_LIMIT_PER_MINUTE": "1000000",
            "CHAT_MAX_CONCURRENT_STREAMS": "1000000",
            # Every benchmark answer opens a conversation, which would otherwise ask the
            # model for a title each time (a deployment asks once per conversation).
            "CHAT_TITLES": "0",
        }
    )
    return env


def prepare_app_db(env: dict[str, str], mode: Mode) -> list[dict[str, Any]]:
    """Migrate a template database; fill it with users, sessions and conversations."""
    numbers = f"users, per_user, model = {mode.users}, {mode.conversations}, {MODEL!r}"
    done = subprocess.run(
        [sys.executable, "-c", numbers + SETUP],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "chatsite.settings"},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"preparing the database failed:\n{done.stderr[-2000:]}")
    accounts: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return accounts


# --- Measuring -----------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    cpu: dict[str, float]
    cores: list[tuple[float, float]]  # (busy, total) seconds per core
    rss: int
    loop_cpu: float  # the server's main thread: its event loop
    threads: int
    watch: tuple[int, int, float] = (0, 0, 0.0)  # the load generator's loop (LoopWatch)


class Probe:
    """CPU seconds of each process involved, per-core busy time, and the server's RSS."""

    def __init__(self, pids: dict[str, int | None], watch: LoopWatch | None = None) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.watch = watch

    def sample(self) -> Sample:
        cpu = {}
        for name, proc in self.procs.items():
            try:
                times = proc.cpu_times()
                cpu[name] = times.user + times.system
            except psutil.Error:
                cpu[name] = 0.0
        cores = []
        for times in psutil.cpu_times(percpu=True):
            total = sum(times)
            cores.append((total - times.idle - getattr(times, "iowait", 0.0), total))
        server = self.procs["server"]
        try:
            rss = server.memory_info().rss
            threads = server.threads()
            main = [t for t in threads if t.id == server.pid]
            loop_cpu = main[0].user_time + main[0].system_time if main else 0.0
        except psutil.Error:
            rss, loop_cpu, threads = 0, 0.0, []
        watch = self.watch.take() if self.watch is not None else (0, 0, 0.0)
        return Sample(time.monotonic(), cpu, cores, rss, loop_cpu, len(threads), watch)


def usage(a: Sample, b: Sample) -> dict[str, Any]:
    seconds = b.at - a.at
    return {
        "seconds": seconds,
        "cpu_s": {name: b.cpu[name] - a.cpu.get(name, 0.0) for name in b.cpu},
        # The server's CPU outside its event loop: database and other worker threads.
        "server_threads_cpu_s": (b.cpu["server"] - a.cpu["server"]) - (b.loop_cpu - a.loop_cpu),
        "core_busy": [
            (bb - ab) / (bt - at) if bt > at else 0.0
            for (ab, at), (bb, bt) in zip(a.cores, b.cores, strict=False)
        ],
        "rss_mb": b.rss / 2**20,
        # The load generator's own event loop: its late wakes inflate measured latency.
        "loadgen_loop": {
            "late_share": (b.watch[1] - a.watch[1]) / max(b.watch[0] - a.watch[0], 1),
            "worst_ms": b.watch[2] * 1000,
        },
    }


def counter_delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    delta = {key: b[key] - a.get(key, 0) for key in b if b[key] != a.get(key, 0)}
    for maximum in ("loop_late_max_us", "gc_max_us"):
        if maximum in b:
            delta[maximum] = b[maximum]  # the maximum since `a`
    for gauge in b:
        if gauge.startswith("now_"):
            delta[gauge] = b[gauge]  # a state at `b`, not a count
    return delta


def _path_calls(counts: dict[str, int], tokens: int) -> float | None:
    """Awaited Redis calls other than the log writer's (its round trips are per tick)."""
    if not tokens:
        return None
    return (counts.get("redis_awaited", 0) - counts.get("redis_log_writes", 0)) / tokens


def loop_stalls(counts: dict[str, int]) -> dict[str, float]:
    """How often the server's event loop woke a 5 ms sleeper late, and the worst case."""
    checks = counts.get("loop_checks", 0)
    if not checks:
        return {}
    out = {f"over_{n}ms": counts.get(f"loop_late_over_{n}ms", 0) / checks for n in (10, 20, 50)}
    out["max_ms"] = counts.get("loop_late_max_us", 0) / 1000
    return out


def summary(values: list[float]) -> dict[str, float]:
    """Milliseconds: p50, p90, p99, max and count of sorted seconds."""
    return {
        "p50": percentile(values, 50) * 1000,
        "p90": percentile(values, 90) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": (values[-1] * 1000) if values else 0.0,
        "n": len(values),
    }


@dataclass
class Phase:
    tag: str
    records: list[StreamRecord] = field(default_factory=list)
    meter: Meter = field(default_factory=Meter)
    errors: list[str] = field(default_factory=list)


class Upstream:
    """Control calls to bench/upstream.py, and the stamps it reports."""

    def __init__(self, port: int, tag: str) -> None:
        self.port = port
        # Every stream key of this configuration starts with the tag: streams a previous
        # configuration left behind (a send still in flight when its server stopped) are
        # not this one's.
        self.tag = tag
        self.conn: HttpConnection | None = None
        self.lock = asyncio.Lock()
        self.stamps: dict[str, list[float]] = {}
        self.received: dict[str, float] = {}

    async def call(self, method: str, path: str, *, raw: bool = False) -> Any:
        async with self.lock:
            if self.conn is None or self.conn.closed:
                self.conn = await HttpConnection.open(HOST, self.port)
            response = await self.conn.request(method, path)
            return response.body if raw else json.loads(response.body)

    async def fetch(self) -> dict[str, float]:
        """Merge the stamps sent since the last fetch; the upstream's send lag meanwhile."""
        body = await self.call("GET", "/_bench/stamps", raw=True)
        head, _, packed = body.partition(b"\n")
        answer = json.loads(head)
        stamps = array("d")
        stamps.frombytes(packed)
        offset = 0
        for key, info in answer["streams"].items():
            new = stamps[offset : offset + info["count"]]
            offset += info["count"]
            if not key.startswith(self.tag):
                continue
            self.received[key] = info["received"]
            sent = self.stamps.setdefault(key, [])
            if info["from"] != len(sent):
                raise RuntimeError(f"stamps of {key} out of order")
            sent.extend(new)
        lag: dict[str, float] = answer["lag"]
        return lag

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Bench:
    """One configuration: a server process running one relay."""

    def __init__(
        self,
        mode: Mode,
        server: str,
        relay: str,
        port: int,
        process: subprocess.Popen[bytes],
        upstream: Upstream,
        pids: dict[str, int | None],
        targets: dict[str, Target],
    ) -> None:
        self.mode = mode
        self.server = server
        self.relay = relay
        self.port = port
        self.process = process
        self.upstream = upstream
        self.watch = LoopWatch()
        self.watch.start()
        self.probe = Probe({"server": process.pid, **pids}, self.watch)
        self.targets = targets

    @property
    def is_app(self) -> bool:
        return self.relay.startswith("app")

    async def counters(self) -> dict[str, int]:
        if not self.is_app:
            return {}
        conn = await HttpConnection.open(HOST, self.port)
        try:
            response = await conn.request("GET", "/__bench__/stats")
            counts: dict[str, int] = json.loads(response.body)
            return counts
        finally:
            conn.close()

    async def quiesce(self) -> None:
        """End what a phase left running and wait for the server to fall idle."""
        await self.upstream.call("POST", "/_bench/abort")
        before = self.probe.sample()
        for _ in range(20):
            await asyncio.sleep(0.1)
            after = self.probe.sample()
            if after.cpu["server"] - before.cpu["server"] < 0.003:
                break
            before = after
        await self.upstream.fetch()

    def prompt(self, key: str, rate: float, *, tokens: int | None = None, **kw: Any) -> str:
        return directive(
            self.upstream.tag + key,
            rate=rate,
            tokens=self.mode.tokens if tokens is None else tokens,
            delay=kw.pop("delay", self.mode.delay),
            **kw,
        )

    async def one(
        self, target: Target, phase: Phase, key: str, prompt: str, session: Any = None
    ) -> StreamRecord:
        record = StreamRecord(self.upstream.tag + key, time.monotonic())
        phase.records.append(record)
        try:
            if session is not None:
                await session.run(record, prompt)
            else:
                async with target.session(phase.meter) as fresh:
                    record.started = time.monotonic()
                    await fresh.run(record, prompt)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            record.error = f"{type(error).__name__}: {error}"
            phase.errors.append(record.error)
        return record

    # --- Phases -------------------------------------------------------------------

    async def warm_up(self) -> None:
        phase = Phase("warm")
        for round_ in range(2):
            await asyncio.gather(
                *(
                    self.one(
                        t, phase, f"warm.{name}.{round_}.{i}", self.prompt("", 1000, tokens=60)
                    )
                    for name, t in self.targets.items()
                    for i in range(4)
                )
            )
        if phase.errors:
            raise RuntimeError(f"warm-up failed: {phase.errors[:3]}")
        await self.quiesce()

    async def idle(
        self,
        target: Target,
        while_open: Callable[[], Awaitable[None]] | None = None,
        patience: float = 30,
    ) -> dict[str, Any]:
        """RSS per open stream whose upstream has sent headers and nothing else.

        `while_open` runs once every stream is open, before they are let go. `patience`
        is how long the streams may take to open, and then to end (seconds each).
        """
        n = self.mode.idle_streams
        phase = Phase(f"idle-{target.transport}")
        await asyncio.sleep(0.3)
        empty = self.probe.sample()
        tasks = [
            asyncio.create_task(
                self.one(
                    target,
                    phase,
                    f"{phase.tag}.{i}",
                    self.prompt(f"{phase.tag}.{i}", 1000, tokens=5, delay=0, hold=True),
                )
            )
            for i in range(n)
        ]
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            state = await self.upstream.call("GET", "/_bench/state")
            # The app answers the stream's headers (and `start`) at once; the baselines'
            # servers hold the headers back until the first body bytes.
            connected = sum(1 for r in phase.records if r.connected or not self.is_app)
            if state["held"] >= n and connected >= n:
                break
        await asyncio.sleep(0.5)
        a = self.probe.sample()
        await asyncio.sleep(0.6)
        b = self.probe.sample()
        threads = b.threads
        if while_open is not None:
            await while_open()
        await self.upstream.call("POST", "/_bench/release")
        await asyncio.wait_for(asyncio.gather(*tasks), patience)
        use = usage(a, b)
        result = {
            "streams": n,
            "rss_before_mb": empty.rss / 2**20,
            "rss_open_mb": b.rss / 2**20,
            "rss_kib_per_stream": (b.rss - empty.rss) / 1024 / n,
            "idle_cpu_ms_per_stream_s": use["cpu_s"]["server"] * 1000 / use["seconds"] / n,
            "threads_before": empty.threads,
            "threads_open": threads,
            "errors": phase.errors[:5],
        }
        await self.quiesce()
        return result

    async def stft(self, target: Target) -> dict[str, Any]:
        """Send-to-first-token, one answer at a time on an idle server."""
        phase = Phase(f"stft-{target.transport}")
        async with target.session(phase.meter) as session:
            a = self.probe.sample()
            for i in range(self.mode.stft_runs):
                key = f"{phase.tag}.{i}"
                await self.one(
                    target, phase, key, self.prompt(key, 200, tokens=20, delay=0), session
                )
            b = self.probe.sample()
        await self.upstream.fetch()
        totals, upstream_part, answered, connected = [], [], [], []
        for record in phase.records:
            sent = self.upstream.stamps.get(record.key)
            if record.recv and sent:
                totals.append(record.recv[0] - record.started)
                upstream_part.append(sent[0] - self.upstream.received[record.key])
                if record.answered:
                    answered.append(record.answered - record.started)
                connected.append(record.connected - record.started)
        for values in (totals, upstream_part, answered, connected):
            values.sort()
        await self.quiesce()
        return {
            "stft_ms": summary(totals),
            "upstream_ms": summary(upstream_part),
            # From the start: the send's answer (POST), and the reader's stream headers
            # (SSE) or `accepted` (WebSocket).
            "answered_ms": summary(answered),
            "connected_ms": summary(connected),
            # Server CPU per short answer (20 tokens), all of its requests and writes.
            "cpu_ms_per_answer": usage(a, b)["cpu_s"]["server"] * 1000 / self.mode.stft_runs,
            "errors": phase.errors[:5],
        }

    async def cohort(self, target: Target, n: int, rate: float) -> dict[str, Any]:
        """n answers started together (spread over `stagger`) and read to the end."""
        phase = Phase(f"cohort{rate:g}-{target.transport}")
        async with contextlib.AsyncExitStack() as stack:
            sessions = [
                await stack.enter_async_context(target.session(phase.meter)) for _ in range(n)
            ]
            await self.upstream.fetch()
            a, ca = self.probe.sample(), await self.counters()

            async def start(i: int) -> StreamRecord:
                await asyncio.sleep(random.uniform(0, self.mode.stagger))
                key = f"{phase.tag}.{i}"
                return await self.one(target, phase, key, self.prompt(key, rate), sessions[i])

            records = await asyncio.wait_for(asyncio.gather(*map(start, range(n))), 120)
            b, cb = self.probe.sample(), await self.counters()
        lag = await self.upstream.fetch()
        stamps = self.upstream.stamps
        latencies, missing = token_latencies(records, stamps, 0, float("inf"), b.at)
        firsts = first_token_latencies(records, stamps, 0, float("inf"), b.at)
        tokens = sum(len(r.recv) for r in records)
        use = usage(a, b)
        counts = counter_delta(ca, cb)
        answer_bytes = sum(r.answer_bytes for r in records)
        result = {
            "streams": n,
            "rate": rate,
            "tokens": tokens,
            "latency_ms": summary(latencies),
            "missing": missing,
            "ttft_ms": summary(firsts),
            "usage": use,
            "cpu_s_per_1k_tokens": use["cpu_s"]["server"] / tokens * 1000 if tokens else None,
            "events_per_token": sum(r.token_events for r in records) / tokens if tokens else None,
            "all_events_per_token": (
                sum(r.token_events + r.other_events for r in records) / tokens if tokens else None
            ),
            "bytes_per_answer_byte": (
                sum(r.bytes for r in records) / answer_bytes if answer_bytes else None
            ),
            "answer_seconds": sum(r.finished - r.started for r in records) / n,
            "counters": counts,
            "loop_stalls": loop_stalls(counts),
            "per_message": {
                key: counts.get(key, 0) / n
                for key in ("db_write", "db_read", "redis_awaited", "redis_sync")
            },
            "per_token": {
                key: counts.get(key, 0) / tokens if tokens else None
                for key in ("redis_awaited", "redis_pipelined_commands", "redis_pubsub_received")
            }
            | {"redis_awaited_path": _path_calls(counts, tokens)},
            "redis_log_writes_per_s": counts.get("redis_log_writes", 0) / use["seconds"],
            "upstream_lag_ms": lag,
            "errors": phase.errors[:5],
        }
        await self.quiesce()
        return result

    async def ramp(self, target: Target, levels: tuple[int, ...]) -> dict[str, Any]:
        """Closed loop at 50 tokens/s: N sessions stream answer after answer; N rises."""
        mode = self.mode
        phase = Phase(f"ramp-{target.transport}")
        stop = asyncio.Event()
        workers: list[asyncio.Task[None]] = []

        async def work(wid: int) -> None:
            await asyncio.sleep(random.uniform(0, mode.stagger))
            try:
                async with target.session(phase.meter) as session:
                    seq = 0
                    # A first answer of random length: sessions that start together
                    # would otherwise end and start their answers together, answer after
                    # answer, and a window would see the churn of a steady state (N / 10
                    # new answers a second) or none of it, by luck.
                    tokens = random.randint(1, mode.tokens)
                    while not stop.is_set():
                        key = f"{phase.tag}.{wid}.{seq}"
                        seq += 1
                        prompt = self.prompt(key, SLOW, tokens=tokens)
                        tokens = mode.tokens
                        record = await self.one(target, phase, key, prompt, session)
                        if record.error:
                            await asyncio.sleep(0.2)
            except (OSError, RuntimeError) as error:
                phase.errors.append(f"session {wid}: {error}")

        await self.upstream.fetch()
        results: list[dict[str, Any]] = []
        capacity: int | None = None
        exceeded = False
        for n in levels:
            level_start = time.monotonic()
            errors_before = len(phase.errors)
            workers += [asyncio.create_task(work(wid)) for wid in range(len(workers), n)]
            # Every new stream has started and had its first token before the window.
            await asyncio.sleep(max(mode.settle, mode.stagger + mode.delay + 0.1))
            level: dict[str, Any] = {}
            attempts = 0
            while True:
                attempts += 1
                a, ca = self.probe.sample(), await self.counters()
                await asyncio.sleep(mode.window)
                b, cb = self.probe.sample(), await self.counters()
                lag = await self.upstream.fetch()
                level = self.window(phase, a, b, ca, cb, level_start, lag)
                level["streams"] = n
                level["errors"] = len(phase.errors) - errors_before
                level["attempts"] = attempts
                use = level["usage"]
                print(
                    f"    {target.name}/{target.transport} {n:4d} streams: "
                    f"p99 {level['latency_ms']['p99']:7.1f} ms, server CPU "
                    f"{use['cpu_s']['server'] / use['seconds']:.0%}, other processes "
                    f"on its core {level['foreign_load']:.0%}"
                    + (
                        f", loop late >50 ms {level['loop_stalls']['over_50ms']:.1%}"
                        f" (max {level['loop_stalls']['max_ms']:.0f} ms)"
                        if level["loop_stalls"]
                        else ""
                    ),
                    flush=True,
                )
                if level["errors"] or level["latency_ms"]["p99"] <= LIMIT_MS:
                    break
                # A level fails when a second window confirms the first, so that one
                # burst does not end the ramp; and a window in which other processes took
                # a good part of the server's core says nothing about the server: retried.
                quiet = level["foreign_load"] < report.FOREIGN_LIMIT
                if attempts >= 3 or (attempts >= 2 and quiet):
                    break
            results.append(level)
            if level["latency_ms"]["p99"] > LIMIT_MS or level["errors"]:
                exceeded = True
                break
            capacity = n
        stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.quiesce()
        return {
            "levels": results,
            "capacity": capacity,
            "exceeded": exceeded,
            "errors": phase.errors[:5],
        }

    def window(
        self,
        phase: Phase,
        a: Sample,
        b: Sample,
        ca: dict[str, int],
        cb: dict[str, int],
        level_start: float,
        lag: dict[str, float],
    ) -> dict[str, Any]:
        now = time.monotonic()
        stamps = self.upstream.stamps
        latencies, missing = token_latencies(phase.records, stamps, a.at, b.at, now)
        firsts = first_token_latencies(phase.records, stamps, level_start, b.at, now)
        # Readers that were not yet connected when their first token went out: their
        # first-token latency includes the server's delay in answering the send and GET.
        late = sum(
            1
            for r in phase.records
            if (sent := stamps.get(r.key))
            and level_start <= sent[0] <= b.at
            and (not r.connected or r.connected > sent[0])
        )
        tokens = tokens_received(phase.records, a.at, b.at)
        meter = phase.meter.window(a.at, b.at)
        use = usage(a, b)
        counts = counter_delta(ca, cb)
        started = sum(1 for r in phase.records if a.at <= r.started <= b.at)
        server_share = use["cpu_s"]["server"] / use["seconds"]
        return {
            "tokens": tokens,
            "latency_ms": summary(latencies),
            "missing": missing,
            "ttft_ms": summary(firsts),
            "late_readers": late,
            # What other processes (not the server) kept its core busy with.
            "foreign_load": max(use["core_busy"][SERVER_CORE] - server_share, 0.0),
            "usage": use,
            "cpu_s_per_1k_tokens": use["cpu_s"]["server"] / tokens * 1000 if tokens else None,
            "events_per_token": meter["token_events"] / tokens if tokens else None,
            "all_events_per_token": (
                (meter["token_events"] + meter["other_events"]) / tokens if tokens else None
            ),
            "bytes_per_answer_byte": (
                meter["bytes"] / meter["answer_bytes"] if meter["answer_bytes"] else None
            ),
            "messages_started": started,
            "counters": counts,
            "per_token": {
                key: counts.get(key, 0) / tokens if tokens else None
                for key in ("redis_awaited", "redis_pipelined_commands", "redis_pubsub_received")
            }
            | {"redis_awaited_path": _path_calls(counts, tokens)},
            "redis_log_writes_per_s": counts.get("redis_log_writes", 0) / use["seconds"],
            "db_writes_per_s": counts.get("db_write", 0) / use["seconds"],
            "loop_stalls": loop_stalls(counts),
            "upstream_lag_ms": lag,
        }


# --- One configuration ---------------------------------------------------------------


@dataclass
class Context:
    mode: Mode
    workdir: Path
    upstream_port: int
    upstream_pid: int
    redis_pid: int | None
    app_env: dict[str, str]
    accounts: list[dict[str, Any]]
    redis_prefix: str
    tracker: Tracker


def relay_module(relay: str) -> str:
    return {
        "raw": "bench.baselines.raw_relay:application",
        "naive": "bench.baselines.naive_relay:application",
        "naive-parsed": "bench.baselines.naive_relay:application",
    }.get(relay, "bench.app_asgi:application")


def config_env(ctx: Context, server: str, relay: str) -> dict[str, str]:
    # Every server, the baselines' too, runs as the Procfile runs the app's.
    env = dict(ctx.app_env) | procfile_env()
    env["UPSTREAM_URL"] = env["OPENAI_BASE_URL"]
    if relay == "naive-parsed":
        env["NAIVE_PARSER"] = "app"
    if relay.startswith("app"):
        database = ctx.workdir / f"{server}-{relay}.sqlite3"
        shutil.copyfile(ctx.workdir / "template.sqlite3", database)
        env["DATABASE_URL"] = f"sqlite:///{database}"
    if relay == "app-redis":
        env["REDIS_URL"] = REDIS_URL
        env["CHAT_REDIS_PREFIX"] = ctx.redis_prefix
    if ctx.app_env.get("BENCH_PROFILE"):
        env["BENCH_PROFILE_HTML"] = str(RAW / f"profile-{server}-{relay}.html")
        env["BENCH_PROFILE_SESSION"] = str(RAW / f"profile-{server}-{relay}.pyisession")
        env["BENCH_MEMORY_SNAPSHOTS"] = str(RAW / f"memory-{server}-{relay}")
    return env


def start_server(
    server: str, relay: str, port: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = RAW / "logs" / f"{server}-{relay}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        pinned(SERVER_CORE, server_command(server, relay_module(relay), port)),
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(port: int, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError):
            conn = await HttpConnection.open(HOST, port)
            try:
                response = await asyncio.wait_for(conn.request("GET", "/healthz"), 5)
                if response.status == 200:
                    return
            finally:
                conn.close()
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not answer /healthz")


def make_targets(ctx: Context, relay: str, port: int) -> dict[str, Target]:
    if not relay.startswith("app"):
        return {"sse": RelayTarget(relay, port, ctx.tracker)}
    stocks = {
        Account(entry["session"], secrets.token_hex(16)): list(entry["conversations"])
        for entry in ctx.accounts
    }
    conversations = Conversations(stocks)
    return {
        "sse": AppSseTarget(port, ctx.tracker, conversations),
        "ws": AppWsTarget(port, ctx.tracker, conversations),
    }


async def run_config(
    ctx: Context, server: str, relay: str, body: Callable[[Bench], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    port = free_port()
    env = config_env(ctx, server, relay)
    started = time.monotonic()
    process = start_server(server, relay, port, env)
    upstream = Upstream(ctx.upstream_port, f"{server}-{relay}/")
    try:
        await wait_healthy(port, process)
        pids = {"upstream": ctx.upstream_pid, "loadgen": os.getpid(), "redis": ctx.redis_pid}
        bench = Bench(
            ctx.mode, server, relay, port, process, upstream, pids, make_targets(ctx, relay, port)
        )
        result = {"server": server, "relay": relay, **await body(bench)}
        result["seconds"] = time.monotonic() - started
        return result
    finally:
        upstream.close()
        stop(process)


async def measure(bench: Bench) -> dict[str, Any]:
    mode = bench.mode
    sse = bench.targets["sse"]
    ws = bench.targets.get("ws") if bench.relay in mode.ws else None
    out: dict[str, Any] = {}
    step = time.monotonic()

    def note(what: str) -> None:
        nonlocal step
        print(f"  {what} ({time.monotonic() - step:.1f} s)", flush=True)
        step = time.monotonic()

    await bench.warm_up()
    if "idle" in mode.phases:
        out["idle"] = await bench.idle(sse)
        note(f"idle: {out['idle']['rss_kib_per_stream']:.0f} KiB per open stream")
    if "stft" in mode.phases:
        out["stft_sse"] = await bench.stft(sse)
        if ws is not None:
            out["stft_ws"] = await bench.stft(ws)
        note(f"send-to-first-token p50 {out['stft_sse']['stft_ms']['p50']:.1f} ms")
    if "answers" in mode.phases:
        out["answers"] = await answer_cost(
            bench, answers=mode.short_answers, idle_sample=mode.idle_sample
        )
        note(f"server CPU per short answer {out['answers']['cpu_ms_per_answer']:.2f} ms")
    if "fast" in mode.phases:
        out["fast_sse"] = await bench.cohort(sse, mode.fast_streams, FAST)
        if ws is not None and mode.ws_fast:
            out["fast_ws"] = await bench.cohort(ws, mode.fast_streams, FAST)
        note(f"200 tokens/s: p99 {out['fast_sse']['latency_ms']['p99']:.1f} ms")
    if mode.slow_cohort and "slow" in mode.phases:
        out["slow_sse"] = await bench.cohort(sse, mode.ref_streams, SLOW)
        if ws is not None:
            out["slow_ws"] = await bench.cohort(ws, mode.ref_streams, SLOW)
        note("50 tokens/s cohort")
    if ws is not None and "ws" in mode.phases:
        levels = mode.levels if mode.ws_ramp else (mode.ref_streams,)
        out["ramp_ws"] = await bench.ramp(ws, levels)
        note("WebSocket at 50 tokens/s")
    if "ramp" in mode.phases:
        ramps = bench.relay in mode.ramp
        out["ramp_sse"] = await bench.ramp(sse, mode.levels if ramps else (mode.ref_streams,))
        out["ramp_sse"]["full"] = ramps
        note(f"ramp: capacity {out['ramp_sse']['capacity']}")
    return out


async def reference_window(bench: Bench) -> dict[str, Any]:
    """The server's CPU per 1,000 tokens in one window at the reference load."""
    await bench.warm_up()
    ramp = await bench.ramp(bench.targets["sse"], (bench.mode.ref_streams,))
    return {"cpu_s_per_1k_tokens": ramp["levels"][0]["cpu_s_per_1k_tokens"]}


def alternating_windows(ctx: Context, server: str) -> list[dict[str, Any]]:
    """The Redis log's CPU against the in-process log's, window by window, in turns.

    A run measures each configuration once, minutes apart; on a shared machine a slow
    spell that falls on one of the two windows moves their ratio by 20% or more (the same
    code has read 1.16x and 1.39x an hour apart). Here each round runs one reference
    window of each, in the order ABBA across rounds so that a steady drift cancels; the
    report takes the median of the rounds' ratios and shows their spread.
    """
    rounds = []
    for round_ in range(ctx.mode.pairs):
        order = ("app", "app-redis") if round_ % 2 == 0 else ("app-redis", "app")
        cpu = {}
        for relay in order:
            result = asyncio.run(run_config(ctx, server, relay, reference_window))
            cpu[relay] = result["cpu_s_per_1k_tokens"]
        ratio = cpu["app-redis"] / cpu["app"]
        print(f"  round {round_ + 1}: Redis log / in-process CPU {ratio:.2f}x", flush=True)
        rounds.append({"server": server, "round": round_ + 1, **cpu})
    return rounds


def capacity_turns(ctx: Context, server: str, found: dict[str, int | None]) -> list[dict[str, Any]]:
    """The app's capacity against the bare relay's, ramp by ramp in turns.

    Each configuration's ramp runs once in the run, minutes from the other's, and on a
    shared machine the same code's capacity moves by a fifth between two ramps an hour
    apart (the app's SSE ramp read 100, 140 and 140 streams in three ramps within ten
    minutes). Here each round ramps the bare relay and the app once more, one after the
    other, in the order ABBA across rounds so that a steady drift cancels, and in finer
    steps (`turn_step`) from a little below the capacity each reached in its own ramp
    (`found`); the report takes the median of the rounds' ratios and shows their spread.
    """
    step = ctx.mode.turn_step

    def levels(relay: str) -> tuple[int, ...]:
        start = max((found.get(relay) or 2 * step) - 2 * step, step)
        return tuple(range(start, start + 40 * step, step))

    async def ramp(bench: Bench) -> dict[str, Any]:
        await bench.warm_up()
        result = await bench.ramp(bench.targets["sse"], levels(bench.relay))
        return {"capacity": result["capacity"], "levels": result["levels"]}

    rounds = []
    for round_ in range(ctx.mode.capacity_rounds):
        order = ("raw", "app") if round_ % 2 == 0 else ("app", "raw")
        caps: dict[str, int | None] = {}
        p99s: dict[str, list[tuple[int, float]]] = {}
        for relay in order:
            result = asyncio.run(run_config(ctx, server, relay, ramp))
            caps[relay] = result["capacity"]
            p99s[relay] = [(lv["streams"], lv["latency_ms"]["p99"]) for lv in result["levels"]]
        value = caps["app"] / caps["raw"] if caps["app"] and caps["raw"] else None
        shown = f"{value:.2f}x" if value is not None else "-"
        print(
            f"  round {round_ + 1}: app {caps['app']} / bare relay {caps['raw']} streams = {shown}",
            flush=True,
        )
        rounds.append({"server": server, "round": round_ + 1, **caps, "p99_ms": p99s})
    return rounds


# --- Checks and the machine ----------------------------------------------------------


def check_wire_format(upstream_port: int) -> None:
    """The bench upstream must send what the test fake sends, chunk for chunk."""
    import httpx2

    sys.path.insert(0, str(ROOT))
    from tests.fakes import OpenAIServer, Script

    def shapes(url: str, content: str) -> list[Any]:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": content}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        out: list[Any] = []
        with httpx2.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as r:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out.append("[DONE]")
                    continue
                chunk = json.loads(line[6:])
                for key in ("id", "created", "x_sent"):
                    chunk.pop(key, None)
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        choice["delta"]["content"] = "…"
                out.append(list(chunk.items()))
        return out

    with OpenAIServer(Script(deltas=["a", "b"])) as fake:
        expected = shapes(fake.url, "hi")
    got = shapes(f"http://{HOST}:{upstream_port}", directive("check", rate=1000, tokens=2, delay=0))
    if got != expected:
        raise RuntimeError(
            f"bench/upstream.py no longer speaks the fake's format:\n{got}\n{expected}"
        )


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import platform
    from importlib.metadata import version

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": {
            name: version(name)
            for name in ("django", "channels", "daphne", "uvicorn", "twisted", "httpx2", "openai")
        },
        "uvicorn_extras": {
            name: _installed(name) for name in ("uvloop", "httptools", "websockets", "wsproto")
        },
    }


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def redis_pid() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "redis-server":
            return int(proc.pid)
    return None


def forget_redis_keys(prefix: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


# --- Main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--servers", help="comma list: daphne,uvicorn")
    parser.add_argument("--relays", help=f"comma list: {','.join(RELAYS)}")
    parser.add_argument(
        "--profile",
        metavar="SERVER:RELAY",
        help="profile one configuration under the reference load instead of benchmarking",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument(
        "--profile-what", choices=("ramp", "stft", "memory", "answers", "objects"), default="ramp"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="keep bench/results/*.md and *.png as they are"
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma list of phases to run (the report needs all): {','.join(PHASES)}",
    )
    parser.add_argument("--levels", help="comma list of ramp levels (concurrent streams)")
    parser.add_argument("--window", type=float, help="seconds measured per ramp level")
    parser.add_argument(
        "--pairs",
        type=int,
        help="rounds of in-process and Redis log windows in turns (full mode: 4)",
    )
    parser.add_argument(
        "--capacity-rounds",
        type=int,
        help="rounds of the bare relay's and the app's ramps in turns (full mode: 2)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    mode = MODES[args.mode]
    configs = mode.configs
    if args.servers or args.relays:
        servers = args.servers.split(",") if args.servers else ("daphne", "uvicorn")
        relays = args.relays.split(",") if args.relays else RELAYS
        configs = tuple(c for c in ALL if c[0] in servers and c[1] in relays)
    if args.profile:
        server, relay = args.profile.split(":")
        configs = ((server, relay),)
    mode = dataclasses.replace(mode, configs=configs, phases=frozenset(args.phases.split(",")))
    if args.levels:
        mode = dataclasses.replace(mode, levels=tuple(int(n) for n in args.levels.split(",")))
    if args.window:
        mode = dataclasses.replace(mode, window=args.window)
    if args.pairs is not None:
        mode = dataclasses.replace(mode, pairs=args.pairs)
    if args.capacity_rounds is not None:
        mode = dataclasses.replace(mode, capacity_rounds=args.capacity_rounds)
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        raise SystemExit("the benchmark needs two cores and `taskset` (util-linux)")
    os.sched_setaffinity(0, {LOAD_CORE})
    RAW.mkdir(parents=True, exist_ok=True)
    run_started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    (RAW / "logs").mkdir(exist_ok=True)
    upstream, upstream_port = start_upstream(RAW / "logs" / "upstream.log")
    prefix = f"bench{os.getpid()}:"
    try:
        check_wire_format(upstream_port)
        env = app_env(workdir, upstream_port)
        if args.profile:
            env["BENCH_PROFILE"] = "1"
        accounts: list[dict[str, Any]] = []
        if any(relay.startswith("app") for _server, relay in configs):
            accounts = prepare_app_db(env, mode)
        ctx = Context(
            mode=mode,
            workdir=workdir,
            upstream_port=upstream_port,
            upstream_pid=upstream.pid,
            redis_pid=redis_pid(),
            app_env=env,
            accounts=accounts,
            redis_prefix=prefix,
            tracker=Tracker(mode.tokens),
        )
        print(f"prepared in {time.monotonic() - run_started:.1f} s", flush=True)
        if args.profile:
            streams = mode.levels[0] if args.levels else mode.ref_streams
            asyncio.run(profile(ctx, args.profile_seconds, args.profile_what, streams))
            return
        results = []
        for server, relay in configs:
            print(f"{server} / {relay}", flush=True)
            results.append(asyncio.run(run_config(ctx, server, relay, measure)))
        pairs = []
        if "ramp" in mode.phases and mode.pairs:
            for server in dict.fromkeys(server for server, _relay in configs):
                if {(server, "app"), (server, "app-redis")} <= set(configs):
                    print(f"{server}: in-process and Redis log in turns", flush=True)
                    pairs += alternating_windows(ctx, server)
        capacity_rounds = []
        if "ramp" in mode.phases and mode.capacity_rounds:
            for server in dict.fromkeys(server for server, _relay in configs):
                ramped = {
                    r["relay"]: r["ramp_sse"]["capacity"]
                    for r in results
                    if r["server"] == server and r.get("ramp_sse", {}).get("full")
                }
                if {"raw", "app"} <= set(ramped):
                    print(f"{server}: the bare relay's and the app's ramps in turns", flush=True)
                    capacity_rounds += capacity_turns(ctx, server, ramped)
        run = {
            "mode": mode.name,
            "settings": {k: v for k, v in dataclasses.asdict(mode).items() if k != "configs"},
            "stamp": stamp,
            "seconds": time.monotonic() - run_started,
            "machine": machine(),
            "results": results,
            "pairs": pairs,
            "capacity_rounds": capacity_rounds,
        }
        out = RAW / f"run-{stamp}-{mode.name}.json"
        out.write_text(json.dumps(run, indent=1, default=list))
        print(f"raw results: {out.relative_to(ROOT)}")
        if not args.no_report and mode.phases == frozenset(PHASES):
            report.write(run, RESULTS)
            print(f"report: {(RESULTS / 'results.md').relative_to(ROOT)}")
        print(f"total {time.monotonic() - run_started:.0f} s")
    finally:
        stop(upstream)
        forget_redis_keys(prefix)
        shutil.rmtree(workdir, ignore_errors=True)


async def profile(ctx: Context, seconds: float, what: str, streams: int) -> None:
    """One configuration under load, its event loop profiled with pyinstrument.

    `what` is `ramp` (`streams` answers at 50 tokens/s for `seconds`), `stft` (answers
    one at a time: the cost of a send and of a stream's start) or `memory` (what the idle
    streams of the `idle` phase hold, `streams` of them, by tracemalloc: Python's own
    allocations only) or
    `answers` (the server's CPU per short answer, from `streams` sessions at once).
    """
    server, relay = ctx.mode.configs[0]

    async def call(bench: Bench, path: str) -> bytes:
        conn = await HttpConnection.open(HOST, bench.port)
        try:
            return (await conn.request("GET", path)).body
        finally:
            conn.close()

    async def body(bench: Bench) -> dict[str, Any]:
        await bench.warm_up()
        if what == "memory":
            await call(bench, "/__bench__/memory/mark")

            async def diff() -> None:
                out = RAW / f"memory-{server}-{relay}.txt"
                out.write_bytes(await call(bench, "/__bench__/memory/diff"))
                print(f"memory: {out.relative_to(ROOT)}")

            # Under tracemalloc the server is many times slower: fewer streams (`--levels`,
            # else the reference load's), and time for every one of them to open.
            bench.mode = dataclasses.replace(ctx.mode, idle_streams=streams)
            await bench.idle(bench.targets["sse"], diff, patience=100)
            return {}
        if what == "objects":
            # What a full garbage collection walks after a ramp over the WebSocket.
            await bench.ramp(bench.targets["ws"], ctx.mode.levels)
            out = RAW / f"objects-{server}-{relay}.txt"
            out.write_bytes(await call(bench, "/__bench__/objects"))
            print(f"objects: {out.relative_to(ROOT)}")
            return {}
        if what == "answers":
            # Measured first, then again under the profiler (which slows the loop).
            print_answer_cost(await answer_cost(bench, streams))
            if "ws" in bench.targets:
                print("over the WebSocket:")
                print_answer_cost(await answer_cost(bench, streams, transport="ws"))
            await call(bench, "/__bench__/profile/start")
            await answer_cost(bench, streams)
        else:
            await call(bench, "/__bench__/profile/start")
        if what == "stft":
            bench.mode = dataclasses.replace(ctx.mode, stft_runs=max(ctx.mode.stft_runs, 40))
            await bench.stft(bench.targets["sse"])
        elif what == "ramp":
            bench.mode = dataclasses.replace(ctx.mode, window=seconds)
            await bench.ramp(bench.targets["sse"], (streams,))
        out = RAW / f"profile-{server}-{relay}-{what}.txt"
        out.write_bytes(await call(bench, "/__bench__/profile"))
        print(f"profile: {out.relative_to(ROOT)} (and .html)")
        return {}

    await run_config(ctx, server, relay, body)


async def answer_cost(
    bench: Bench,
    sessions: int = 4,
    answers: int = 400,
    idle_sample: float = 2.0,
    transport: str = "sse",
) -> dict[str, Any]:
    """The server's CPU per answer of five tokens, its idle CPU taken out.

    Short answers leave little else to measure: what an answer costs to start, route,
    store and end, apart from its tokens (the app: a send and a stream, two requests).
    A ramp pays it for every new answer, N / 10 a second at N streams of 500 tokens.
    """
    target = bench.targets[transport]
    phase = Phase(f"answers-{transport}")
    a = bench.probe.sample()
    await asyncio.sleep(idle_sample)
    idle = usage(a, bench.probe.sample())
    idle_rate = idle["cpu_s"]["server"] / idle["seconds"]
    idle_threads = idle["server_threads_cpu_s"] / idle["seconds"]
    queue = list(range(answers))

    async def work() -> None:
        async with target.session(phase.meter) as session:
            while queue:
                key = f"{phase.tag}.{queue.pop()}"
                prompt = bench.prompt(key, 1000, tokens=5, delay=0)
                await bench.one(target, phase, key, prompt, session)

    a, ca = bench.probe.sample(), await bench.counters()
    await asyncio.gather(*(work() for _ in range(sessions)))
    b, cb = bench.probe.sample(), await bench.counters()
    use = usage(a, b)
    cpu_ms = (use["cpu_s"]["server"] - idle_rate * use["seconds"]) * 1000 / answers
    threads_ms = (use["server_threads_cpu_s"] - idle_threads * use["seconds"]) * 1000 / answers
    counts = counter_delta(ca, cb)
    return {
        "answers": answers,
        "sessions": sessions,
        "seconds": use["seconds"],
        "errors": len(phase.errors),
        "cpu_ms_per_answer": cpu_ms,
        "threads_cpu_ms_per_answer": threads_ms,
        "idle_cpu_share": idle_rate,
        "counters_per_answer": {
            name: counts[name] / answers
            for name in sorted(counts, key=lambda name: -counts[name])
            if name.startswith(("db_read:", "db_write:", "db_cpu_us:", "thread_", "gc_"))
        },
    }


def print_answer_cost(cost: dict[str, Any]) -> None:
    print(
        f"{cost['answers']} answers of 5 tokens, {cost['sessions']} at once, in "
        f"{cost['seconds']:.1f} s ({cost['errors']} errors): server CPU "
        f"{cost['cpu_ms_per_answer']:.2f} ms per answer, of which "
        f"{cost['threads_cpu_ms_per_answer']:.2f} ms in threads; idle: "
        f"{cost['idle_cpu_share']:.1%} of a core"
    )
    for name, per_answer in cost["counters_per_answer"].items():
        print(f"{per_answer:9.2f} per answer  {name}")


if __name__ == "__main__":
    main()
