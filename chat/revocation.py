"""Ending open streams and sockets when the sign-in that opened them ends.

Every SSE stream and WebSocket remembers the credential it was opened with: a session, or
a personal API token. When a credential may have stopped working, the channel layer tells
that user's readers in every process (group `user-<id>`), and each decides for itself:

- `session.logged_out` names the session that logged out (by a hash of its key): readers
  of that session end at once. It is sent before Django deletes the session, so readers
  take its word rather than look.
- `credentials.changed` says that something about the user changed (a password, the
  account's `is_active`, a revoked token): each reader checks whether its own credential
  still signs it in, exactly as the next request would, and ends if not.

A WebSocket then closes with 4401; an SSE stream ends after a `: signed out` comment, and
the client's reconnection gets 401. The channel layer carries only these few control
messages, never tokens (PITFALLS.md).

Readers end, but answers go on: a closed reader is not a Stop, as everywhere else. Only
deactivating an account also stops its running answers, so that it spends nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import import_module
from typing import Any
from weakref import WeakKeyDictionary

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user, get_user_model, user_logged_out
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpRequest

from chat.models import ApiToken, Message

logger = logging.getLogger(__name__)

SESSION_LOGGED_OUT = "session.logged_out"
CREDENTIALS_CHANGED = "credentials.changed"
# The user fields whose change can end a sign-in.
_CREDENTIAL_FIELDS = frozenset({"password", "is_active"})


def user_group(user_id: Any) -> str:
    return f"user-{user_id}"


def session_tag(session_key: str | None) -> str | None:
    """Names a session on the channel layer without putting its key there."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32] if session_key else None


@dataclass(frozen=True, slots=True)
class Credential:
    """What signed a stream or socket in: a session, or an API token."""

    user_id: int
    session_key: str | None = None
    token_id: uuid.UUID | None = None

    def is_valid(self) -> bool:
        """Whether it still signs `user_id` in, as the next request would find. Sync (DB)."""
        if self.token_id is not None:
            return ApiToken.objects.filter(
                id=self.token_id,
                user_id=self.user_id,
                revoked_at__isnull=True,
                user__is_active=True,
            ).exists()
        if not self.session_key:
            return False
        # Django's own check: the session exists, names this user with a current password
        # hash, and the backend still lets the user in (ModelBackend: is_active). Like the
        # next request would, it deletes a session whose password hash is stale.
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(self.session_key)
        return get_user(request).pk == self.user_id

    async def ended_by(self, event: dict[str, Any]) -> bool:
        """Whether this channel-layer event ends what this credential opened."""
        if event.get("type") == SESSION_LOGGED_OUT:
            if self.token_id is not None:
                return False
            tag = event.get("session")
            return tag is None or tag == session_tag(self.session_key)
        if event.get("type") == CREDENTIALS_CHANGED:
            valid: bool = await database_sync_to_async(self.is_valid)()
            return not valid
        return False


# --- Announcing ----------------------------------------------------------------------


async def _announce(user_id: Any, event: dict[str, Any], *, stop_answers: bool) -> None:
    layer = get_channel_layer()
    if layer is not None:
        # Named, for the process-wide channels of SSE readers (in many users' groups).
        await layer.group_send(user_group(user_id), {**event, "user": str(user_id)})
    if stop_answers:
        from chat.generation import generation_stop

        streaming = await database_sync_to_async(_streaming_answers)(user_id)
        for message_id in streaming:
            await generation_stop(message_id, 0)


def _streaming_answers(user_id: Any) -> list[uuid.UUID]:
    return list(
        Message.objects.filter(
            conversation__user_id=user_id, status=Message.Status.STREAMING
        ).values_list("id", flat=True)
    )


# Announcements started from sync code on a running loop, kept until they are done.
_pending: set[asyncio.Task[None]] = set()


