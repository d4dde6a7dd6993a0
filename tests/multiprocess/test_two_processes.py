"""Any process serves any reader, honours any Stop, and settles what a dead one left."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import websockets

from tests.multiprocess.conftest import Client, Cluster, Server, text_of

pytestmark = pytest.mark.multiprocess

EXPECTED = "".join(f"word{i} " for i in range(400))


def _tokens_at_least(count: int) -> Any:
    return lambda events: sum(e["event"] == "token" for e in events) >= count


def test_read_from_b_then_resume_from_a_gives_the_exact_text(
    user: Client, a: Server, b: Server
) -> None:
    message = user.send(a, "Tell me a long story")

    first = user.read(b, message["id"], stop_when=_tokens_at_least(5))
    assert first[0]["event"] == "start"
    second = user.read(a, message["id"], after=first[-1]["id"], header=True)
    assert second[-1]["event"] == "final"

    text = text_of(first) + text_of(second)
    assert text == EXPECTED
    assert second[-1]["data"]["content"] == EXPECTED
    stored = user.message(b, message["id"])
    assert stored["status"] == "complete"
    assert stored["content"] == EXPECTED
    ids = [e["id"] for e in first + second]
    assert ids == sorted(set(ids))


def test_stop_through_b_closes_the_upstream_of_a_within_a_second(
    user: Client, a: Server, b: Server, cluster: Cluster
) -> None:
    before = len(cluster.upstream.requests)
    message = user.send(a, "Go on")
    partial = user.read(b, message["id"], stop_when=_tokens_at_least(3))
    upstream = cluster.upstream.wait_for_requests(before + 1)[before]

    stopped_at = time.monotonic()
    answer = user.post(b, f"/api/messages/{message['id']}/stop", {"seen": partial[-1]["id"]})
    assert answer.status_code == 200
    assert upstream.wait_closed(timeout=1.0), "the upstream request was not closed"
    assert upstream.closed_at is not None and upstream.closed_at - stopped_at < 1.0
    assert answer.json()["status"] == "stopped"

    # Every reader, on either process, sees the same end and the text produced.
    rest = user.read(a, message["id"], after=partial[-1]["id"])
    assert rest[-1]["data"]["status"] == "stopped"
    text = text_of(partial) + text_of(rest)
    assert text == rest[-1]["data"]["content"] == user.message(a, message["id"])["content"]
    assert text and EXPECTED.startswith(text)


def test_kill_9_mid_answer_ends_as_interrupted_for_readers_elsewhere(
    user: Client, b: Server, cluster: Cluster
) -> None:
    doomed = cluster.start("doomed")
    message = user.send(doomed, "Say a lot")
    events: list[dict[str, Any]] = []

    def follow() -> None:
        events.extend(user.read(b, message["id"]))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    # Let the answer run past at least one database flush, then kill its process.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(user.message(b, message["id"])["content"]) < 20:
        time.sleep(0.1)
    doomed.kill()
    killed_at = time.monotonic()

    reader.join(timeout=60)
    assert not reader.is_alive(), "the reader on the other process never got `final`"
    assert time.monotonic() - killed_at < 60
    final = events[-1]
    assert final["event"] == "final"
    assert final["data"]["status"] == "interrupted"

    stored = user.message(b, message["id"])
    assert stored["status"] == "interrupted"
    assert len(stored["content"]) >= 20  # the flushed text is kept
    assert EXPECTED.startswith(stored["content"])
    assert final["data"]["content"] == stored["content"]


def test_a_websocket_on_b_receives_a_generation_started_on_a(
    user: Client, a: Server, b: Server
) -> None:
    message = user.send(a, "Stream it to my socket")
    cookies = "; ".join(f"{name}={value}" for name, value in user.http.cookies.items())

    async def follow_on_b() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        async with websockets.connect(
            b.url.replace("http://", "ws://") + "/ws/chat/",
            additional_headers={"Cookie": cookies},
            origin=websockets.Origin(b.url),
            open_timeout=10,
        ) as socket:
            await socket.send(json.dumps({"type": "subscribe", "message_id": message["id"]}))
            async with asyncio.timeout(30):
                while not frames or frames[-1]["type"] != "final":
                    frames.append(json.loads(await socket.recv()))
        return frames

    frames = asyncio.run(follow_on_b())
    assert frames[0]["type"] == "start"
    assert all(frame["message_id"] == message["id"] for frame in frames)
    text = "".join(frame["text"] for frame in frames if frame["type"] == "token")
    assert text == EXPECTED == frames[-1]["content"]
    assert user.message(a, message["id"])["content"] == EXPECTED
