"""The static files middleware: on the event loop for pages, files served either way."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, iscoroutinefunction
from django.core.checks import run_checks
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, AsyncRequestFactory, RequestFactory

from chat.middleware import StaticFilesMiddleware
from tests.helpers import ChatApi

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


def _deploy_check_ids() -> set[str]:
    found = run_checks(include_deployment_checks=True)
    return {message.id for message in found if message.id and not message.is_silenced()}


def test_django_s_deploy_checks_still_see_the_middleware(settings: Any) -> None:
    """Django finds its middleware by name; the checks of their settings still run."""
    settings.SECURE_HSTS_SECONDS = 0
    settings.SESSION_COOKIE_SECURE = False
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    found = _deploy_check_ids()
    assert {"security.W004", "security.W012", "security.W019"} <= found
    assert not found & {"security.W001", "security.W002", "security.W003"}
    assert not any(id.startswith("chat.security.") for id in found)


@pytest.mark.parametrize(
    ("removed", "warning"),
    [
        ("chat.middleware.SecurityMiddleware", "chat.security.W001"),
        ("chat.middleware.XFrameOptionsMiddleware", "chat.security.W002"),
        ("chat.middleware.CsrfViewMiddleware", "chat.security.W003"),
    ],
)
def test_a_missing_protection_is_still_reported(settings: Any, removed: str, warning: str) -> None:
    settings.MIDDLEWARE = [path for path in settings.MIDDLEWARE if path != removed]
    assert warning in _deploy_check_ids()


@pytest.mark.django_db(transaction=True)
async def test_no_middleware_hook_switches_to_a_thread(
    api: ChatApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI, the hooks that do no I/O run on the loop: only the view's own
    database work (and Django's request signals) goes to a thread."""
    await api.create_conversation()
    switched: list[str] = []
    init = SyncToAsync.__init__

    def recording(self: SyncToAsync[Any, Any], func: Any, *args: Any, **kwargs: Any) -> None:
        switched.append(getattr(func, "__qualname__", type(func).__qualname__))
        init(self, func, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__init__", recording)
    listed = await api.get("/api/conversations")
    assert listed.status_code == 200 and len(listed.json()["conversations"]) == 1
    anonymous = await AsyncClient().get("/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]

    hooks = [name for name in switched if name.split(".")[-1].startswith("process_")]
    assert switched, "the views' own database work still runs in a thread"
    assert hooks == []
