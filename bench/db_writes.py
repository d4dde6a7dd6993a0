"""Database writes per streamed answer: the send, the timed flushes, the final record.

Runs one demo answer in-process against a throwaway SQLite database and counts every
INSERT and UPDATE, on whatever thread it runs. Usage:

    uv run python bench/db_writes.py [tokens_per_second]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["DJANGO_DEBUG"] = "1"
os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
os.environ["CHAT_DEMO_TOKENS_PER_SECOND"] = sys.argv[1] if len(sys.argv) > 1 else "30"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db.backends.signals import connection_created  # noqa: E402

from chat import services  # noqa: E402
from chat.generation import generation_start, generation_wait, run_db  # noqa: E402

writes: Counter[str] = Counter()


def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    verb = sql.lstrip().split(" ", 1)[0].upper()
    if verb in {"INSERT", "UPDATE", "DELETE"}:
        table = sql.split('"')[1] if '"' in sql else "?"
        if many:
            params = list(params)  # one statement, a row written for each
        writes[f"{verb} {table}"] += len(params) if many else 1
        if os.environ.get("BENCH_TRACE"):
            print(time.monotonic(), sql[:120])
    return execute(sql, params, many, context)


def watch(sender: Any, connection: Any, **kwargs: Any) -> None:
    # The same wrapper object reconnects for every unit of work: wrap it once.
    if count not in connection.execute_wrappers:
        connection.execute_wrappers.append(count)


async def main() -> None:
    # Before any thread opens its connection: the generation's threads keep theirs.
    connection_created.connect(watch)
    user = await User.objects.acreate(username="bench")
    conversation = await run_db(services.conversation_create, user=user)
    writes.clear()
    started = time.monotonic()
    _, assistant, plan = await run_db(
        services.message_send, user=user, conversation=conversation, content="Hello"
    )
    generation_start(plan)
    await generation_wait(assistant.id, 120)
    seconds = time.monotonic() - started
    message = await run_db(services.message_for, user=user, message_id=assistant.id)
    print(f"answer: {message.completion_tokens} tokens in {seconds:.1f} s, status {message.status}")
    for kind, number in sorted(writes.items()):
        print(f"  {number:3d}  {kind}")
    print(f"total writes: {sum(writes.values())}")


call_command("migrate", verbosity=0)
asyncio.run(main())
