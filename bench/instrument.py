"""Counters for the server under test, installed by `bench/app_asgi.py` (never by the app).

- database: every statement on every connection of every thread, through Django's
  `execute_wrapper` (bench/db_writes.py uses it too), split into writes and reads by table;
  (`BENCH_TRACE_SQL=1`: also by the app function that ran them);
- thread pools (`BENCH_TRACE_THREADS=1`): each work item's CPU, by the function it ran;
- Redis: every awaited redis-py command (`redis.asyncio`), every pipeline round trip and
  the commands in it, every published wake-up received, and the synchronous client's
  commands (Django's Redis cache: rate limits);
- the event loop's stalls: how often a 5 ms sleep wakes more than 10/20/50/100 ms late;
- on demand, a pyinstrument profile of the event loop's thread.

`GET /__bench__/stats` answers the counters as JSON. `GET /__bench__/profile/start`
starts the profiler; `GET /__bench__/profile` stops it and answers its text report (and
writes an HTML one to `BENCH_PROFILE_HTML`, its session to `BENCH_PROFILE_SESSION`).
`/__bench__/memory/mark` and `/__bench__/memory/diff` trace Python's allocations between
two moments (and save both tracemalloc snapshots under `BENCH_MEMORY_SNAPSHOTS`). The
stats also hold gauges, `now_*`: tasks, timers, open files, objects for a full collection.
These paths are answered in front of the app, which never sees them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

counts: Counter[str] = Counter()
_lock = threading.Lock()
_profiler: Any = None


def _bump(name: str, amount: int = 1) -> None:
    with _lock:
        counts[name] += amount


_TRACE_SQL = os.environ.get("BENCH_TRACE_SQL") == "1"


def _caller() -> str:
    """The innermost frame of the app's own code that ran a statement."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/chat/" in name and "/site-packages/" not in name:
            return f"{name.rsplit('/chat/', 1)[1]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def _count_sql(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    verb = sql.lstrip().split(" ", 1)[0].upper()
    table = sql.split('"')[1] if '"' in sql else "?"
    kind = "db_write" if verb in {"INSERT", "UPDATE", "DELETE"} else "db_read"
    where = f" <- {_caller()}" if _TRACE_SQL else ""
    if many:
        params = list(params)  # one statement; each row counts as one write
    rows = len(params) if many else 1
    with _lock:
        counts[kind] += rows
        counts[f"{kind}:{verb} {table}{where}"] += rows
    if not _TRACE_SQL:
        return execute(sql, params, many, context)
    started = time.thread_time_ns()
    try:
        return execute(sql, params, many, context)
    finally:
        _bump(f"db_cpu_us:{verb} {table}{where}", (time.thread_time_ns() - started) // 1000)


def _watch_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    # One wrapper object per thread reconnects for every unit of work: wrap it once.
    if _count_sql not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count_sql)


def _work_name(fn: Any) -> str:
    """The function a thread pool's work item runs, under the wrappers around it."""
    for _ in range(4):
        if not hasattr(fn, "func"):
            break
        args = getattr(fn, "args", ())
        # asgiref's thread_handler(loop, exc_info, task_context, func, child); the app's
        # run_db: _closing(fn, ...).
        inner = args[-1] if fn.func.__name__ == "thread_handler" and args else None
        if inner is None and fn.func.__name__ == "_closing" and args:
            inner = args[0]
        fn = inner if inner is not None else fn.func
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def install_thread_tracer() -> None:
    """With `BENCH_TRACE_THREADS=1`: the CPU of every work item of every thread pool (the
    request threads' sync calls, the database writers), by the function it ran."""
    if os.environ.get("BENCH_TRACE_THREADS") != "1":
        return
    from concurrent.futures import thread

    run = thread._WorkItem.run

    def timed(self: Any) -> None:
        started = time.thread_time_ns()
        try:
            run(self)
        finally:
            name = _work_name(self.fn)
            took = (time.thread_time_ns() - started) // 1000
            with _lock:
                counts[f"thread_cpu_us:{name}"] += took
                counts[f"thread_calls:{name}"] += 1

    thread._WorkItem.run = timed  # type: ignore[method-assign]


def install_db_counter() -> None:
    from django.db.backends.signals import connection_created

    connection_created.connect(_watch_connection, weak=False)


