"""The WebSocket (CONTRACT §6): send, subscribe and cancel over one socket per page.

A thin reader, like the SSE view: each subscription is one asyncio task that follows the
stream log through `chat.streams.reader.follow` and sends every event itself. Tokens never
travel through the channel layer: Channels awaits a thread hop before every handler, so
that would serialise every token of every user on one thread (PITFALLS.md). The channel
layer carries only control messages: close a socket whose sign-in ended (logout, a new
password, a deactivated account; see `chat.revocation`).

Client frames are JSON objects with a `type`; any of them may carry a `ref` (a short string
or a number) that the direct answer to it (`accepted`, or an `error`) carries back. A bad
frame gets an `error` frame without `id`, and the socket stays open; the stream's own
`error` event always has an `id`. See docs/api.md for the protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import services
from chat.events import json_bytes, rendered_point, resume_point
from chat.generation import answer_stop, generation_ready, generation_start
from chat.models import Message
from chat.revocation import Credential, user_group
from chat.serializers import message_json
from chat.streams.reader import Ping, follow, is_finished_at

logger = logging.getLogger(__name__)

# Close code for a socket whose sign-in ended: its session logged out, the password
# changed, the account was deactivated (4000-4999 belong to applications); the page does
# not reconnect after it.
CLOSE_SIGNED_OUT = 4401
# Close code when a subscription failed inside the server; the page reconnects and
# subscribes again from what it has.
CLOSE_INTERNAL_ERROR = 1011

MAX_REF_CHARS = 64

type Frame = dict[str, Any]


async def _db[**P, R](fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync service in a thread that closes stale connections, like a request."""
    result: R = await database_sync_to_async(fn)(*args, **kwargs)
    return result


