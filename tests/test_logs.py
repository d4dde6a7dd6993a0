"""Structured logs: one line per generation start and end, as key=value text or JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chat.logs import EVENT, JsonFormatter, key_values
from chat.providers.base import ProviderError
from tests.helpers import ChatApi, ScriptedProvider

ROOT = Path(__file__).resolve().parent.parent


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, EVENT, None) == name]


@pytest.mark.django_db(transaction=True)
async def test_a_generation_logs_one_start_and_one_end_line(
    api: ChatApi, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.generation")

    answer = await api.ask("Hello")
    message = await api.finished(answer["id"])

    [start] = events(caplog, "generation_start")
    [end] = events(caplog, "generation_end")
    assert start.getMessage() == (
        f"generation_start message_id={answer['id']} user_id={user.pk} model=demo:demo"
    )
    usage = message["usage"]
    assert end.getMessage() == (
        f"generation_end message_id={answer['id']} user_id={user.pk} model=demo:demo "
        f"status=complete finish_reason={message['finish_reason']} error_code=- "
        f"prompt_tokens={usage['prompt_tokens']} completion_tokens={usage['completion_tokens']} "
        f"ttft_ms={message['ttft_ms']} duration_ms={message['duration_ms']} "
        f"chars={len(message['content'])}"
    )
    line = json.loads(JsonFormatter().format(end))
    assert line["event"] == "generation_end"
    assert line["level"] == "INFO"
    assert line["logger"] == "chat.generation"
    assert line["message_id"] == answer["id"]
    assert line["user_id"] == user.pk
    assert line["status"] == "complete"
    assert line["completion_tokens"] == usage["completion_tokens"]
    assert line["ttft_ms"] == message["ttft_ms"]
    assert line["error_code"] == ""


@pytest.mark.django_db(transaction=True)
async def test_a_failed_generation_logs_its_error_code(
    api: ChatApi, scripted: ScriptedProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.generation")
    scripted.script = [ProviderError("auth", "The API key was refused.")]

    answer = await api.ask(model=scripted.model_id)
    await api.finished(answer["id"])

    [end] = events(caplog, "generation_end")
    assert " status=error " in end.getMessage()
    assert " error_code=auth " in end.getMessage()
    assert " ttft_ms=- " in end.getMessage()  # no text ever came


def test_values_that_need_it_are_quoted() -> None:
    assert key_values({"a": 1, "b": None, "c": "", "d": "openai:gpt-4o"}) == (
        "a=1 b=- c=- d=openai:gpt-4o"
    )
    assert key_values({"text": 'two words "quoted"', "eq": "a=b"}) == (
        'text="two words \\"quoted\\"" eq="a=b"'
    )


def test_the_json_formatter_keeps_ordinary_records_and_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "chat.other", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )

    line = json.loads(JsonFormatter().format(record))

    assert line["message"] == "failed here"
    assert line["level"] == "ERROR"
    assert "ValueError: boom" in line["exception"]


LOG_ONE_EVENT = """
import django, logging
django.setup()
from chat.logs import log_event
log_event(logging.getLogger("chat.generation"), "generation_end", message_id="m1", ttft_ms=42)
"""


def run_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    return subprocess.run(
        [sys.executable, "-c", LOG_ONE_EVENT],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatsite.settings", "DJANGO_DEBUG": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_chat_log_format_json_writes_json_lines() -> None:
    result = run_settings({"CHAT_LOG_FORMAT": "json"})

    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["event"] == "generation_end"
    assert line["message_id"] == "m1"
    assert line["ttft_ms"] == 42


def test_the_default_log_format_is_key_value_text() -> None:
    result = run_settings({"CHAT_LOG_FORMAT": ""})  # empty, as in .env.example

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith(
        "INFO chat.generation generation_end message_id=m1 ttft_ms=42"
    )


def test_an_unknown_log_format_refuses_to_start() -> None:
    result = run_settings({"CHAT_LOG_FORMAT": "xml"})

    assert result.returncode != 0
    assert "CHAT_LOG_FORMAT must be text or json" in result.stderr
