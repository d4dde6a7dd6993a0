"""The static files middleware: on the event loop for pages, files served either way."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncRequestFactory, RequestFactory

from chat.middleware import StaticFilesMiddleware

CSS = b"body { color: #123; }\n"


@pytest.fixture
def static_root(tmp_path: Path, settings: Any) -> Path:
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "site.css").write_bytes(CSS)
    settings.STATIC_ROOT = tmp_path
    settings.STATIC_URL = "/static/"
    settings.WHITENOISE_AUTOREFRESH = False
    settings.WHITENOISE_USE_FINDERS = False
    return tmp_path


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content)


async def test_under_asgi_a_page_passes_through_on_the_event_loop(static_root: Path) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def view(request: HttpRequest) -> HttpResponse:
        seen.append(threading.get_ident())
        return HttpResponse("page")

    middleware = StaticFilesMiddleware(view)
    assert iscoroutinefunction(middleware)  # Django keeps the chain below it async

    response = await middleware(AsyncRequestFactory().get("/api/conversations"))

    assert response.content == b"page"
    assert seen == [loop_thread]


@pytest.mark.parametrize("autorefresh", [False, True])
async def test_under_asgi_a_static_file_is_served(
    static_root: Path, settings: Any, autorefresh: bool
) -> None:
    settings.WHITENOISE_AUTOREFRESH = autorefresh

    async def view(request: HttpRequest) -> HttpResponse:
        raise AssertionError("a static file never reaches the views")

    middleware = StaticFilesMiddleware(view)
    response = await middleware(AsyncRequestFactory().get("/static/chat/site.css"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert int(response["Content-Length"]) == len(CSS)
    assert _body(response) == CSS


def test_under_wsgi_it_stays_synchronous(static_root: Path) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("page")

    middleware = StaticFilesMiddleware(view)
    assert not iscoroutinefunction(middleware)
    assert middleware(RequestFactory().get("/about")).content == b"page"
    assert _body(middleware(RequestFactory().get("/static/chat/site.css"))) == CSS