def _required_str(frame: Frame, field: str) -> str:
    value = frame.get(field)
    if not isinstance(value, str) or not value:
        raise services.ServiceError(f"`{field}` is required (a string).", code="bad_frame")
    return value


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self.group: str | None = None
        self.credential: Credential | None = None
        # message id -> the task relaying that message's events to this socket
        self.subscriptions: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.handlers = {
            "send": self.on_send,
            "subscribe": self.on_subscribe,
            "cancel": self.on_cancel,
        }

    # --- Connection -----------------------------------------------------------------

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Closing before accepting refuses the handshake (daphne answers 403).
            await self.close()
            return
        self.user = user
        self.credential = Credential(user.pk, session_key=self.scope["session"].session_key)
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.unsubscribe_all()
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def session_logged_out(self, event: dict[str, Any]) -> None:
        """The channel layer's word that a session of this user logged out."""
        await self.end_if_signed_out(event)

    async def credentials_changed(self, event: dict[str, Any]) -> None:
        """The channel layer's word that this user's password or account changed."""
        await self.end_if_signed_out(event)

    async def end_if_signed_out(self, event: dict[str, Any]) -> None:
        if self.credential is not None and await self.credential.ended_by(event):
            self.credential = None
            await self.unsubscribe_all()
            await self.close(code=CLOSE_SIGNED_OUT)

    # --- Client frames --------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        ref: str | int | None = None
        try:
            frame = self.parse(text_data, bytes_data)
            ref = frame.get("ref")
            await self.handlers[frame["type"]](frame, ref)
        except services.ServiceError as error:
            reply: Frame = {"type": "error", "code": error.code, "message": error.message}
            if isinstance(error, services.Throttled):
                reply["retry_after"] = error.retry_after
            await self.send_frame(reply, ref)

    def parse(self, text_data: str | None, bytes_data: bytes | None) -> Frame:
        if text_data is None:
            raise services.ServiceError("Frames must be JSON text.", code="bad_frame")
        limit = settings.CHAT_WS_MAX_FRAME_BYTES
        # A character takes at most 4 bytes: only a long frame needs encoding to measure.
        if len(text_data) * 4 > limit and len(text_data.encode()) > limit:
            raise services.TooLarge(f"A frame may hold at most {limit} bytes.")
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            raise services.ServiceError("The frame is not valid JSON.", code="bad_json") from None
        if not isinstance(frame, dict):
            raise services.ServiceError("A frame must be a JSON object.", code="bad_frame")
        ref = frame.get("ref")
        if ref is not None and not (
            (isinstance(ref, str) and len(ref) <= MAX_REF_CHARS)
            or (isinstance(ref, int) and not isinstance(ref, bool))
        ):
            frame.pop("ref")
            raise services.ServiceError(
                f"`ref` must be a number or a string of at most {MAX_REF_CHARS} characters.",
                code="bad_frame",
            )
        kind = frame.get("type")
        if not isinstance(kind, str) or kind not in self.handlers:
            raise services.ServiceError(
                f"Unknown frame type: {str(kind)[:40]!r}.", code="unknown_type"
            )
        return frame

    async def on_send(self, frame: Frame, ref: str | int | None) -> None:
        """A new message and its answer, exactly as the API's POST .../messages."""
        conversation_id = _required_str(frame, "conversation_id")
        self.check_room(None)
        await generation_ready()
        plan, assistant, accepted = await _db(
            self.create_messages,
            conversation_id=conversation_id,
            content=frame.get("content"),
            parent_id=frame.get("parent_id"),
            model=frame.get("model"),
            client_key=frame.get("client_key"),
        )
        # No plan: a repeated `client_key`, whose answer was started by the first send.
        if plan is not None:
            generation_start(plan)
        await self.send_frame({"type": "accepted", **accepted}, ref)
        self.subscribe(assistant, None, reset=False)

    def create_messages(
        self, *, conversation_id: str, content: Any, parent_id: Any, model: Any, client_key: Any
    ) -> tuple[services.GenerationPlan | None, Message, Frame]:
        conversation = services.conversation_for(user=self.user, conversation_id=conversation_id)
        user_message, assistant, plan = services.message_send(
            user=self.user,
            conversation=conversation,
            content=content,
            parent_id=parent_id,
            model=model,
            client_key=client_key,
        )
        accepted = {
            "user_message": message_json(user_message),
            "assistant_message": message_json(assistant),
        }
        return plan, assistant, accepted

    async def on_subscribe(self, frame: Frame, ref: str | int | None) -> None:
        message_id = _required_str(frame, "message_id")
        after, reset = resume_point(frame.get("after"))
        message = await _db(services.message_for, user=self.user, message_id=message_id)
        if message.role != Message.Role.ASSISTANT:
            raise services.ServiceError(
                "Only assistant messages have a stream.", code="not_an_answer"
            )
        if is_finished_at(message, after):
            # The client has the final event already: like SSE's 204, nothing follows.
            self.unsubscribe(message.id)
            return
        self.subscribe(message, after, reset=reset, rendered=rendered_point(frame.get("rendered")))

    async def on_cancel(self, frame: Frame, ref: str | int | None) -> None:
        """Stop, as POST /api/messages/<id>/stop; the answer's stream then ends `stopped`.

        Nothing is sent back: subscribers get the answer's `final` event.
        """
        message_id = _required_str(frame, "message_id")
        message = await _db(services.message_for, user=self.user, message_id=message_id)
        if message.is_streaming:
            # No waiting for the end here: it would hold up this socket's other frames,
            # and the stream reports it anyway.
            await answer_stop(message.id, 0)

    # --- Subscriptions --------------------------------------------------------------

    def check_room(self, message_id: uuid.UUID | None) -> None:
        if (
            message_id not in self.subscriptions
            and len(self.subscriptions) >= settings.CHAT_WS_MAX_SUBSCRIPTIONS
        ):
            raise services.ServiceError(
                f"A socket follows at most {settings.CHAT_WS_MAX_SUBSCRIPTIONS} answers at once.",
                code="too_many_subscriptions",
            )

    def subscribe(
        self, message: Message, after: int | None, *, reset: bool, rendered: int | None = None
    ) -> None:
        """Relay `message`'s events after `after`, replacing this socket's earlier subscription."""
        self.check_room(message.id)
        self.unsubscribe(message.id)
        task = asyncio.create_task(self.relay(message, after, reset, rendered))
        self.subscriptions[message.id] = task
        task.add_done_callback(partial(self.forget, message.id))

    def unsubscribe(self, message_id: uuid.UUID) -> None:
        task = self.subscriptions.pop(message_id, None)
        if task is not None:
            task.cancel()

    async def unsubscribe_all(self) -> None:
        tasks = list(self.subscriptions.values())
        self.subscriptions.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def forget(self, message_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        if self.subscriptions.get(message_id) is task:
            del self.subscriptions[message_id]

    async def relay(
        self, message: Message, after: int | None, reset: bool, rendered: int | None
    ) -> None:
        message_id = str(message.id)
        try:
            async for event in follow(message, after, reset=reset, rendered=rendered):
                # No keep-alive frames: daphne pings an idle socket itself (--ping-interval).
                if not isinstance(event, Ping):
                    await self.send_frame(event.ws(message_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The page reconnects and resubscribes from the last id it saw: nothing is lost.
            logger.exception("websocket relay failed message=%s", message_id)
            await self.close(code=CLOSE_INTERNAL_ERROR)

    async def send_frame(self, frame: Frame, ref: str | int | None = None) -> None:
        if ref is not None:
            frame["ref"] = ref
        await self.send(text_data=json_bytes(frame).decode())
