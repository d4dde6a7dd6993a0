"""The WebSocket (CONTRACT §6): the same events as SSE, sends and Stops, refusals, logout.

Sockets go through the real ASGI application (origin check, session cookie, routing), with
a real session cookie of a signed-in user, as a browser's would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient

from chat.consumers import CLOSE_SIGNED_OUT
from chat.providers.base import Finish, Usage
from tests.helpers import BLOCK, ChatApi, Pause, ScriptedProvider, eventually

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = "http://localhost:8000"
PATH = "/ws/chat/"


class Socket:
    """One WebSocket as a page holds it: frames out, frames in (kept in `frames`)."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.frames: list[dict[str, Any]] = []
        self.closed: int | None = None  # the close code, once the server closed

    async def send(self, frame: Any) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame, ensure_ascii=False)
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            self.closed = output.get("code", 1000)
            raise AssertionError(f"the server closed the socket ({self.closed})")
        assert output["type"] == "websocket.send", output
        frame: dict[str, Any] = json.loads(output["text"])
        self.frames.append(frame)
        return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame; its direct answer (nothing else may come in between)."""
        await self.send(frame)
        return await self.receive()

    async def read_until(
        self, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Frames up to and including the first for which `done` holds."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout)
                frames.append(frame)
                if done(frame):
                    return frames

    async def read_final(self, message_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """This message's frames up to its `final` (frames of others are kept in `frames`)."""
        frames = await self.read_until(
            lambda f: f["type"] == "final" and f.get("message_id") == message_id, timeout
        )
        return [frame for frame in frames if frame.get("message_id") == message_id]

    async def silent(self, timeout: float = 0.3) -> bool:
        return bool(await self.communicator.receive_nothing(timeout))

    async def close_code(self, timeout: float = 2.0) -> int:
        output = await self.communicator.receive_output(timeout)
        assert output["type"] == "websocket.close", output
        code: int = output.get("code", 1000)
        self.closed = code
        return code

    async def disconnect(self) -> None:
        await self.communicator.disconnect()


def text_of(frames: list[dict[str, Any]]) -> str:
    """The answer as a client builds it: tokens appended, `reset` replacing."""
    text = ""
    for frame in frames:
        if frame["type"] == "reset":
            text = frame["content"]
        elif frame["type"] == "token":
            text += frame["text"]
    return text


def event_ids(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["id"] for frame in frames]


async def session_cookie(user: Any) -> str:
    client = AsyncClient()
    await client.aforce_login(user)
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


def headers(cookie: str | None, origin: str | None = ORIGIN) -> list[tuple[bytes, bytes]]:
    found = []
    if origin is not None:
        found.append((b"origin", origin.encode()))
    if cookie is not None:
        found.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return found


Connect = Callable[..., Awaitable[Socket]]


@pytest.fixture
async def open_socket() -> AsyncIterator[Callable[..., Awaitable[tuple[bool, Any, Socket]]]]:
    """Open sockets through the real ASGI application; all are disconnected at the end."""
    from chatsite.asgi import application

    layer = get_channel_layer()
    sockets: list[Socket] = []

    async def open_(cookie: str | None, origin: str | None = ORIGIN) -> tuple[bool, Any, Socket]:
        communicator = WebsocketCommunicator(application, PATH, headers=headers(cookie, origin))
        accepted, detail = await communicator.connect(timeout=5)
        socket = Socket(communicator)
        sockets.append(socket)
        return accepted, detail, socket

    yield open_
    for socket in sockets:
        await socket.disconnect()
    await layer.flush()


@pytest.fixture
def connect(open_socket: Callable[..., Awaitable[tuple[bool, Any, Socket]]]) -> Connect:
    """Connect a signed-in user's socket (a new session unless a cookie is given)."""

    async def connect_(user: Any, *, cookie: str | None = None) -> Socket:
        accepted, detail, socket = await open_socket(cookie or await session_cookie(user))
        assert accepted, f"the socket was refused ({detail})"
        return socket

    return connect_


