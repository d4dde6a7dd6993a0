"""Who calls the JSON API and the stream: a personal API token, or the session.

`Authorization: Bearer <token>` signs a request in by the token alone: the session cookie
of such a request is ignored, so a token request needs no CSRF token, and a cookie
cannot lend it anything. Without that header the session signs the request in, and
unsafe methods must pass Django's CSRF check, as for any form of the site. The API views
are `csrf_exempt` only so that this choice can be made here, per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from chat import services
from chat.revocation import Credential
from chat.views.errors import json_error


@dataclass(frozen=True, slots=True)
class Caller:
    user: Any
    credential: Credential


def _unauthorized(code: str, message: str, challenge: str) -> HttpResponse:
    return json_error(401, code, message, WWW_Authenticate=challenge)


def _unused(request: HttpRequest) -> HttpResponse:
    raise AssertionError("the CSRF check calls no view")


# Django's own middleware, used as a function: it keeps no state between requests.
_CSRF_CHECK = CsrfViewMiddleware(_unused)


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    """Django's CSRF check of a session request: None when it passes."""
    refusal: HttpResponse | None = _CSRF_CHECK.process_view(request, _unused, (), {})
    return refusal


def sign_in(request: HttpRequest) -> Caller | HttpResponse:
    """The signed-in caller of an API request, or the error response that refuses it.

    Sync (the token's or the session's and user's queries): a view that has sync work of
    its own to do next does both in one trip to the request's thread.
    """
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = services.api_token_for_secret(secret=secret.strip())
        if token is None:
            return _unauthorized(
                "invalid_token",
                "The API token is not valid: unknown, revoked, or of a disabled account.",
                'Bearer error="invalid_token"',
            )
        return Caller(token.user, Credential(token.user_id, token_id=token.id))
    # The session, then its user, in this thread (`request.auser()` would take two trips).
    user = get_user(request)
    if not user.is_authenticated:
        return _unauthorized("unauthenticated", "Sign in or send an API token.", "Bearer")
    refusal = _csrf_refusal(request)
    if refusal is not None:
        return refusal
    return Caller(user, Credential(int(user.pk), session_key=request.session.session_key))


async def api_caller(request: HttpRequest) -> Caller | HttpResponse:
    """`sign_in` from the event loop: one trip to the request's thread."""
    return await sync_to_async(sign_in)(request)


def body_too_large(request: HttpRequest) -> HttpResponse | None:
    """A 413 when the request's body is over DATA_UPLOAD_MAX_MEMORY_SIZE, else None.

    Reading it here, before anything else does, turns Django's RequestDataTooBig (a 400
    page by default) into the API's JSON error.
    """
    try:
        request.body  # noqa: B018 - read and size-checked once, then cached
    except RequestDataTooBig:
        return json_error(413, "too_large", "The request body is larger than this server accepts.")
    return None
