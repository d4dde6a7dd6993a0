"""A long stream uses the database for moments, and holds no connection in between.

An answer streams for minutes; its generation writes once a second and its readers look
at the database only when the answer falls silent. Each of those threads must give its
connection back (to PostgreSQL's pool, or closed) after every use, or a busy server runs
out of connections.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.db import connections
from django.db.backends.signals import connection_created

from chat import generation
from chat.db import holds_server_connections
from chat.handlers import ChatASGIHandler, request_threads
from chat.models import Message
from chat.providers.base import Finish, Usage
from tests.helpers import ChatApi, ScriptedProvider, eventually, http_scope

pytestmark = pytest.mark.django_db(transaction=True)


def _holds_connection() -> bool:
    return any(c.connection is not None for c in connections.all(initialized_only=True))


async def _generation_threads_holding_one() -> list[str]:
    """The generation's database threads that hold a connection right now."""
    pool = generation._db_pool
    workers = pool._max_workers
    # Every probe waits for the others, so each runs in a thread of its own: all of them.
    barrier = threading.Barrier(workers, timeout=5)

    def probe() -> tuple[str, bool]:
        barrier.wait()
        return threading.current_thread().name, _holds_connection()

    loop = asyncio.get_running_loop()
    found = await asyncio.gather(*(loop.run_in_executor(pool, probe) for _ in range(workers)))
    assert len({name for name, _ in found}) == workers
    return [name for name, held in found if held]


def _pool_connections_in_use() -> int | None:
    """Connections lent by PostgreSQL's pool and not yet given back (None: no pool)."""
    pool = getattr(connections["default"], "pool", None)
    if pool is None:
        return None
    stats = pool.get_stats()
    return int(stats["pool_size"] - stats["pool_available"])


async def test_a_long_stream_holds_no_connection_between_flushes(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_FLUSH_INTERVAL = 0.05
    # While the answer is silent its reader checks the database at every ping.
    settings.CHAT_PING_INTERVAL = 0.05
    lent_before = _pool_connections_in_use()
    gate = asyncio.Event()
    scripted.script = ["Half ", "of it", gate, " and the rest", Usage(3, 4), Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    stream = await api.open_stream(message["id"])
    try:
        await stream.read(until=lambda s: s.text == "Half of it")

        async def flushed() -> bool:
            row = await generation.run_db(Message.objects.get, id=message["id"])
            return row.content == "Half of it"

        await eventually(flushed)
        await stream.read(until=lambda s: s.pings >= 3)
        assert generation.is_running(uuid.UUID(message["id"])), "the answer is still going"

        if connections["default"].vendor != "sqlite":
            # The thread the stream's request runs its database work in (the test
            # client's here, one of the request threads under a server) holds none, nor
            # do the generation's. (SQLite's connections are file handles, kept open by
            # these few long-lived threads: see below.)
            assert not await sync_to_async(_holds_connection)()
            assert await _generation_threads_holding_one() == []
        # With PostgreSQL's pool: no more connections lent than before the answer began
        # (the test's own, which made the user).
        await eventually(lambda: _pool_connections_in_use() == lent_before)

        gate.set()
        await stream.read_to_end()
    finally:
        await stream.close()
    assert stream.text == "Half of it and the rest"
    assert (await api.finished(message["id"]))["content"] == "Half of it and the rest"


async def test_with_sqlite_the_generation_reuses_its_connections_across_flushes(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    if connections["default"].vendor != "sqlite":
        pytest.skip("PostgreSQL connections go back to the pool after every write")
    settings.CHAT_FLUSH_INTERVAL = 0.02
    opened: list[str] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("chat-db"):
            opened.append(threading.current_thread().name)

    gate = asyncio.Event()
    scripted.script = [*(f"word{n} " for n in range(5)), gate, "end", Usage(1, 6), Finish("stop")]
    connection_created.connect(count)
    try:
        message = await api.ask(model=scripted.model_id)

        async def flushes_so_far() -> int:
            row = await generation.run_db(Message.objects.get, id=message["id"])
            return 1 if row.content else 0

        await eventually(flushes_so_far)
        await asyncio.sleep(0.3)  # about fifteen flushes of the unchanged text and heartbeat
        gate.set()
        assert (await api.finished(message["id"]))["content"].endswith("end")
    finally:
        connection_created.disconnect(count)
    # Each of the pool's threads opened its connection once at most, however many flushes.
    assert len(opened) == len(set(opened)) <= generation._db_pool._max_workers


def _stream_scope(message_id: str, cookie: str) -> dict[str, Any]:
    return http_scope(f"/api/messages/{message_id}/stream", [(b"cookie", cookie.encode())])


async def test_open_event_streams_start_no_threads_of_their_own(
    api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    # Stock Django starts a thread per request for its sync work, kept until the response
    # ends: minutes, for an event stream. The app's handler runs that work on a fixed set
    # of threads instead, however many streams are open and however often they look at
    # the database (here: every 50 ms, while the answer is silent).
    settings.CHAT_PING_INTERVAL = 0.05
    gate = asyncio.Event()
    scripted.script = ["Half", gate, " done", Finish("stop")]
    message = await api.ask(model=scripted.model_id)
    cookie = (
        f"{settings.SESSION_COOKIE_NAME}={api.client.cookies[settings.SESSION_COOKIE_NAME].value}"
    )
    before = set(threading.enumerate())
    opened_on: list[str] = []

    def opened(**kwargs: Any) -> None:
        opened_on.append(threading.current_thread().name)

    connection_created.connect(opened, weak=False)
    handler = ChatASGIHandler()
    streams = [
        ApplicationCommunicator(handler, _stream_scope(message["id"], cookie)) for _ in range(12)
    ]
    try:
        for stream in streams:
            await stream.send_input({"type": "http.request"})
            assert (await stream.receive_output(5))["status"] == 200
            assert (await stream.receive_output(5))["body"].startswith(b"retry:")
        received = [b"" for _ in streams]
        for i, stream in enumerate(streams):
            while b": ping" not in received[i]:
                received[i] += (await stream.receive_output(5))["body"]
        # Twelve open streams, silent and pinging: their queries ran on request threads,
        # and those are the only threads there are now that were not before.
        # (The generation writes from threads of its own.)
        readers = [name for name in opened_on if not name.startswith("chat-db")]
        assert readers and all(name.startswith("chat-request-") for name in readers), readers
        if connections["default"].vendor == "sqlite":
            # Each thread opened its file handle once at most, and keeps it.
            assert len(readers) == len(set(readers)), readers
        started = set(threading.enumerate()) - before
        assert all(thread.name.startswith("chat-request-") for thread in started), started
        assert len(started) <= len(request_threads.executors)
        gate.set()
        for i, stream in enumerate(streams):
            while b"event: final" not in received[i]:
                received[i] += (await stream.receive_output(5)).get("body", b"")
            assert b"Half" in received[i] and b" done" in received[i]
        assert set(threading.enumerate()) - before <= started
    finally:
        connection_created.disconnect(opened)
        for stream in streams:
            await stream.send_input({"type": "http.disconnect"})
            await stream.wait(5)


def test_asking_whether_connections_are_worth_releasing_builds_none() -> None:
    answers: list[tuple[bool, int]] = []

    def probe() -> None:  # a thread of its own: a context with no connection objects yet
        held = holds_server_connections()
        answers.append((held, len(connections.all(initialized_only=True))))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert answers == [(connections["default"].vendor != "sqlite", 0)]
