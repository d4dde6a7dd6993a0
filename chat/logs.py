"""Structured log lines: an event name and fields, readable as text or parsed as JSON.

`log_event` writes one line, `<event> key=value ...`, and keeps the fields on the record,
so `JsonFormatter` (CHAT_LOG_FORMAT=json) can emit them as JSON keys instead. Loaded by
the logging configuration before the app registry: no Django imports here.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FIELDS = "chat_fields"  # the record attribute that carries an event's fields
EVENT = "chat_event"

_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+")


def _text(value: Any) -> str:
    """A value as one key=value token: `-` for nothing, JSON-quoted when it needs it."""
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if set(text) <= _PLAIN else json.dumps(text, ensure_ascii=False)


def key_values(fields: dict[str, Any]) -> str:
    return " ".join(f"{key}={_text(value)}" for key, value in fields.items())


def log_event(
    logger: logging.Logger,
    event: str,
    *,
    level: int = logging.INFO,
    exc_info: bool | BaseException = False,
    **fields: Any,
) -> None:
    """Log `event` with `fields` as one structured line."""
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "%s %s",
            event,
            key_values(fields),
            exc_info=exc_info,
            extra={EVENT: event, FIELDS: fields},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and the event's fields or message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        event = getattr(record, EVENT, None)
        if event is not None:
            line["event"] = event
            line.update(getattr(record, FIELDS, {}))
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