def install_redis_counter() -> None:
    import hashlib

    import redis.asyncio.client as aio
    import redis.client as sync

    from chat.streams.redis import WRITE_SCRIPT

    writes = hashlib.sha1(WRITE_SCRIPT.encode(), usedforsecurity=False).hexdigest()  # its EVALSHA
    command = aio.Redis.execute_command

    async def counted_command(self: Any, *args: Any, **options: Any) -> Any:
        _bump("redis_awaited")
        _bump(f"redis_awaited:{args[0]}")
        if args[0] == "EVALSHA" and args[1] == writes:
            # The stream log's writer: one round trip per tick for all of a process's
            # answers, however many tokens they carry.
            _bump("redis_log_writes")
        return await command(self, *args, **options)  # type: ignore[no-untyped-call]

    execute = aio.Pipeline.execute

    async def counted_execute(self: Any, raise_on_error: bool = True) -> Any:
        _bump("redis_awaited")
        _bump("redis_pipeline")
        _bump("redis_pipelined_commands", len(self.command_stack))
        for queued in self.command_stack:
            _bump(f"redis_pipelined:{queued[0][0]}")
        return await execute(self, raise_on_error)

    handle = aio.PubSub.handle_message

    async def counted_message(self: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        _bump("redis_pubsub_received")
        return await handle(self, response, *args, **kwargs)  # type: ignore[no-untyped-call]

    sync_command = sync.Redis.execute_command

    def counted_sync(self: Any, *args: Any, **options: Any) -> Any:
        _bump("redis_sync")
        _bump(f"redis_sync:{args[0]}")
        return sync_command(self, *args, **options)  # type: ignore[no-untyped-call]

    aio.Redis.execute_command = counted_command  # type: ignore[method-assign]
    aio.Pipeline.execute = counted_execute  # type: ignore[method-assign]
    aio.PubSub.handle_message = counted_message  # type: ignore[method-assign]
    sync.Redis.execute_command = counted_sync  # type: ignore[method-assign]


def keep_one_connection() -> None:
    """Open the default database in a thread of its own and keep it open, idle."""

    def hold() -> None:
        from django.db import connection

        connection.ensure_connection()
        threading.Event().wait()

    threading.Thread(target=hold, name="bench-keeper", daemon=True).start()


_snapshot: Any = None
_census: Counter[str] = Counter()
_malloc_at_mark: dict[str, int] = {}
_traced_at_mark: list[int] = [0]


def _malloc_info() -> dict[str, int]:
    """glibc's malloc: bytes in use and free in its arenas and in mmap'd blocks (every C
    allocation and Python's objects over 512 bytes; pymalloc's own arenas are apart)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"in use": info.uordblks, "free": info.fordblks, "mmap'd": info.hblkhd}


def _kinds() -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def _memory_mark() -> str:
    """Remember what is allocated now, and start tracing Python's allocations (if not yet
    and unless `BENCH_MEMORY_UNTRACED=1`: tracemalloc's own records go through malloc, so
    malloc's figures are only true without it)."""
    global _snapshot
    import tracemalloc

    if os.environ.get("BENCH_MEMORY_UNTRACED") != "1" and not tracemalloc.is_tracing():
        tracemalloc.start(40)
    gc.collect()
    _census.clear()
    _census.update(_kinds())
    _malloc_at_mark.clear()
    _malloc_at_mark.update(_malloc_info())
    _snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
        _traced_at_mark[:] = [tracemalloc.get_traced_memory()[0]]
    return "marked"


# Parts of a stream's memory, by the files on an allocation's way: the first that matches.
_PARTS = (
    ("the provider: SDK, HTTP client", ("/chat/providers/", "/openai/", "/aiohttp/", "/httpx2/")),
    ("revocation watch", ("/chat/revocation.py", "/channels/layers")),
    ("answer and stream log", ("/chat/generation.py", "/chat/streams/", "/chat/services.py")),
    ("views", ("/chat/views/",)),
    ("Django's request and response", ("/django/", "/chat/middleware.py", "/chat/handlers.py")),
    ("the server: daphne, Twisted", ("/twisted/", "/daphne/")),
)


def _part(traceback: Any) -> str:
    files = [frame.filename.replace(os.sep, "/") for frame in traceback]
    for name, markers in _PARTS:
        if any(marker in file for file in files for marker in markers):
            return name
    return "other"


def _memory_diff() -> str:
    """What was allocated since the mark: objects by type, malloc's figures, tasks, and
    (when traced) Python's allocations by where they were made (largest first)."""
    import tracemalloc

    gc.collect()
    grown = _kinds()
    grown.subtract(_census)
    lines = ["objects the collector tracks, by type (more since the mark):"]
    for kind, count in grown.most_common(40):
        lines.append(f"{count:9d}  {kind}")
    lines.append("\nglibc malloc since the mark (KiB; pymalloc's arenas are apart):")
    for key, value in _malloc_info().items():
        before = _malloc_at_mark.get(key, 0)
        lines.append(f"{(value - before) / 1024:9.0f}  {key} (now {value / 1024:.0f})")
    lines.append("\ntasks, by coroutine:")
    tasks = Counter(getattr(task.get_coro(), "__qualname__", "?") for task in asyncio.all_tasks())
    for name, count in tasks.most_common(15):
        lines.append(f"{count:9d}  {name}")
    if _snapshot is None or not tracemalloc.is_tracing():
        return "\n".join(lines) + "\n"
    now = tracemalloc.take_snapshot()
    if dump := os.environ.get("BENCH_MEMORY_SNAPSHOTS"):
        # For analysis beyond this summary: tracemalloc.Snapshot.load() each.
        _snapshot.dump(f"{dump}.mark")
        now.dump(f"{dump}.open")
    stats = now.compare_to(_snapshot, "traceback")
    total = sum(stat.size_diff for stat in stats)
    lines.append(f"\ntraced: {total / 1024:.0f} KiB in {sum(s.count_diff for s in stats)} blocks")
    current, peak = tracemalloc.get_traced_memory()
    lines.append(
        f"traced at most since the mark: {(peak - _traced_at_mark[0]) / 1024:.0f} KiB"
        f" (now {(current - _traced_at_mark[0]) / 1024:.0f})"
    )
    for stat in stats[:25]:
        lines.append(f"{stat.size_diff / 1024:8.1f} KiB {stat.count_diff:6d} blocks")
        lines += [f"      {frame.filename}:{frame.lineno}" for frame in stat.traceback[-6:]]
    lines.append("\nby part, for all streams (the first part any frame of the traceback names):")
    parts: Counter[str] = Counter()
    for stat in stats:
        parts[_part(stat.traceback)] += stat.size_diff
    for part, size in parts.most_common():
        lines.append(f"{size / 1024:8.1f} KiB  {part}")
    lines.append("\nby the app's line that led to it (the innermost in chat/):")
    by_app: dict[str, list[int]] = {}
    for stat in stats:
        app = [f for f in stat.traceback if f"{os.sep}chat{os.sep}" in f.filename]
        where = f"{app[-1].filename}:{app[-1].lineno}" if app else "(no app frame)"
        # tracemalloc's tracebacks list the most recent frame last.
        total_count = by_app.setdefault(where, [0, 0])
        total_count[0] += stat.size_diff
        total_count[1] += stat.count_diff
    for where, (size, count) in sorted(by_app.items(), key=lambda kv: -kv[1][0])[:30]:
        lines.append(f"{size / 1024:8.1f} KiB {count:6d} blocks  {where}")
    lines.append("\nby the line that allocated:")
    for stat in now.compare_to(_snapshot, "lineno")[:40]:
        frame = stat.traceback[0]
        lines.append(
            f"{stat.size_diff / 1024:8.1f} KiB {stat.count_diff:6d} blocks"
            f"  {frame.filename}:{frame.lineno}"
        )
    return "\n".join(lines) + "\n"


def _object_census() -> str:
    """The objects the garbage collector walks in a full pass (gc.freeze'd ones aside)."""
    gc.collect()
    tracked = gc.get_objects()
    kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in tracked)
    lines = [f"{len(tracked)} tracked objects, {gc.get_freeze_count()} frozen"]
    lines += [f"{count:9d}  {kind}" for kind, count in kinds.most_common(40)]
    return "\n".join(lines) + "\n"


