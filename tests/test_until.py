"""`until`: a stream's items until its reader's sign-in ends (chat.revocation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chat.revocation import until


class Source:
    """Items on demand; records whether its clean-up ran."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    async def run(self) -> AsyncIterator[str]:
        try:
            while (item := await self.items.get()) is not None:
                yield item
        finally:
            self.closed = True


async def test_items_pass_in_order_and_the_end_ends_it() -> None:
    source = Source()
    for item in ("a", "b", None):
        source.items.put_nowait(item)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    assert [item async for item in until(source.run(), stop)] == ["a", "b"]
    assert source.closed


async def test_a_stop_ends_a_waiting_source_at_once_and_leaves_the_caller_uncancelled() -> None:
    source = Source()
    source.items.put_nowait("a")
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    got = []

    async def read() -> None:
        async for item in until(source.run(), stop):
            got.append(item)
            asyncio.get_running_loop().call_later(0.05, stop.set_result, None)
        # The caller goes on as if nothing had been cancelled.
        await asyncio.sleep(0.01)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    await asyncio.wait_for(read(), 2)
    assert got == ["a"]
    assert source.closed


async def test_a_stop_while_the_caller_is_busy_elsewhere_touches_nothing_there() -> None:
    source = Source()
    source.items.put_nowait("a")
    source.items.put_nowait("b")
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    got = []

    async for item in until(source.run(), stop):
        got.append(item)
        stop.set_result(None)
        await asyncio.sleep(0.02)  # not interrupted: the stop's callback ran meanwhile

    assert got == ["a"]  # and "b" was not asked for
    assert source.closed


async def test_a_cancel_from_elsewhere_is_not_swallowed() -> None:
    source = Source()
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async for _item in until(source.run(), stop):
            pass

    task = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    task.cancel()
    stop.set_result(None)  # both at once: the task must still end cancelled
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed
