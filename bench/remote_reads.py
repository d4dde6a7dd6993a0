"""The CPU a reader costs when its answer runs in another process (the Redis log).

With several server processes, most readers follow an answer that another process
generates: each frame reaches them through Redis (a wake-up, then a read). This runs
`ANSWERS` answers, a frame each every 40 ms, in one process with two Redis logs on one
event loop, once with every reader on the generating log (it reads from memory) and once
on the other log (it reads from Redis); the difference in CPU per frame is the cost of a
remote reader's frame. Usage (Redis at `REDIS_URL`, else 127.0.0.1:6379/0):

    uv run python bench/remote_reads.py [answers]
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django

django.setup()

from chat.events import Outcome  # noqa: E402
from chat.streams.redis import RedisStreamLog  # noqa: E402

REDIS = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
ANSWERS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
SECONDS = 5.0
FRAME_EVERY = 0.04  # the app's frame interval
DONE = Outcome("complete", "stop", 1, 1)


async def cpu_per_frame(remote: bool) -> float:
    """Microseconds of this process's CPU per frame, every frame read by one reader."""
    prefix = f"bench-{secrets.token_hex(4)}:"

    def new_log() -> RedisStreamLog:
        return RedisStreamLog(REDIS, prefix=prefix, retention=60, max_lifetime=60)

    writer = new_log()
    reader = new_log() if remote else writer
    answers = [uuid.uuid4() for _ in range(ANSWERS)]
    for message_id in answers:
        writer.open(message_id)

    async def follow(message_id: uuid.UUID) -> None:
        position = 0
        while True:
            chunk = await reader.read(message_id, position, 5, expected=True)
            if chunk is None:
                await asyncio.sleep(0.01)
                continue
            position = chunk.end
            if chunk.outcome is not None:
                return

    readers = [asyncio.create_task(follow(message_id)) for message_id in answers]
    await asyncio.sleep(0.3)
    frames = 0
    cpu, started = time.process_time(), time.monotonic()
    while time.monotonic() - started < SECONDS:
        for message_id in answers:
            writer.append(message_id, "word ")
        frames += len(answers)
        await asyncio.sleep(FRAME_EVERY)
    cpu = time.process_time() - cpu
    for message_id in answers:
        await writer.finish(message_id, DONE, "")
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for log in {writer, reader}:
        await log.aclose()
    return cpu * 1e6 / frames


async def main() -> None:
    print(f"{ANSWERS} answers, a frame each every {FRAME_EVERY * 1000:.0f} ms, {SECONDS:.0f} s")
    for _ in range(3):
        local, remote = await cpu_per_frame(False), await cpu_per_frame(True)
        print(
            f"  CPU per frame: readers in the generating process {local:.0f} µs, "
            f"in another {remote:.0f} µs: {remote - local:.0f} µs per remote reader's frame"
        )


asyncio.run(main())
