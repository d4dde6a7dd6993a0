"""When a sign-in ends, so does everything it opened: SSE streams and WebSockets.

Logout ends that session's readers; a password change ends every session's (the
session that changed it gets a new key, the others are signed out); deactivating an
account ends all of them, its API tokens' too, and stops its running answers; revoking a
token ends the streams it opened. Readers of other sessions and tokens go on. The same
holds with the Redis channel layer of several processes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import AsyncClient

from chat import services
from chat.consumers import CLOSE_SIGNED_OUT
from chat.models import Message
from tests.helpers import (
    BLOCK,
    ChatApi,
    ScriptedProvider,
    SSEStream,
    StreamStalled,
    _handler,
    eventually,
)
from tests.test_api_tokens import bearer_api
from tests.test_consumers import ORIGIN, headers

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase 42"


async def signed_in(user: Any) -> tuple[ChatApi, str]:
    """A new session of `user`, as a browser holds it: its API and its session cookie."""
    client = AsyncClient()
    client.handler = _handler(False)
    await client.aforce_login(user)
    return ChatApi(client), str(client.cookies[django_settings.SESSION_COOKIE_NAME].value)


OpenSocket = Callable[[str], Awaitable[WebsocketCommunicator]]


@pytest.fixture
async def open_socket() -> AsyncIterator[OpenSocket]:
    from chatsite.asgi import application

    sockets: list[WebsocketCommunicator] = []

    async def open_(cookie: str) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(
            application, "/ws/chat/", headers=headers(cookie, ORIGIN)
        )
        accepted, _ = await communicator.connect(timeout=5)
        assert accepted
        sockets.append(communicator)
        return communicator

    yield open_
    for socket in sockets:
        await socket.disconnect()


@pytest.fixture
def streaming(scripted: ScriptedProvider) -> ScriptedProvider:
    """Answers that stream until stopped: readers have something to wait for."""
    scripted.script = ["Still going", BLOCK]
    return scripted


async def following(api: ChatApi, message_id: str) -> SSEStream:
    """An open stream of the answer, read up to its first text."""
    stream = await api.open_stream(message_id)
    assert stream.status == 200
    await stream.read(until=lambda s: s.text == "Still going", timeout=5)
    return stream


async def assert_signed_out(stream: SSEStream) -> None:
    """The stream ended by itself, without a `final`: its sign-in is over."""
    await stream.read_to_end(timeout=3)
    assert "signed out" in stream.comments
    assert stream.final is None


async def assert_open(stream: SSEStream) -> None:
    with pytest.raises(StreamStalled):
        await stream.read(timeout=0.4)
    assert not stream.ended


async def assert_closed_signed_out(socket: WebsocketCommunicator) -> None:
    while True:
        output = await socket.receive_output(timeout=3)
        if output["type"] == "websocket.close":
            assert output["code"] == CLOSE_SIGNED_OUT
            return


async def assert_socket_open(socket: WebsocketCommunicator) -> None:
    await socket.send_json_to({"type": "dance"})
    while True:
        frame = await socket.receive_json_from(timeout=3)
        if frame["type"] == "error":
            assert frame["code"] == "unknown_type"
            return


async def subscribed(socket: WebsocketCommunicator, message_id: str) -> None:
    await socket.send_json_to({"type": "subscribe", "message_id": message_id})
    while (await socket.receive_json_from(timeout=5))["type"] != "token":
        pass


async def issue(user: Any) -> str:
    _token, secret = await sync_to_async(services.api_token_create)(user=user, name="script")
    return secret


async def with_password(user: Any) -> Any:
    user.set_password(PASSWORD)
    await user.asave()
    return user


# --- Logout ----------------------------------------------------------------------------


async def test_logout_ends_that_sessions_streams_and_sockets_only(
    user: Any, streaming: ScriptedProvider, open_socket: OpenSocket
) -> None:
    leaving, cookie = await signed_in(user)
    staying, other_cookie = await signed_in(user)
    answer = await leaving.ask(model=streaming.model_id)
    streams = [await following(leaving, answer["id"]) for _ in range(2)]
    elsewhere = await following(staying, answer["id"])
    socket = await open_socket(cookie)
    other_socket = await open_socket(other_cookie)
    await subscribed(socket, answer["id"])

    response = await leaving.client.post("/accounts/logout/")
    assert response.status_code == 302

    for stream in streams:
        await assert_signed_out(stream)
    await assert_closed_signed_out(socket)
    await assert_open(elsewhere)
    await assert_socket_open(other_socket)
    # The answer goes on (a closed reader is not a Stop); the old cookie reads nothing now.
    assert (await staying.message(answer["id"]))["status"] == "streaming"
    again = await leaving.open_stream(answer["id"])
    assert again.status == 401
    await elsewhere.close()


def members(group: str) -> set[str]:
    """The channels in `group`, as the in-memory or the Redis pub/sub layer holds them."""
    for name, channels in get_channel_layer().groups.items():
        if name == group or name.endswith(f"__group__{group}"):
            return set(channels)
    return set()


async def test_one_users_logout_leaves_other_users_readers_and_the_layer_clean(
    user: Any, other_user: Any, streaming: ScriptedProvider
) -> None:
    """The readers of a process share one channel on the layer: an announcement reaches
    its own user's readers only, and the channel leaves every group with its last reader."""
    leaving, _ = await signed_in(user)
    staying, _ = await signed_in(other_user)
    mine = await leaving.ask(model=streaming.model_id)
    theirs = await staying.ask(model=streaming.model_id)
    leaving_stream = await following(leaving, mine["id"])
    staying_stream = await following(staying, theirs["id"])
    groups = [f"user-{user.pk}", f"user-{other_user.pk}"]
    # One channel in both groups, not one per stream.
    assert len(members(groups[0])) == 1
    assert members(groups[0]) == members(groups[1])

    assert (await leaving.client.post("/accounts/logout/")).status_code == 302

    await assert_signed_out(leaving_stream)
    await assert_open(staying_stream)
    await staying_stream.close()
    for _ in range(100):
        if not any(members(group) for group in groups):
            break
        await asyncio.sleep(0.01)
    assert not any(members(group) for group in groups)


