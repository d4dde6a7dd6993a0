"""The ASGI handler reads request bodies as Django does, whole or in parts."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import RequestAborted

from chat.handlers import ChatASGIHandler


def receiving(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


async def test_a_body_in_one_message_reads_back_whole() -> None:
    body_file = await ChatASGIHandler().read_body(
        receiving({"type": "http.request", "body": b'{"content": "hi"}'})
    )
    assert body_file.read() == b'{"content": "hi"}'


async def test_a_request_without_a_body_reads_empty() -> None:
    body_file = await ChatASGIHandler().read_body(receiving({"type": "http.request"}))
    assert body_file.read() == b""


async def test_a_body_in_parts_reads_back_in_order() -> None:
    body_file = await ChatASGIHandler().read_body(
        receiving(
            {"type": "http.request", "body": b"one ", "more_body": True},
            {"type": "http.request", "body": b"two ", "more_body": True},
            {"type": "http.request", "body": b"three"},
        )
    )
    assert body_file.read() == b"one two three"


async def test_a_body_over_the_memory_limit_goes_the_spooled_way(settings: Any) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 8
    body_file = await ChatASGIHandler().read_body(
        receiving({"type": "http.request", "body": b"0123456789abcdef"})
    )
    assert body_file.read() == b"0123456789abcdef"
    assert body_file._rolled  # on disk, as Django keeps a large body


@pytest.mark.parametrize("parts_before", [0, 1])
async def test_a_client_that_leaves_mid_body_aborts_the_request(parts_before: int) -> None:
    parts = [{"type": "http.request", "body": b"part", "more_body": True}] * parts_before
    with pytest.raises(RequestAborted):
        await ChatASGIHandler().read_body(receiving(*parts, {"type": "http.disconnect"}))
