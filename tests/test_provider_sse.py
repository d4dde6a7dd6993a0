"""How provider streams are cut into events and decoded (chat.providers.sse)."""

from __future__ import annotations

import json

import pytest

from chat.providers.sse import EventSplitter, loads

STREAM = (
    b": a comment first\n\n"
    b'data: {"a": 1}\n\n'
    b'event: message_start\ndata: {"type": "message_start"}\n\n'
    b"data:no space\n\n"
    b"data: two\ndata: lines\n\n"
    b"id: 7\nretry: 100\n\n"  # no data: not an event
    b"event: ping\n: comment inside\ndata: {}\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = [
    ("", b'{"a": 1}'),
    ("message_start", b'{"type": "message_start"}'),
    ("", b"no space"),
    ("", b"two\nlines"),
    ("ping", b"{}"),
    ("", b"[DONE]"),
]


def split(stream: bytes, size: int) -> list[tuple[str, bytes]]:
    splitter = EventSplitter()
    events = []
    for start in range(0, len(stream), size):
        events += splitter.feed(stream[start : start + size])
    return events + splitter.finish()


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_events_are_the_same_however_the_bytes_arrive(size: int, newline: bytes) -> None:
    assert split(STREAM.replace(b"\n", newline), size) == EVENTS


def test_an_unfinished_event_waits_for_its_blank_line() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"a": 1}\n') == []
    assert splitter.feed(b"\r") == []  # the end of a line, or half of a CRLF
    assert splitter.feed(b"\ndata: x\r\n\r\n") == [("", b'{"a": 1}'), ("", b"x")]


def test_at_the_end_an_event_without_its_blank_line_is_dropped() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\r\rdata: 2\r") == [("", b"1")]
    assert splitter.finish() == []


def test_json_is_decoded() -> None:
    assert loads(b'{"text": "caf\\u00e9 \xf0\x9f\x98\x80", "n": [1, 2.5, null]}') == {
        "text": "café 😀",
        "n": [1, 2.5, None],
    }


def test_a_lone_surrogate_becomes_a_replacement_character() -> None:
    value = loads(b'{"text": "a\\ud800b", "pair": "\\ud83d\\ude00"}')
    assert value["pair"] == "😀"
    assert value["text"].startswith("a") and value["text"].endswith("b")
    assert "\ufffd" in value["text"]
    value["text"].encode()  # no surrogate is left: it can be written as UTF-8


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"a": 1} trailing', b"\xff"])
def test_what_is_not_json_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data)
    with pytest.raises(ValueError):
        json.loads(data)  # the same verdict as the standard parser's
