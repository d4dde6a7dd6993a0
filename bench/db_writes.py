"""Database writes per streamed answer: the send, the timed flushes, the final record.

Runs one demo answer in-process against a throwaway SQLite database and counts every
INSERT, UPDATE and DELETE, on whatever thread it runs (with the relay benchmark's
counter, `bench/instrument.py`; `BENCH_TRACE_SQL=1` names the app's function that ran
each). Usage:

    uv run python bench/db_writes.py [tokens_per_second]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["DJANGO_DEBUG"] = "1"
os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
os.environ["CHAT_DEMO_TOKENS_PER_SECOND"] = sys.argv[1] if len(sys.argv) > 1 else "30"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.instrument import counts, install_db_counter  # noqa: E402
from chat import services  # noqa: E402
from chat.generation import generation_start, generation_wait, run_db  # noqa: E402


async def main() -> None:
    # Before any thread opens its connection: the generation's threads keep theirs.
    install_db_counter()
    user = await User.objects.acreate(username="bench")
    conversation = await run_db(services.conversation_create, user=user)
    counts.clear()
    started = time.monotonic()
    _, assistant, plan = await run_db(
        services.message_send, user=user, conversation=conversation, content="Hello"
    )
    generation_start(plan)
    await generation_wait(assistant.id, 120)
    seconds = time.monotonic() - started
    message = await run_db(services.message_for, user=user, message_id=assistant.id)
    print(f"answer: {message.completion_tokens} tokens in {seconds:.1f} s, status {message.status}")
    writes = {key.split(":", 1)[1]: n for key, n in counts.items() if key.startswith("db_write:")}
    for kind, number in sorted(writes.items()):
        print(f"  {number:3d}  {kind}")
    print(f"total writes: {counts['db_write']}")


call_command("migrate", verbosity=0)
asyncio.run(main())
