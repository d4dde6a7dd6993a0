"""The app as the benchmark serves it: `chatsite.asgi.application`, with counters.

The counters (bench/instrument.py) are installed before the app is imported, and the
`/__bench__/` paths are answered in front of it; every other request and socket goes to
the app untouched.

    daphne bench.app_asgi:application

Two switches try out a change before anyone makes it in the app (off by default):

- `BENCH_KEEP_GENERATION_DB=1`: the generation's writer threads keep their database
  connection between flushes (with SQLite, reopening one costs ~1-3 ms of CPU);
- `BENCH_SQLITE_KEEPER=1`: one idle SQLite connection stays open for the process's life,
  so that no unit of work closes the last one (which checkpoints and drops the WAL).

    BENCH_KEEP_GENERATION_DB=1 make bench
"""

from __future__ import annotations

import os
from typing import Any

from bench import instrument

instrument.install_redis_counter()
instrument.install_db_counter()
instrument.install_gc_timer()
instrument.install_thread_tracer()

from chatsite.asgi import application as chat_application  # noqa: E402

application = instrument.wrap(chat_application)

if os.environ.get("BENCH_KEEP_GENERATION_DB") == "1":
    # An experiment, not the app: the generation's four writer threads keep their
    # database connection between flushes instead of closing it after each.
    from chat import generation

    def keep(**kwargs: Any) -> None:
        return None

    generation.close_old_connections = keep  # type: ignore[attr-defined]

if os.environ.get("BENCH_SQLITE_KEEPER") == "1":
    # An experiment, not the app: one idle SQLite connection held for the process's life,
    # so that closing a unit of work's connection never closes the database's last one
    # (which checkpoints and deletes the WAL file each time).
    instrument.keep_one_connection()
