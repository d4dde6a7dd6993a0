"""The chat page over the WebSocket: send, stream, Stop, and a network drop mid-answer."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Locator, Page, WebSocket, expect

from tests.browser.conftest import SAMPLE_ANSWER, Session, demo_answer, shown_source

pytestmark = pytest.mark.browser


@dataclass
class SocketLog:
    """Every WebSocket a page opens, and the frames sent and received on each."""

    sockets: list[WebSocket] = field(default_factory=list)
    sent: list[list[dict[str, Any]]] = field(default_factory=list)
    received: list[list[dict[str, Any]]] = field(default_factory=list)
    stream_requests: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> SocketLog:
        page.on("websocket", self._opened)
        page.on(
            "request",
            lambda request: "/stream" in request.url and self.stream_requests.append(request.url),
        )
        return self

    def _opened(self, ws: WebSocket) -> None:
        sent: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []
        self.sockets.append(ws)
        self.sent.append(sent)
        self.received.append(received)
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

    def sent_types(self) -> list[str]:
        return [frame["type"] for frames in self.sent for frame in frames]

    def events_of(self, message_id: str) -> list[dict[str, Any]]:
        return [f for frames in self.received for f in frames if f.get("message_id") == message_id]


def streamed_text(frames: list[dict[str, Any]]) -> str:
    text = ""
    for frame in frames:
        if frame["type"] == "reset":
            text = frame["content"]
        elif frame["type"] == "token":
            text += frame["text"]
    return text


def assert_stopped(chat: Session, answer: Locator, prompt: str) -> dict[str, Any]:
    expect(answer.get_by_text("Stopped")).to_be_visible(timeout=1_000)
    expect(answer).to_have_attribute("aria-busy", "false", timeout=1_000)
    expect(answer.get_by_role("button", name="Copy")).to_be_enabled(timeout=1_000)
    expect(chat.page.get_by_role("button", name="Stop")).to_be_hidden(timeout=1_000)
    stored = chat.api_message(answer)
    assert stored["status"] == "stopped"
    assert demo_answer(prompt).startswith(stored["content"])
    expect(answer).to_have_attribute("data-markdown", stored["content"])
    return stored


@pytest.fixture
def ws_chat(new_session: Callable[..., Session], signed_up_state: dict[str, Any]) -> Session:
    """A signed-up user on a fresh chat page that follows answers over the WebSocket."""
    session = new_session(storage_state=signed_up_state)
    session.page.goto("/?transport=ws")
    expect(session.page.get_by_role("textbox", name="Message")).to_be_visible()
    return session


def test_send_stream_and_stop_over_the_websocket(ws_chat: Session) -> None:
    chat, page = ws_chat, ws_chat.page
    log = SocketLog().watch(page)
    page.reload()  # the page's socket opens while watched
    expect(page.locator(".app")).to_have_attribute("data-transport", "ws")

    prompt = "Show me what Markdown you can render."
    answer = chat.send(prompt)
    samples: list[dict[str, Any]] = answer.evaluate(SAMPLE_ANSWER)
    full = demo_answer(prompt)
    streaming = [shown_source(s, full) for s in samples if s["busy"] == "true"]
    assert len(set(streaming)) >= 3, "the answer did not stream in steps"
    for text in streaming:
        assert full.startswith(text), f"the streamed text is not a prefix: {text!r}"
    expect(answer.locator(".message__body h2")).to_have_text("A quick tour of this chat")
    expect(answer).to_have_attribute("data-markdown", full)
    assert chat.api_message(answer)["content"] == full

    # All of it over one socket: a `send` frame, its answer's events; no SSE request.
    assert len(log.sockets) == 1
    assert log.sent_types() == ["send"]
    message_id = answer.get_attribute("data-message-id")
    assert message_id
    frames = log.events_of(message_id)
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "final"
    assert streamed_text(frames) == full
    assert log.stream_requests == []

    # Stop uses the `cancel` frame.
    prompt = "A long answer I will stop over the socket."
    answer = chat.send(prompt)
    chat.wait_text(answer, 40)
    page.get_by_role("button", name="Stop").click()
    stored = assert_stopped(chat, answer, prompt)
    assert stored["content"] and len(stored["content"]) < len(demo_answer(prompt))
    assert log.sent_types() == ["send", "send", "cancel"]
    assert len(log.sockets) == 1
    assert log.stream_requests == []
    chat.assert_clean()


class CuttableProxy:
    """A TCP proxy in front of the server whose connections the test can cut at once.

    Cutting them is what a network drop does to the browser: its WebSocket closes without
    a closing handshake (1006), and the page must reconnect and resume by itself.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        with self.lock:
            connections, self.connections = self.connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        return len(connections) // 2

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(server: str) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(server)
    yield proxy
    proxy.close()


