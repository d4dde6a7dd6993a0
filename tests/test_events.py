"""The contract's events: ids as answer offsets, and their SSE and WebSocket encodings."""

from __future__ import annotations

import pytest

from chat.events import (
    REPLAY_CHUNK_CHARS,
    SSE_PING,
    Event,
    Outcome,
    final_id,
    parse_event_id,
    replay_tokens,
    reset_event,
    start_event,
    terminal_events,
    token_event,
)
from tests.helpers import SSEComment, SSEEvent, SSEParser, assert_ids_increase

TEXT = "Hello, wörld 😀"  # 14 code points
ERRORED = Outcome(
    "error", "error", 5, 3, error_code="upstream", error_message="Down", retryable=True
)


def parse(data: bytes) -> list[SSEEvent | SSEComment]:
    return SSEParser().feed(data)


def test_sse_encoding_is_one_event_with_id_name_and_one_json_data_line() -> None:
    event = token_event("a\nb\r\nc", 5)

    assert event.sse() == b'id: 5\nevent: token\ndata: {"text":"a\\nb\\r\\nc"}\n\n'
    assert parse(event.sse()) == [SSEEvent(5, "token", {"text": "a\nb\r\nc"})]


@pytest.mark.parametrize(
    "text",
    [
        "\n\n",
        "\r",
        "data: x\n\nevent: final\n",
        ": comment",
        "  spaced",
        "👩‍👩‍👧 漢字 e\u0301",
        "\u2028\u2029\u0085",
        '"\\',
        "\x00\x1f",
    ],
)
def test_any_text_survives_the_sse_encoding(text: str) -> None:
    encoded = token_event(text, len(text)).sse()

    assert encoded.count(b"\n\n") == 1 and encoded.endswith(b"\n\n")
    assert b"\r" not in encoded
    assert parse(encoded) == [SSEEvent(len(text), "token", {"text": text})]


def test_non_ascii_is_sent_as_utf8_not_escapes() -> None:
    assert "😀".encode() in token_event("😀", 1).sse()


def test_a_lone_surrogate_cannot_break_the_encoding() -> None:
    # UTF-8 cannot hold one; the event still goes out, with "?" in its place.
    assert parse(token_event("a\ud800b", 3).sse()) == [SSEEvent(3, "token", {"text": "a?b"})]


def test_the_ping_is_a_comment() -> None:
    assert parse(SSE_PING) == [SSEComment("ping")]


def test_websocket_form_carries_type_message_and_id() -> None:
    event = token_event("hi", 2)
    assert event.ws("m-1") == {"type": "token", "message_id": "m-1", "id": 2, "text": "hi"}


def test_start_and_reset_ids() -> None:
    assert start_event("m", "demo:demo") == Event(
        0, "start", {"message_id": "m", "model": "demo:demo"}
    )
    assert reset_event(TEXT) == Event(len(TEXT), "reset", {"content": TEXT})


def test_terminal_event_ids_follow_the_answer_length() -> None:
    events = terminal_events(TEXT, ERRORED, "<p>x</p>", after=len(TEXT))

    assert [(e.id, e.name) for e in events] == [(15, "usage"), (16, "error"), (17, "final")]
    assert final_id(len(TEXT)) == 17
    usage, error, final = (e.data for e in events)
    assert usage == {"prompt_tokens": 5, "completion_tokens": 3}
    assert error == {"code": "upstream", "message": "Down", "retryable": True}
    assert final == {
        "status": "error",
        "finish_reason": "error",
        "content": TEXT,
        "html": "<p>x</p>",
        "ttft_ms": None,
        "duration_ms": None,
    }


def test_terminal_events_skip_what_the_reader_has() -> None:
    names = [e.name for e in terminal_events(TEXT, ERRORED, "", after=len(TEXT) + 1)]
    assert names == ["error", "final"]
    assert [e.name for e in terminal_events(TEXT, ERRORED, "", after=len(TEXT) + 2)] == ["final"]
    assert terminal_events(TEXT, ERRORED, "", after=len(TEXT) + 3) == []


def test_no_usage_or_error_events_when_there_is_nothing_to_say() -> None:
    events = terminal_events("", Outcome("stopped", "stopped"), "", after=0)
    assert [(e.id, e.name) for e in events] == [(3, "final")]
    assert events[0].data["finish_reason"] == "stopped"
    unfinished = terminal_events("x", Outcome("interrupted"), "", after=1)
    assert unfinished[0].data["finish_reason"] is None


@pytest.mark.parametrize("after", [0, 1, REPLAY_CHUNK_CHARS - 1, REPLAY_CHUNK_CHARS + 7])
def test_replay_rebuilds_the_text_after_a_position_with_offset_ids(after: int) -> None:
    content = ("漢字😀 line\n" * 10_000)[: 3 * REPLAY_CHUNK_CHARS + 123]

    tokens = replay_tokens(content, after)

    assert "".join(t.data["text"] for t in tokens) == content[after:]
    assert all(0 < len(t.data["text"]) <= REPLAY_CHUNK_CHARS for t in tokens)
    assert_ids_increase(tokens)
    assert tokens[-1].id == len(content)
    position = after
    for token in tokens:
        position += len(token.data["text"])
        assert token.id == position


def test_nothing_to_replay_at_or_past_the_end() -> None:
    assert replay_tokens(TEXT, len(TEXT)) == []
    assert replay_tokens(TEXT, len(TEXT) + 2) == []


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("  ", None)])
def test_no_resume_point(raw: str | None, expected: None) -> None:
    assert parse_event_id(raw) is expected


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("17", 17), (" 42 ", 42)])
def test_a_resume_point(raw: str, expected: int) -> None:
    assert parse_event_id(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "1e3", "0x1f", "١٢", "²", "9" * 13, "+3"])
def test_a_malformed_resume_point_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(raw)


def test_the_sse_parser_follows_the_spec() -> None:
    """The helper the stream tests rely on: CR, LF and CRLF line ends, comments, split input."""
    parser = SSEParser()
    wire = 'retry: 500\r\n\r\n: hi\rid: 3\revent: token\rdata: {"text":\ndata: "😀"}\r\n\n'.encode()
    items = [item for i in range(len(wire)) for item in parser.feed(wire[i : i + 1])]
    assert items == [SSEComment("hi"), SSEEvent(3, "token", {"text": "😀"})]
    assert parser.retry == 500
