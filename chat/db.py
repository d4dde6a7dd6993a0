"""Database connections for work that outlives a request's usual few milliseconds.

Django opens a connection per thread on first use and closes it when a request ends.
An event stream is one request that lasts minutes, and the generation's worker threads
never end: left alone, each would hold a connection (or a slot of the pool) for its
whole life, though it touches the database once a second at most.
"""

from __future__ import annotations

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


def holds_server_connections() -> bool:
    """False when every database is SQLite: release_connections(keep_sqlite=True) has
    nothing to do then, and callers on the event loop can skip the trip to a thread."""
    # Read from the settings: `connections[alias]` would build a connection object for
    # the calling context, which on the event loop is each request's own (~1.6 KiB each).
    return any("sqlite" not in database["ENGINE"] for database in connections.settings.values())
