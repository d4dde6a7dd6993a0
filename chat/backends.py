"""The authentication backend: Django's ModelBackend, behind the sign-in throttle.

Every sign-in goes through `authenticate()`, whichever page asks (ours or the admin's),
so the throttle sits here and no login form can bypass it. The rule itself lives in
`services.login_throttle_check`.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from chat import services

# Set on the request of a refused attempt, so that the page can say why (and answer 429).
THROTTLED_ATTRIBUTE = "chat_login_throttled"


def client_address(request: HttpRequest | None) -> str | None:
    """The client's address: daphne's `--proxy-headers` puts the proxy's X-Forwarded-For here."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


class ThrottledModelBackend(ModelBackend):
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None  # not a password sign-in: nothing to check or count
        address = client_address(request)
        try:
            services.login_throttle_check(username=username, ip=address)
        except services.Throttled as refusal:
            if request is not None:
                setattr(request, THROTTLED_ATTRIBUTE, refusal)
            # PermissionDenied ends authenticate() here: no password is checked.
            raise PermissionDenied(refusal.message) from None
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            services.login_failure_record(username=username, ip=address)
        else:
            services.login_success_record(username=username)
        return user

    async def aauthenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        # ModelBackend's own async version would skip the throttle.
        return await sync_to_async(self.authenticate)(
            request, username=username, password=password, **kwargs
        )
