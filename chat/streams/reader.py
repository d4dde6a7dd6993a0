"""Follow one message's stream from a resume point: the logic shared by SSE and WebSocket.

The reader only reads. It takes text from the stream log while the log holds the
message, and from the database once it does not (finished long ago, or another process
died with it), so the same ids mean the same text from either source.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

from chat import services
from chat.db import release_connections
from chat.events import (
    Event,
    Outcome,
    final_id,
    replay_tokens,
    reset_event,
    start_event,
    terminal_events,
    token_event,
)
from chat.models import Message
from chat.rendering import Block, LiveMarkdown, render_markdown
from chat.streams import get_stream_log


@dataclass(frozen=True, slots=True)
class Ping:
    """Nothing happened for a while; transports send a keep-alive."""


PING = Ping()

# How long a reader waits before looking again for an answer the stream log does not know.
ABSENT_WAIT_MIN = 0.01
ABSENT_WAIT_MAX = 0.25
# How long a read waits for an answer the database says runs to appear in the log.
EXPECTED_WAIT = 1.0


def _reload(message_id: uuid.UUID) -> Message:
    try:
        message = Message.objects.get(id=message_id)
        return services.message_check_alive(message=message)
    finally:
        # A reader may wait minutes between two looks at the database: hold no
        # connection in between.
        release_connections(keep_sqlite=True)


def is_finished_at(message: Message, after: int | None) -> bool:
    """True when `after` is the final event of a finished message: nothing follows."""
    return (
        after is not None
        and message.status in Message.TERMINAL_STATUSES
        and after == final_id(len(message.content))
    )


async def follow(
    message: Message, after: int | None, *, reset: bool = False, rendered: int | None = None
) -> AsyncIterator[Event | Ping]:
    """The events after `after` (all of them when None), ending with `final`.

    `message` must already be checked for access. With `reset` the reader's position is
    unusable: it gets a `reset` with the text so far, then what follows. `rendered` is
    where the client's formatted blocks end (see chat.events); without it a resuming
    client is assumed to have formatted what a reader from the start would have.
    """
    log = get_stream_log()
    message_id = message.id
    if after is None and not reset:
        yield start_event(str(message_id), message.model)
    # An open reader keeps no model instance (nor its conversation) while it waits: the
    # database's word is fetched again when it is needed.
    del message
    position = 0 if after is None else after
    last_ping = time.monotonic()
    live: LiveMarkdown | None = LiveMarkdown() if position == 0 else None
    caught_up: list[Block] = []
    absent_wait = ABSENT_WAIT_MIN
    expected = False  # the database said the answer runs, but the log had not got it yet

    async with log.reading(message_id):
        while True:
            # A pending reset goes out at once, even before the answer has any text.
            wait = 0 if reset else settings.CHAT_PING_INTERVAL
            if expected:
                # Not for long: the database also knows when a generation died unseen.
                wait = min(wait, EXPECTED_WAIT)
            chunk = await log.read(message_id, position, wait, expected=expected)
            if chunk is not None:
                expected = False
            silent = chunk is not None and not (chunk.text or chunk.outcome or chunk.beyond)
            if chunk is None or (silent and not reset):
                # Not in the log (finished long ago, not started yet, or its process
                # died), or silent: the database says whether it is still alive.
                stored = await sync_to_async(_reload)(message_id)
                if stored.status in Message.TERMINAL_STATUSES:
                    break
                if silent or time.monotonic() - last_ping >= settings.CHAT_PING_INTERVAL:
                    last_ping = time.monotonic()
                    yield PING
                if chunk is None:
                    # Most often the answer has only just begun and its first write to
                    # the log is on its way: wait for it (a log that can tell, does),
                    # looking again soon, then less and less often.
                    if not expected:
                        expected = True
                        continue
                    await asyncio.sleep(absent_wait)
                    absent_wait = min(absent_wait * 2, ABSENT_WAIT_MAX)
                continue
            if reset or chunk.beyond:
                whole = await log.read(message_id, 0, 0)
                if whole is None:  # gone from the log meanwhile: the database has it
                    stored = await sync_to_async(_reload)(message_id)
                    break
                live, blocks = LiveMarkdown.resume(whole.text)
                yield reset_event(whole.text, blocks)
                reset, position = False, whole.end
                continue
            if chunk.text:
                if live is None:
                    whole = await log.read(message_id, 0, 0)
                    seen = whole.text[:position] if whole is not None else ""
                    live, caught_up = _resume_live(seen, rendered)
                blocks = [*caught_up, *live.feed(chunk.text)]
                caught_up = []
                yield token_event(chunk.text, chunk.end, blocks)
                position = chunk.end
            if chunk.outcome is not None:
                whole = await log.read(message_id, 0, 0)
                content = whole.text if whole is not None else ""
                for event in _ending(content, chunk.outcome, chunk.html, position):
                    yield event
                return

    # The database has the answer's end: it finished long ago, or its process died.
    content = stored.content
    if reset:
        yield reset_event(content)
        position = len(content)
    elif position <= len(content):
        for event in replay_tokens(content, position):
            yield event
    outcome = services.message_outcome(message=stored)
    for event in _ending(content, outcome, render_markdown(content), position):
        yield event


def _resume_live(seen: str, rendered: int | None) -> tuple[LiveMarkdown, list[Block]]:
    """Live formatting for a reader that resumes with `seen` already on its page."""
    if rendered is None or not 0 <= rendered <= len(seen):
        live, _ = LiveMarkdown.resume(seen)
        return live, []
    return LiveMarkdown.resume(seen[rendered:], rendered)


def _ending(content: str, outcome: Outcome, html: str, position: int) -> list[Event]:
    """The terminal events after `position`, with a `reset` first if it is impossible."""
    events = []
    if position > final_id(len(content)):
        events.append(reset_event(content))
        position = len(content)
    return events + terminal_events(content, outcome, html, position)