async def test_readers_are_still_signed_out_after_the_layer_failed_once(
    user: Any, streaming: ScriptedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process's one listener outlives a failed receive (a dropped Redis connection)."""
    layer = get_channel_layer()
    receive = layer.receive
    failures = [ConnectionError("the layer's connection dropped")]

    async def flaky(channel: str) -> Any:
        if failures:
            raise failures.pop()
        return await receive(channel)

    monkeypatch.setattr(layer, "receive", flaky)
    leaving, _ = await signed_in(user)
    answer = await leaving.ask(model=streaming.model_id)
    stream = await following(leaving, answer["id"])
    await eventually(lambda: not failures)

    assert (await leaving.client.post("/accounts/logout/")).status_code == 302

    await assert_signed_out(stream)


# --- Password change -------------------------------------------------------------------


async def test_a_password_change_ends_every_sessions_readers_but_not_tokens(
    user: Any, streaming: ScriptedProvider, open_socket: OpenSocket
) -> None:
    await with_password(user)
    changing, cookie = await signed_in(user)
    other, other_cookie = await signed_in(user)
    token_api = bearer_api(await issue(user))
    answer = await changing.ask(model=streaming.model_id)
    session_streams = [
        await following(changing, answer["id"]),
        await following(other, answer["id"]),
    ]
    token_stream = await following(token_api, answer["id"])
    sockets = [await open_socket(cookie), await open_socket(other_cookie)]

    response = await changing.client.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302, response.content

    for stream in session_streams:
        await assert_signed_out(stream)
    for socket in sockets:
        await assert_closed_signed_out(socket)
    await assert_open(token_stream)
    # The session that changed the password goes on under its new key; the other is out.
    assert (await changing.open_stream(answer["id"])).status == 200
    assert (await other.open_stream(answer["id"])).status == 401
    assert (await Message.objects.aget(id=answer["id"])).status == "streaming"
    await token_stream.close()


# --- Deactivation ----------------------------------------------------------------------


async def test_deactivating_an_account_ends_all_its_readers_and_stops_its_answers(
    user: Any, other_user: Any, streaming: ScriptedProvider, open_socket: OpenSocket
) -> None:
    session, cookie = await signed_in(user)
    token_api = bearer_api(await issue(user))
    answer = await session.ask(model=streaming.model_id)
    theirs_api, their_cookie = await signed_in(other_user)
    theirs = await theirs_api.ask(model=streaming.model_id)
    readers = [(api, await following(api, answer["id"])) for api in (session, token_api)]
    their_stream = await following(theirs_api, theirs["id"])
    socket = await open_socket(cookie)
    their_socket = await open_socket(their_cookie)

    # What the admin's change form does when "Active" is unticked: save the user.
    user.is_active = False
    await user.asave()

    for reader, stream in readers:
        # Ended by the sign-out, or by the stopped answer's `final` if that came first
        # (with Redis the sign-out travels through it, the Stop does not).
        await stream.read_to_end(timeout=3)
        assert "signed out" in stream.comments or (stream.final or {}).get("status") == "stopped"
        assert (await reader.open_stream(answer["id"])).status == 401
    await assert_closed_signed_out(socket)
    stopped = await Message.objects.aget(id=answer["id"])
    assert stopped.status == "stopped"
    assert stopped.content == "Still going"
    assert streaming.runs[0].cancelled
    # Nobody else is touched.
    await assert_open(their_stream)
    await assert_socket_open(their_socket)
    assert (await Message.objects.aget(id=theirs["id"])).status == "streaming"
    await their_stream.close()


async def test_saving_a_user_without_touching_credentials_ends_nothing(
    user: Any, streaming: ScriptedProvider
) -> None:
    session, _cookie = await signed_in(user)
    answer = await session.ask(model=streaming.model_id)
    stream = await following(session, answer["id"])

    user.first_name = "Alice"
    await user.asave()  # a full save: readers check their credential, which still holds
    await user.asave(update_fields=["last_login"])  # every sign-in does this

    await assert_open(stream)
    await stream.close()


# --- Revoked tokens ----------------------------------------------------------------------


async def test_revoking_a_token_ends_the_streams_it_opened(
    user: Any, streaming: ScriptedProvider
) -> None:
    token, secret = await sync_to_async(services.api_token_create)(user=user, name="script")
    token_api = bearer_api(secret)
    session, _cookie = await signed_in(user)
    answer = await session.ask(model=streaming.model_id)
    token_stream = await following(token_api, answer["id"])
    session_stream = await following(session, answer["id"])

    response = await session.client.post(f"/accounts/tokens/{token.id}/revoke")
    assert response.status_code == 302

    await assert_signed_out(token_stream)
    await assert_open(session_stream)
    assert (await token_api.open_stream(answer["id"])).status == 401
    await session_stream.close()


# --- Several processes: the Redis channel layer ----------------------------------------


@pytest.fixture
async def redis_layer(settings: Any) -> AsyncIterator[None]:
    """The channel layer of multi-process mode (REDIS_URL), on its own key prefix."""
    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis is needed: {error}")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": f"chat-test-{secrets.token_hex(4)}:layer"},
        }
    }
    yield
    await get_channel_layer().flush()


@pytest.mark.usefixtures("redis_layer")
async def test_with_redis_logout_and_a_new_password_end_readers_too(
    user: Any, streaming: ScriptedProvider, open_socket: OpenSocket
) -> None:
    await with_password(user)
    leaving, cookie = await signed_in(user)
    changing, _ = await signed_in(user)
    answer = await leaving.ask(model=streaming.model_id)
    leaving_stream = await following(leaving, answer["id"])
    changing_stream = await following(changing, answer["id"])
    socket = await open_socket(cookie)
    await subscribed(socket, answer["id"])

    assert (await leaving.client.post("/accounts/logout/")).status_code == 302
    await assert_signed_out(leaving_stream)
    await assert_closed_signed_out(socket)
    await assert_open(changing_stream)

    response = await changing.client.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    await assert_signed_out(changing_stream)