def _run(user_id: Any, event: dict[str, Any], *, stop_answers: bool) -> None:
    """Announce from sync code: a server thread, a management command, the shell."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    try:
        if loop is None:
            async_to_sync(_announce)(user_id, event, stop_answers=stop_answers)
        else:  # sync code called straight from a coroutine: do not block its loop
            task = loop.create_task(_announce(user_id, event, stop_answers=stop_answers))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
    except Exception:
        # The credential has changed whatever happens here: requests already see it. Only
        # the readers open now would stay open, until they end by themselves.
        logger.exception("could not announce a credential change of user=%s", user_id)


def credentials_changed(*, user_id: Any, deactivated: bool = False) -> None:
    """Ask the user's open readers to check their credential, once the change is committed.

    With `deactivated`, the user's running answers stop too.
    """
    event = {"type": CREDENTIALS_CHANGED}
    transaction.on_commit(lambda: _run(user_id, event, stop_answers=deactivated))


@receiver(user_logged_out, dispatch_uid="chat.end_readers_on_logout")
async def end_readers_on_logout(
    sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any
) -> None:
    """End what the logged-out session opened (every session's, without a request)."""
    if user is None or user.pk is None:
        return
    session_key = request.session.session_key if request is not None else None
    event = {"type": SESSION_LOGGED_OUT, "session": session_tag(session_key)}
    await _announce(user.pk, event, stop_answers=False)


@receiver(post_save, sender=get_user_model(), dispatch_uid="chat.end_readers_on_user_change")
def end_readers_on_user_change(
    sender: Any, instance: Any, update_fields: frozenset[str] | None = None, **kwargs: Any
) -> None:
    """A saved user may have a new password or be deactivated: readers check.

    A receiver, not a service, because users are changed by Django's own views (password
    change, the admin) that call no service of ours. Saves of other fields only
    (`last_login` at every sign-in) are skipped.
    """
    if kwargs.get("created") or kwargs.get("raw"):
        return
    if update_fields is not None and not _CREDENTIAL_FIELDS & set(update_fields):
        return
    credentials_changed(user_id=instance.pk, deactivated=not instance.is_active)


# --- Reading until revoked -----------------------------------------------------------


class _Watchers:
    """The SSE readers of one process (one event loop) and their channel on the layer.

    One channel and one listening task serve every reader of the process, instead of
    one of each per reader (a queue and a task: several KiB per open stream). The channel
    joins the group of each user with a reader; announcements name their user, so each
    reaches that user's readers only. It stays in a group until the process has no
    reader left at all, not only that user's: leaving a group while the same user's next
    reader joins it (a page reload) could otherwise land last, and that reader would miss
    its sign-out. Announcements to users without a reader here are dropped on arrival.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        # By user, then by credential: the `revoked` futures of the readers it signed in.
        self.readers: dict[str, dict[Credential, set[asyncio.Future[None]]]] = {}
        self.channel: str | None = None
        self.groups: set[str] = set()
        self.listener: asyncio.Task[None] | None = None
        self.checks: set[asyncio.Task[None]] = set()

    def enter(self, credential: Credential, revoked: asyncio.Future[None]) -> None:
        by_credential = self.readers.setdefault(str(credential.user_id), {})
        by_credential.setdefault(credential, set()).add(revoked)

    async def join(self, user_id: int) -> None:
        """Let announcements to `user_id` reach this process's readers (after `enter`)."""
        if self.channel is None:
            channel = await self.layer.new_channel()
            if self.channel is None:  # nobody opened one meanwhile
                self.channel = channel
                # A context of its own: not the first reader's request's.
                self.listener = asyncio.create_task(
                    self._listen(channel), context=contextvars.Context()
                )
        group = user_group(user_id)
        # Every time, not once per user: a join also renews the group's expiry.
        await self.layer.group_add(group, self.channel)
        self.groups.add(group)

    async def leave(self, credential: Credential, revoked: asyncio.Future[None]) -> None:
        user = str(credential.user_id)
        by_credential = self.readers.get(user, {})
        futures = by_credential.get(credential, set())
        futures.discard(revoked)
        if not futures:
            by_credential.pop(credential, None)
            if not by_credential:
                self.readers.pop(user, None)
        if self.readers or self.channel is None:
            return
        # The last reader: close the channel. The next reader opens a new one, so nothing
        # below can undo what it joins.
        listener, channel, groups = self.listener, self.channel, self.groups
        self.listener, self.channel, self.groups = None, None, set()
        assert listener is not None
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for group in groups:
            await asyncio.shield(self.layer.group_discard(group, channel))

    async def _listen(self, channel: str) -> None:
        while True:
            try:
                event = await self.layer.receive(channel)
            except Exception:
                # Every reader of the process depends on this one task: it carries on.
                logger.exception("could not receive from the channel layer; retrying")
                await asyncio.sleep(1.0)
                continue
            # Checks may query the database: they run beside the listener, which goes
            # back to the channel at once (a channel holds only so many messages).
            check = asyncio.create_task(self._dispatch(event))
            self.checks.add(check)
            check.add_done_callback(self.checks.discard)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        user = event.get("user")
        if user is None:  # from a process that does not name users yet: every reader
            readers = [r for by_user in self.readers.values() for r in by_user.items()]
        else:
            readers = list(self.readers.get(str(user), {}).items())
        # One check per credential, however many readers it signed in.
        for credential, futures in readers:
            try:
                ended = await credential.ended_by(event)
            except Exception:
                # Unsure whether it still signs them in: end them, and their
                # reconnections (which check) decide.
                logger.exception("could not check a credential of user=%s", user)
                ended = True
            if ended:
                for revoked in list(futures):
                    if not revoked.done():
                        revoked.set_result(None)


_watchers: WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchers] = WeakKeyDictionary()


