"""Middleware of the project's own."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


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
