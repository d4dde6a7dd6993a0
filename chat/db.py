"""Database connections for work that outlives a request's usual few milliseconds.

Django opens a connection per thread on first use and closes it when a request ends.
An event stream is one request that lasts minutes, and the generation's worker threads
never end: left alone, each would hold a connection (or a slot of the pool) for its
whole life, though it touches the database once a second at most.
"""

from __future__ import annotations

from django.db import connections


def release_connections() -> None:
    """Close this thread's connections now; with a pool, they go back to it.

    A connection inside a transaction is left alone: its owner is still using it (and a
    test's transaction must survive a view that runs in the test's own thread).
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