def start_profiler() -> None:
    global _profiler
    from pyinstrument import Profiler

    _profiler = Profiler(interval=0.0005, async_mode="disabled")
    _profiler.start()


def _profile_report() -> str:
    global _profiler
    if _profiler is None:
        return "the profiler was not started\n"
    profiler, _profiler = _profiler, None
    profiler.stop()
    html = os.environ.get("BENCH_PROFILE_HTML")
    if html:
        with open(html, "w") as out:  # noqa: PTH123
            out.write(profiler.output_html())
    session = os.environ.get("BENCH_PROFILE_SESSION")
    if session and profiler.last_session is not None:
        profiler.last_session.save(session)  # for pyinstrument --load
    tree: str = profiler.output_text(unicode=True, color=False, time="percent_of_total")
    flat: str = profiler.output_text(unicode=True, color=False, flat=True, time="percent_of_total")
    return f"{tree}\n\n--- self time by function ---\n{flat}"


async def _answer(send: Send, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _watch_loop(every: float = 0.005) -> None:
    """Count how late the event loop wakes a sleeper: the stalls every stream feels."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        late = loop.time() - due
        with _lock:
            counts["loop_checks"] += 1
            for limit in (10, 20, 50, 100):
                if late * 1000 > limit:
                    counts[f"loop_late_over_{limit}ms"] += 1
            counts["loop_late_max_us"] = max(counts["loop_late_max_us"], int(late * 1e6))


_watcher: list[asyncio.Task[None]] = []
_gc_started: list[int] = [0, 0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    """Count the garbage collector's passes by generation, how long they stop everything
    (wall clock) and how much of that is the collector's own CPU (the rest: finalizers
    that let other threads run)."""
    if phase == "start":
        _gc_started[:] = [time.perf_counter_ns(), time.thread_time_ns()]
        return
    took_us = (time.perf_counter_ns() - _gc_started[0]) // 1000
    cpu_us = (time.thread_time_ns() - _gc_started[1]) // 1000
    generation = info["generation"]
    with _lock:
        counts[f"gc_gen{generation}"] += 1
        counts[f"gc_gen{generation}_us"] += took_us
        counts[f"gc_gen{generation}_cpu_us"] += cpu_us
        counts[f"gc_gen{generation}_collected"] += info.get("collected", 0)
        counts["gc_max_us"] = max(counts["gc_max_us"], took_us)


def install_gc_timer() -> None:
    gc.callbacks.append(_time_gc)


def _gauges() -> dict[str, int]:
    """What the server holds now (not counters): its tasks, timers, sockets, GC objects."""
    loop = asyncio.get_running_loop()
    gauges = {
        "now_tasks": len(asyncio.all_tasks(loop)),
        "now_timers": len(getattr(loop, "_scheduled", ())),
        "now_fds": sum(1 for _ in Path("/proc/self/fd").iterdir()),
    }
    # The objects the next full collection walks (gc.freeze() at start-up hid the rest).
    gauges["now_gc_objects"] = len(gc.get_objects(2))
    return gauges


def wrap(app: App) -> App:
    """`app`, plus the `/__bench__/` paths."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if not _watcher:
            _watcher.append(asyncio.get_running_loop().create_task(_watch_loop()))
        if scope["type"] == "http" and scope["path"].startswith("/__bench__/"):
            if scope["path"] == "/__bench__/memory/mark":
                await _answer(send, _memory_mark().encode(), b"text/plain")
            elif scope["path"] == "/__bench__/memory/diff":
                await _answer(send, _memory_diff().encode(), b"text/plain; charset=utf-8")
            elif scope["path"] == "/__bench__/objects":
                await _answer(send, _object_census().encode(), b"text/plain; charset=utf-8")
            elif scope["path"] == "/__bench__/profile/start":
                start_profiler()  # in the event loop's thread: the one to profile
                await _answer(send, b"started", b"text/plain")
            elif scope["path"] == "/__bench__/profile":
                await _answer(send, _profile_report().encode(), b"text/plain; charset=utf-8")
            else:
                with _lock:
                    snapshot = dict(counts) | _gauges()
                    counts["loop_late_max_us"] = 0  # a maximum per read, not a counter
                    counts["gc_max_us"] = 0
                await _answer(send, json.dumps(snapshot).encode(), b"application/json")
            return
        await app(scope, receive, send)

    return application