@contextlib.asynccontextmanager
async def watch(credential: Credential) -> AsyncIterator[asyncio.Future[None]]:
    """A future that is done once `credential` no longer signs its reader in."""
    loop = asyncio.get_running_loop()
    revoked: asyncio.Future[None] = loop.create_future()
    layer = get_channel_layer()
    if layer is None:
        yield revoked
        return
    watchers = _watchers.get(loop)
    if watchers is None or watchers.layer is not layer:
        watchers = _watchers[loop] = _Watchers(layer)
    watchers.enter(credential, revoked)
    try:
        await watchers.join(credential.user_id)
        yield revoked
    finally:
        await watchers.leave(credential, revoked)


async def until[T](source: AsyncIterator[T], stop: asyncio.Future[None]) -> AsyncIterator[T]:
    """The items of `source` until it ends or `stop` is done, whichever comes first.

    A stop that comes while `source` waits (for a token that may be minutes away) cancels
    that wait, as asyncio.timeout cancels what it wraps, and `source` ends as it would in
    a cancelled task. A stop that comes while the caller is busy elsewhere (sending the
    last item) touches nothing there: the next item is not asked for. No task of its own:
    `source` runs in the caller's, at no cost per item.
    """
    task = asyncio.current_task()
    assert task is not None
    baseline = task.cancelling()
    waiting = interrupted = False

    def interrupt(_: asyncio.Future[None]) -> None:
        nonlocal interrupted
        if waiting and not interrupted:
            interrupted = True
            task.cancel()

    stop.add_done_callback(interrupt)
    try:
        while not stop.done():
            waiting = True
            try:
                item = await anext(source)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                # Ours (and nobody else's): the stop came. Anyone else's goes on up.
                if interrupted and task.uncancel() <= baseline:
                    return
                raise
            finally:
                waiting = False
            yield item
    finally:
        stop.remove_done_callback(interrupt)
        # Ended between two items, the source would wait for the garbage collector to run
        # its clean-up (a reader's presence, for one).
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