@pytest.fixture
async def ws(connect: Connect, user: Any) -> Socket:
    return await connect(user)


@pytest.fixture
async def conversation_id(api: ChatApi) -> str:
    return str((await api.create_conversation())["id"])


def send_frame(conversation_id: str, content: str = "Hello", **fields: Any) -> dict[str, Any]:
    return {"type": "send", "conversation_id": conversation_id, "content": content, **fields}


# --- Who may connect -------------------------------------------------------------------


async def test_an_anonymous_socket_is_refused_before_it_is_accepted(
    open_socket: Callable[..., Awaitable[tuple[bool, Any, Socket]]],
) -> None:
    accepted, _code, _socket = await open_socket(None)
    assert not accepted
    # A cookie that names no session is nobody, too.
    accepted, _code, _socket = await open_socket("not-a-session")
    assert not accepted


async def test_a_foreign_origin_is_refused(
    open_socket: Callable[..., Awaitable[tuple[bool, Any, Socket]]], user: Any
) -> None:
    cookie = await session_cookie(user)
    for origin in ("https://evil.example", "http://localhost.evil.example", None):
        accepted, _code, _socket = await open_socket(cookie, origin=origin)
        assert not accepted, origin
    accepted, _code, _socket = await open_socket(cookie, origin="http://127.0.0.1:8000")
    assert accepted


# --- Send ------------------------------------------------------------------------------


async def test_send_is_accepted_then_its_answer_streams_on_the_socket(
    ws: Socket, api: ChatApi, conversation_id: str
) -> None:
    accepted = await ws.request(send_frame(conversation_id, "Hello there", ref="s1"))

    assert accepted["type"] == "accepted"
    assert accepted["ref"] == "s1"
    user_message, answer = accepted["user_message"], accepted["assistant_message"]
    assert user_message["content"] == "Hello there"
    assert user_message["role"] == "user"
    assert answer["status"] == "streaming"
    assert answer["parent_id"] == user_message["id"]
    # The same objects as the API shows.
    assert user_message == await api.message(user_message["id"])
    assert set(answer) == set(await api.message(answer["id"]))

    frames = await ws.read_final(answer["id"])
    assert frames[0] == {
        "type": "start",
        "message_id": answer["id"],
        "id": 0,
        "model": "demo:demo",
    }
    assert [f["type"] for f in frames[-2:]] == ["usage", "final"]
    assert {f["type"] for f in frames[1:-2]} == {"token"}
    assert all(a < b for a, b in itertools.pairwise(event_ids(frames)))
    stored = await api.finished(answer["id"])
    final = frames[-1]
    assert text_of(frames) == final["content"] == stored["content"]
    assert final["status"] == "complete"
    assert final["id"] == len(stored["content"]) + 3
    assert "<h2>" in final["html"]
    # The socket follows nothing any more.
    assert await ws.silent()


async def test_a_send_follows_the_same_rules_as_the_api(
    ws: Socket,
    api: ChatApi,
    other_api: ChatApi,
    conversation_id: str,
    settings: Any,
) -> None:
    settings.CHAT_MAX_PROMPT_CHARS = 10
    others = (await other_api.create_conversation())["id"]
    refused = {
        "empty_message": send_frame(conversation_id, "   "),
        "too_large": send_frame(conversation_id, "x" * 11),
        "unknown_model": send_frame(conversation_id, model="nope:nope"),
        "not_found": send_frame(others),
        "invalid": send_frame(conversation_id, parent_id=str(uuid.uuid4())),
    }
    for code, frame in refused.items():
        error = await ws.request({**frame, "ref": code})
        assert error == {"type": "error", "code": code, "message": error["message"], "ref": code}
    # Nothing was created, in either conversation.
    for client, conversation in ((api, conversation_id), (other_api, others)):
        response = await client.get(f"/api/conversations/{conversation}")
        assert response.json()["messages"] == []

    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    accepted = await ws.request(send_frame(conversation_id))
    await ws.read_final(accepted["assistant_message"]["id"])
    throttled = await ws.request(send_frame(conversation_id))
    assert throttled["code"] == "rate_limited"
    assert 1 <= throttled["retry_after"] <= 60