def test_a_network_drop_mid_answer_recovers_the_full_text_once(
    new_session: Callable[..., Session], signed_up_state: dict[str, Any], proxy: CuttableProxy
) -> None:
    # The cookies of 127.0.0.1 hold on any of its ports, the proxy's included.
    chat = new_session(base_url=proxy.url, storage_state=signed_up_state)
    page = chat.page
    log = SocketLog().watch(page)
    page.goto("/?transport=ws")
    prompt = "Reload me in the middle."  # the longer of the two demo answers
    full = demo_answer(prompt)
    answer = chat.send(prompt)
    chat.wait_text(answer, 40)
    message_id = answer.get_attribute("data-message-id")
    assert message_id
    answer.evaluate(f"(article) => {{ window.__samples = ({SAMPLE_ANSWER})(article); }}")

    assert proxy.cut() >= 1
    expect(answer).to_have_attribute("aria-busy", "true")  # the drop came mid-answer
    chat.wait_final(answer)

    # A second socket took over and resumed where the first stopped.
    assert len(log.sockets) >= 2, "the page did not reconnect"
    resubscribe = [f for f in log.sent[1] if f["type"] == "subscribe"]
    assert resubscribe and resubscribe[0]["message_id"] == message_id
    assert resubscribe[0]["after"] > 0
    after_drop = [f for f in log.received[1] if f.get("message_id") == message_id]
    assert after_drop[0]["type"] == "token", "the resumed stream did not start at the rest"
    # Every word once: the frames of both sockets make exactly the answer.
    frames = log.events_of(message_id)
    assert [f["type"] for f in frames].count("start") == 1
    assert streamed_text(frames) == full
    samples = page.evaluate("window.__samples")
    shown = [shown_source(s, full) for s in samples if s["busy"] == "true"]
    assert len(set(shown)) >= 2, "the answer did not go on streaming after the drop"
    for text in shown:
        assert full.startswith(text), f"the shown text is not a prefix of the answer: {text!r}"
    expect(answer).to_have_attribute("data-markdown", full)
    assert chat.api_message(answer)["content"] == full
    assert log.stream_requests == []
    chat.assert_clean()


def test_the_transport_control_switches_to_the_websocket(
    new_session: Callable[..., Session],
) -> None:
    chat = new_session()
    chat.sign_up()
    page = chat.page
    log = SocketLog().watch(page)
    transport = page.get_by_label("Transport")
    expect(transport).to_have_value("sse")

    answer = chat.send("Over SSE first.")
    chat.wait_final(answer)
    assert log.stream_requests and not log.sockets

    with page.expect_response("**/api/settings") as saved:
        transport.select_option(label="WebSocket")
    assert saved.value.json() == {"transport": "ws"}
    answer = chat.send("Then over the WebSocket.")
    chat.wait_final(answer)
    assert chat.api_message(answer)["content"] == demo_answer("Then over the WebSocket.")
    assert log.sent_types() == ["send"]
    assert len(log.stream_requests) == 1

    # The choice is kept.
    page.reload()
    expect(page.get_by_label("Transport")).to_have_value("ws")
    expect(page.locator(".app")).to_have_attribute("data-transport", "ws")
    chat.assert_clean()


def test_time_to_first_token_over_the_websocket(ws_chat: Session) -> None:
    """Click Send to the first answer text on the page, over the WebSocket; median of five."""
    timings = ws_chat.first_token_times(5, "Time me over the socket,")
    median = statistics.median(timings)
    rounded = [round(t) for t in timings]
    print(f"\ntime to first token over the WebSocket (ms): p50={median:.0f} all={rounded}")
    assert median < 1500, timings
    ws_chat.assert_clean()
