"""Conversation titles, asked of the conversation's own model after its first answer.

Until then a conversation is titled by its first message. Once the first answer has
completed, a background task sends the model one small request that nobody watches (the
exchange, and an instruction to name it) and records the reply through a service. The
task never touches the answer: whatever goes wrong, the first message stays the title.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re

from django.conf import settings

from chat import services
from chat.providers import registry
from chat.providers.base import ChatRequest, ProviderError, Turn

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You name conversations. Reply with a title of 3 to 6 words, in the language of the "
    "conversation, and nothing else."
)
INSTRUCTION = (
    "Write a title of 3 to 6 words for this conversation. Reply with the title only: no quotes, "
    "no final punctuation."
)
# Enough for six words in any language; the title is cut to TITLE_CHARS anyway.
MAX_OUTPUT_TOKENS = 30
# Seconds the model gets; a title that comes later would come after the page stops
# looking for it (services.TITLE_WAIT_SECONDS).
TIMEOUT_SECONDS = 20.0
# Characters of each side of the exchange the model sees: the gist, at a small cost.
EXCERPT_CHARS = 2000

_LABEL = re.compile(r"^(?:title|titre|titel|título|titolo)\s*:\s*", re.IGNORECASE)
# Quotes of several languages, and Markdown's emphasis and code marks.
_WRAPPERS = "\"'`*_\u201c\u201d\u2018\u2019\u00ab\u00bb\u201e"

# Running title tasks: the event loop keeps only weak references to tasks.
_tasks: set[asyncio.Task[None]] = set()


def title_start(plan: services.GenerationPlan, answer: str) -> None:
    """After an answer completed: if it answers the conversation's first message, title
    the conversation in the background. Call it on the event loop."""
    if not settings.CHAT_TITLES or len(plan.request.turns) != 1:
        return
    # A fresh context, as for the generation: nothing of the caller's must outlive it.
    task = asyncio.create_task(_title(plan, answer), context=contextvars.Context())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def titles_wait(seconds: float) -> None:
    """Wait (at most `seconds`) for the titles this process is generating."""
    if _tasks:
        await asyncio.wait(set(_tasks), timeout=seconds)


def title_request(plan: services.GenerationPlan, answer: str) -> ChatRequest:
    """The request that asks the answer's model to name the exchange."""
    question = plan.request.turns[0].content
    return ChatRequest(
        model=plan.request.model,
        system_prompt=SYSTEM_PROMPT,
        turns=(
            Turn(role="user", content=question[:EXCERPT_CHARS]),
            Turn(role="assistant", content=answer[:EXCERPT_CHARS]),
            Turn(role="user", content=INSTRUCTION),
        ),
        max_output_tokens=MAX_OUTPUT_TOKENS,
    )


def title_clean(reply: str) -> str:
    """The title in a model's reply: its first line, without a "Title:" label, Markdown
    marks or quotes around it. Empty when there is none."""
    line = next((line for line in reply.splitlines() if line.strip()), "")
    line = _LABEL.sub("", line.strip().lstrip("#").strip())
    return " ".join(line.strip(_WRAPPERS + " ").split())


async def _title(plan: services.GenerationPlan, answer: str) -> None:
    # Imported here: the generation module starts this one's tasks.
    from chat.generation import run_db

    try:
        if not await run_db(services.conversation_title_wanted, message_id=plan.message_id):
            return
        title = await _ask(plan, answer)
        await run_db(services.conversation_title_generated, message_id=plan.message_id, title=title)
    except Exception:
        # A background task has nobody to report to: log, and the placeholder stays.
        logger.exception("title failed message=%s", plan.message_id)


async def _ask(plan: services.GenerationPlan, answer: str) -> str | None:
    choice = registry.model_choice(plan.model)
    if choice is None:
        return None
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            reply = await registry.provider_for(choice).complete(title_request(plan, answer))
    except TimeoutError:
        logger.info("title timed out message=%s model=%s", plan.message_id, plan.model)
        return None
    except ProviderError as error:
        logger.info(
            "title refused message=%s model=%s error=%s", plan.message_id, plan.model, error.code
        )
        return None
    return title_clean(reply) or None