async def test_a_max_size_prompt_fits_in_a_frame_and_a_larger_frame_is_refused(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    scripted.script = ["Got it."]
    conversation = await api.create_conversation(model=scripted.model_id)
    limit = settings.CHAT_WS_MAX_FRAME_BYTES

    # The longest prompt allowed, in 4-byte characters, as a browser's JSON.stringify sends it.
    prompt = "😀" * settings.CHAT_MAX_PROMPT_CHARS
    accepted = await ws.request(send_frame(conversation["id"], prompt))
    assert accepted["type"] == "accepted"
    assert accepted["user_message"]["content"] == prompt
    await ws.read_final(accepted["assistant_message"]["id"])

    oversize = json.dumps({"type": "subscribe", "message_id": "x", "pad": "a" * limit})
    await ws.send(oversize)
    error = await ws.receive()
    assert error["type"] == "error"
    assert error["code"] == "too_large"
    assert str(limit) in error["message"]
    # Counted in bytes, not characters.
    padding = "é" * (limit // 2)
    await ws.send({"type": "subscribe", "message_id": "x", "pad": padding})
    assert (await ws.receive())["code"] == "too_large"
    # The socket still works.
    replay = await ws.request(
        {"type": "subscribe", "message_id": accepted["assistant_message"]["id"]}
    )
    assert replay["type"] == "start"


def test_daphne_lets_every_frame_the_consumer_accepts_through() -> None:
    """The Procfile's daphne limit is the hard one: it must not be below the consumer's."""
    procfile = Path(settings.BASE_DIR, "Procfile").read_text()
    match = re.search(r"--websocket-max-message-size (\d+)", procfile)
    assert match, procfile
    assert int(match.group(1)) >= settings.CHAT_WS_MAX_FRAME_BYTES
    assert settings.CHAT_WS_MAX_FRAME_BYTES >= 4 * settings.CHAT_MAX_PROMPT_CHARS + 1024


async def test_time_from_send_to_the_first_token(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider
) -> None:
    """Measured: a send frame to its first token frame, in-process (median of five)."""
    scripted.script = ["First", " token", Finish("stop")]
    conversation = await api.create_conversation(model=scripted.model_id)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        accepted = await ws.request(send_frame(conversation["id"]))
        frames = await ws.read_until(lambda f: f["type"] == "token")
        timings.append((time.perf_counter() - started) * 1000)
        assert frames[-1]["text"]
        await ws.read_final(accepted["assistant_message"]["id"])
    timings.sort()
    print(f"\nsend frame to first token frame (ms): p50={timings[2]:.1f} all={timings}")
    assert timings[2] < 500


# --- Frames the server refuses -----------------------------------------------------------


async def test_bad_frames_get_an_error_and_the_socket_stays_open(ws: Socket, api: ChatApi) -> None:
    answer = await api.ask()
    await api.finished(answer["id"])
    bad = {
        "bad_json": ["{not json", "", "[1, 2", "[" * 100_000 + "]" * 100_000],
        "bad_frame": [
            "[]",
            '"subscribe"',
            "42",
            "null",
            {"type": "subscribe"},
            {"type": "subscribe", "message_id": 42},
            {"type": "subscribe", "message_id": ""},
            {"type": "cancel"},
            {"type": "send", "content": "No conversation"},
            {"type": "subscribe", "message_id": answer["id"], "ref": {"no": "objects"}},
            {"type": "subscribe", "message_id": answer["id"], "ref": "r" * 65},
        ],
        "unknown_type": [{"type": "dance"}, {"type": 7}, {"message_id": answer["id"]}, {}],
        "not_found": [{"type": "subscribe", "message_id": "not-a-uuid"}],
    }
    for code, frames in bad.items():
        for frame in frames:
            if frame == "":
                # An empty text frame cannot be sent through the test communicator.
                continue
            error = await ws.request(frame)
            assert error["type"] == "error", frame
            assert error["code"] == code, (frame, error)
            assert isinstance(error["message"], str) and error["message"], frame
            assert "id" not in error  # only the stream's own `error` event has an id
            assert "ref" not in error
    await ws.communicator.send_to(bytes_data=b"\x00binary")
    assert (await ws.receive())["code"] == "bad_frame"

    # A user message has no stream.
    conversation = await api.get(f"/api/conversations/{answer['conversation_id']}")
    question = conversation.json()["messages"][0]
    error = await ws.request({"type": "subscribe", "message_id": question["id"], "ref": 3})
    assert (error["code"], error["ref"]) == ("not_an_answer", 3)

    # Still open, still working.
    frames = await ws.request({"type": "subscribe", "message_id": answer["id"]})
    assert frames["type"] == "start"
    assert (
        text_of(await ws.read_final(answer["id"])) == (await api.message(answer["id"]))["content"]
    )


async def test_another_users_message_or_conversation_yields_not_found_and_no_data(
    ws: Socket, other_api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Secret ", BLOCK]
    theirs = await other_api.ask(model=scripted.model_id)
    await eventually(lambda: scripted.runs and scripted.runs[0].yielded)

    for frame in (
        {"type": "subscribe", "message_id": theirs["id"]},
        {"type": "subscribe", "message_id": theirs["id"], "after": 0},
        {"type": "cancel", "message_id": theirs["id"]},
        send_frame(theirs["conversation_id"]),
        {"type": "subscribe", "message_id": str(uuid.uuid4())},
    ):
        error = await ws.request(frame)
        assert error == {"type": "error", "code": "not_found", "message": error["message"]}
        assert "Secret" not in json.dumps(error)
    assert await ws.silent()
    # Their answer was not stopped.
    assert (await other_api.message(theirs["id"]))["status"] == "streaming"
    assert not scripted.runs[0].cancelled


# --- Subscribe: the same events as SSE ---------------------------------------------------


async def test_subscribe_speaks_exactly_the_sse_events(ws: Socket, api: ChatApi) -> None:
    """Every resume point gives the frames that SSE gives for `?after=` with that value."""
    answer = await api.ask("Show me what Markdown you can render.")
    content = (await api.finished(answer["id"]))["content"]
    length = len(content)

    for after in (None, 0, 5, length, length + 1, length + 2, "12", "junk", -3, 1.5, True):
        frame: dict[str, Any] = {"type": "subscribe", "message_id": answer["id"]}
        if after is not None:
            frame["after"] = after
        await ws.send(frame)
        frames = await ws.read_final(answer["id"])

        sse = await api.read(answer["id"], after=None if after is None else str(after))
        assert frames == [
            {"type": event.name, "message_id": answer["id"], "id": event.id, **event.data}
            for event in sse.events
        ], after
        if frames[0]["type"] == "reset":  # a position that is not a number
            assert isinstance(after, (str, float, bool)) or after < 0, after
            assert text_of(frames) == content
        else:
            assert text_of(frames) == content[int(after or 0) :], after


async def test_subscribing_at_the_final_id_sends_nothing(ws: Socket, api: ChatApi) -> None:
    answer = await api.ask()
    stored = await api.finished(answer["id"])
    final_id = len(stored["content"]) + 3
    await ws.send({"type": "subscribe", "message_id": answer["id"], "after": final_id})
    assert await ws.silent()
    # Like SSE, which answers 204.
    response = await api.get(f"/api/messages/{answer['id']}/stream?after={final_id}")
    assert response.status_code == 204


async def test_several_subscriptions_share_one_socket(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = [f"part {i}. " if i % 2 else Pause(0.01) for i in range(40)]
    scripted.script.append(Usage(3, 20))
    answers = [await api.ask(model=scripted.model_id) for _ in range(3)]
    for answer in answers:
        await ws.send({"type": "subscribe", "message_id": answer["id"]})
    finals: set[str] = set()

    def all_final(frame: dict[str, Any]) -> bool:
        if frame["type"] == "final":
            finals.add(frame["message_id"])
        return len(finals) == len(answers)

    await ws.read_until(all_final)
    order = [f["message_id"] for f in ws.frames if f["type"] == "token"]
    assert len({*order}) == 3
    assert order != sorted(order, key=order.index), "the streams did not interleave"
    for answer in answers:
        frames = [f for f in ws.frames if f["message_id"] == answer["id"]]
        assert frames[0]["type"] == "start" and frames[-1]["type"] == "final"
        assert all(a < b for a, b in itertools.pairwise(event_ids(frames)))
        stored = await api.finished(answer["id"])
        assert text_of(frames) == stored["content"] == frames[-1]["content"]


async def test_subscribing_again_replaces_the_subscription(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider
) -> None:
    gate = asyncio.Event()
    scripted.script = ["one ", "two ", gate, "three"]
    answer = await api.ask(model=scripted.model_id)
    await ws.send({"type": "subscribe", "message_id": answer["id"]})
    first = await ws.read_until(lambda f: f["type"] == "token" and f["id"] >= 8)
    await ws.send({"type": "subscribe", "message_id": answer["id"], "after": 4})
    second = await ws.read_until(lambda f: f["type"] == "token")
    assert second[-1] == {"type": "token", "message_id": answer["id"], "id": 8, "text": "two "}
    gate.set()
    rest = await ws.read_final(answer["id"])
    assert text_of(first) + text_of(rest) == "one two three"
    assert await ws.silent()


async def test_a_socket_follows_a_bounded_number_of_answers(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider, settings: Any
) -> None:
    settings.CHAT_WS_MAX_SUBSCRIPTIONS = 2
    settings.CHAT_MAX_CONCURRENT_STREAMS = 10
    scripted.script = [BLOCK]
    answers = [await api.ask(model=scripted.model_id) for _ in range(3)]
    conversation = await api.create_conversation(model=scripted.model_id)
    for answer in answers[:2]:
        await ws.send({"type": "subscribe", "message_id": answer["id"]})
        assert (await ws.receive())["type"] == "start"
    error = await ws.request({"type": "subscribe", "message_id": answers[2]["id"]})
    assert error["code"] == "too_many_subscriptions"
    error = await ws.request(send_frame(conversation["id"]))
    assert error["code"] == "too_many_subscriptions"
    assert (await api.get(f"/api/conversations/{conversation['id']}")).json()["messages"] == []
    # Subscribing again to one already followed is no new subscription.
    await ws.send({"type": "subscribe", "message_id": answers[0]["id"], "after": 0})
    assert await ws.silent()
    # Once one ends, there is room again.
    await ws.send({"type": "cancel", "message_id": answers[0]["id"]})
    assert (await ws.read_final(answers[0]["id"]))[-1]["status"] == "stopped"
    await ws.send({"type": "subscribe", "message_id": answers[2]["id"]})
    assert (await ws.receive())["type"] == "start"


# --- Cancel ------------------------------------------------------------------------------


async def test_cancel_before_the_first_token_ends_the_stream_stopped_within_a_second(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = [BLOCK, "never sent"]
    conversation = await api.create_conversation(model=scripted.model_id)
    accepted = await ws.request(send_frame(conversation["id"]))
    answer = accepted["assistant_message"]
    assert (await ws.receive())["type"] == "start"
    await eventually(lambda: scripted.runs and scripted.runs[0].started.is_set())

    started = time.perf_counter()
    await ws.send({"type": "cancel", "message_id": answer["id"]})
    frames = await ws.read_final(answer["id"], timeout=1.0)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    assert [f["type"] for f in frames] == ["final"]
    assert frames[-1]["status"] == "stopped"
    assert frames[-1]["content"] == ""
    stored = await api.message(answer["id"])
    assert (stored["status"], stored["content"]) == ("stopped", "")
    # The provider's request was closed.
    assert scripted.runs[0].cancelled and scripted.runs[0].closed


async def test_cancel_mid_answer_keeps_the_text_and_matches_the_api_stop(
    ws: Socket, api: ChatApi, scripted: ScriptedProvider
) -> None:
    scripted.script = ["Hello ", "world", BLOCK]
    conversation = await api.create_conversation(model=scripted.model_id)
    accepted = await ws.request(send_frame(conversation["id"]))
    answer = accepted["assistant_message"]
    await ws.read_until(lambda f: f["type"] == "token" and f["id"] == len("Hello world"))
    await ws.send({"type": "cancel", "message_id": answer["id"], "ref": "stop"})
    frames = await ws.read_final(answer["id"], timeout=2.0)
    final = frames[-1]
    assert (final["status"], final["finish_reason"], final["content"]) == (
        "stopped",
        "stopped",
        "Hello world",
    )
    stored = await api.message(answer["id"])
    assert (stored["status"], stored["content"]) == ("stopped", "Hello world")
    # Cancelling what has ended changes nothing and says nothing.
    await ws.send({"type": "cancel", "message_id": answer["id"]})
    assert await ws.silent()
    assert (await api.message(answer["id"]))["status"] == "stopped"


# --- Drops -------------------------------------------------------------------------------


async def test_a_dropped_socket_resumes_on_a_new_one_with_exactly_the_rest(
    connect: Connect, user: Any, api: ChatApi, scripted: ScriptedProvider
) -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    scripted.script = ["The first ", "part, ", gates[0], "the middle, ", gates[1], "the end."]
    scripted.script += [Usage(5, 6), Finish("stop")]
    conversation = await api.create_conversation(model=scripted.model_id)

    first = await connect(user)
    accepted = await first.request(send_frame(conversation["id"]))
    answer = accepted["assistant_message"]["id"]
    seen = await first.read_until(lambda f: f["type"] == "token" and f["id"] == 16)
    await first.disconnect()  # mid-answer; the answer goes on without a reader
    gates[0].set()
    await eventually(lambda: scripted.runs[0].yielded == 3)

    second = await connect(user)
    await second.send({"type": "subscribe", "message_id": answer, "after": seen[-1]["id"]})
    middle = await second.read_until(lambda f: f["type"] == "token")
    assert middle[0]["type"] == "token"  # no `start`, no `reset`: a plain resume
    await second.disconnect()
    gates[1].set()

    third = await connect(user)
    await third.send({"type": "subscribe", "message_id": answer, "after": middle[-1]["id"]})
    rest = await third.read_final(answer)

    stored = await api.finished(answer)
    assert stored["content"] == "The first part, the middle, the end."
    assert text_of(seen) + text_of(middle) + text_of(rest) == stored["content"]
    ids = event_ids(seen + middle + rest)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert rest[-1]["type"] == "final" and rest[-1]["status"] == "complete"


# --- Logout ------------------------------------------------------------------------------


async def test_logging_out_closes_that_sessions_sockets(
    connect: Connect,
    open_socket: Callable[..., Awaitable[tuple[bool, Any, Socket]]],
    user: Any,
    other_user: Any,
    api: ChatApi,
    scripted: ScriptedProvider,
) -> None:
    scripted.script = ["Still ", BLOCK]
    answer = await api.ask(model=scripted.model_id)
    browser = AsyncClient()
    await browser.aforce_login(user)
    cookie = str(browser.cookies[settings.SESSION_COOKIE_NAME].value)
    tabs = [await connect(user, cookie=cookie) for _ in range(2)]
    for tab in tabs:
        await tab.send({"type": "subscribe", "message_id": answer["id"]})
        await tab.read_until(lambda f: f["type"] == "token")
    elsewhere = await connect(user)  # the same user signed in on another device
    someone_else = await connect(other_user)

    response = await browser.post("/accounts/logout/")
    assert response.status_code == 302

    for tab in tabs:
        assert await tab.close_code() == CLOSE_SIGNED_OUT
    for socket in (elsewhere, someone_else):
        assert await socket.silent()
        error = await socket.request({"type": "dance"})
        assert error["code"] == "unknown_type"
    # The answer goes on (a closed socket is not a Stop), and the cookie opens nothing now.
    assert (await api.message(answer["id"]))["status"] == "streaming"
    accepted, _code, _socket = await open_socket(cookie)
    assert not accepted
