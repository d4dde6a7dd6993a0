"""Database connections for work that outlives a request's usual few milliseconds.

Django opens a connection per thread on first use and closes it when a request ends.
An event stream is one request that lasts minutes, and the generation's worker threads
never end: left alone, each would hold a connection (or a slot of the pool) for its
whole life, though it touches the database once a second at most.
"""

from __future__ import annotations

from asgiref.sync import SyncToAsync
from django.db import connections


def release_connections(*, keep_sqlite: bool = False) -> None:
    """Close this thread's connections now; with a pool, they go back to it.

    A connection inside a transaction is left alone: its owner is still using it (and a
    test's transaction must survive a view that runs in the test's own thread). With
    `keep_sqlite`, an SQLite connection stays open: it is a file handle, not a server's
    slot, and reopening it costs more than the write it serves (each open, and each last
    close, also checkpoints the write-ahead log).
    """
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        if keep_sqlite and connection.vendor == "sqlite" and not connection.errors_occurred:
            continue
        connection.close()


def release_request_thread() -> None:
    """Let the worker thread of the current request (or socket) end, while it idles.

    Under ASGI each request gets a thread of its own for its thread-sensitive sync
    calls, kept until the response ends. An event stream would hold one idle thread for
    minutes: its stack and what its allocations pin, about 60-100 KiB of RSS per open
    stream as measured by `make bench` (200 idle streams held 207 threads, now 7).
    Call this after such a call returns: a later one starts a fresh thread for the same
    context (asgiref's own behaviour), which ends at the next call of this. Calls that
    another thread owns (a test's, via async_to_sync) are left alone: only the
    context's own executor is shut down.
    """
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is None:
        return
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)
