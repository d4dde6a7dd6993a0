"""The middleware stack, able to run on the event loop.

Under ASGI, Django runs each hook of a stock middleware (`process_request`,
`process_view`, `process_response`) through `sync_to_async`: a switch to the request's
worker thread and back. With the usual stack that is about sixteen round trips per
request, two requests per answer (the send and its stream), though almost every hook
only reads headers and sets some: the switches cost more CPU than the work. The
classes here run such hooks on the loop, and keep the thread for the cases that touch
the database (a session to save, messages to store, a user to load).

Under WSGI (the sync test client, `runserver` without ASGI) they behave exactly as the
stock classes do.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware import clickjacking, common, csp, csrf, security
from whitenoise.middleware import WhiteNoiseMiddleware

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class _HooksOnTheLoop:
    """For a MiddlewareMixin whose process_request and process_response do no I/O."""

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> Any:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(_HooksOnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(_HooksOnTheLoop, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(_HooksOnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class ContentSecurityPolicyMiddleware(_HooksOnTheLoop, csp.ContentSecurityPolicyMiddleware):
    pass


class AuthenticationMiddleware(_HooksOnTheLoop, auth.AuthenticationMiddleware):
    """Sets the lazy `request.user` and `request.auser`; neither loads anything yet."""


class _ResponseInTheThreadWhenStoring:
    """For a MiddlewareMixin whose process_response only sometimes stores something."""

    get_response: Any
    process_request: Any
    process_response: Any

    def stores(self, request: HttpRequest) -> bool:
        raise NotImplementedError

    async def __acall__(self, request: HttpRequest) -> Any:
        self.process_request(request)
        response = await self.get_response(request)
        if self.stores(request):
            return await sync_to_async(self.process_response)(request, response)
        return self.process_response(request, response)


class SessionMiddleware(_ResponseInTheThreadWhenStoring, sessions.SessionMiddleware):
    """The session store is lazy; only saving a changed session needs the thread."""

    def stores(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(_ResponseInTheThreadWhenStoring, messages.MessageMiddleware):
    """Messages are stored (in a cookie, or the session) only if a view used some."""

    def stores(self, request: HttpRequest) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class CsrfViewMiddleware(csrf.CsrfViewMiddleware):
    """The token comes from a cookie and is checked against a header or the form.

    A request that needs a check (an unsafe method to a view that is not exempt) is
    checked in the thread: a refusal renders the failure page. With the token kept in
    the session (CSRF_USE_SESSIONS), every hook needs the thread.
    """

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if self.async_mode:  # Django adapts the hook to the mode it finds
            self.process_view = self.aprocess_view  # type: ignore[assignment,method-assign]

    async def __acall__(self, request: HttpRequest) -> Any:
        if settings.CSRF_USE_SESSIONS:
            response: Any = await super().__acall__(request)
            return response
        self.process_request(request)
        response = await self.get_response(request)  # type: ignore[misc]  # async here
        return self.process_response(request, response)

    async def aprocess_view(
        self, request: HttpRequest, callback: Any, args: Any, kwargs: Any
    ) -> Any:
        check = super().process_view
        if settings.CSRF_USE_SESSIONS or (
            request.method not in SAFE_METHODS and not getattr(callback, "csrf_exempt", False)
        ):
            checked: Any = await sync_to_async(check)(request, callback, args, kwargs)
            return checked
        return check(request, callback, args, kwargs)


class LoginRequiredMiddleware(auth.LoginRequiredMiddleware):
    """The user is loaded with the async ORM, and only for views that need one."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if self.async_mode:
            self.process_view = self.aprocess_view  # type: ignore[assignment,method-assign]

    async def aprocess_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        if not getattr(view_func, "login_required", True):
            return None
        user = await request.auser()
        # What the stock middleware's check leaves behind: a view that reads
        # `request.user` then finds it loaded.
        request.user = user
        if user.is_authenticated:
            return None
        return self.handle_no_permission(request, view_func)


class StaticFilesMiddleware(WhiteNoiseMiddleware):  # type: ignore[misc]  # untyped
    """WhiteNoise, able to run on the event loop.

    WhiteNoise's middleware is synchronous only. Under ASGI, Django then runs every
    request through a worker thread from that point down and hops back to the loop for
    the async views below: two thread switches per request, and the request thread's
    start, for pages that are not static files at all. Here a request that is not for a
    static file costs one dictionary lookup on the loop; a static file (its lookup on
    disk when WHITENOISE_AUTOREFRESH is on, the open of its file) is served from a
    thread.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            response: HttpResponseBase = await self.get_response(request)
            return response
        served: HttpResponseBase = await sync_to_async(self.serve)(static_file, request)
        return served
