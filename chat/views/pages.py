"""Server-rendered pages (htmx where it helps). Thin: check access, call a service, render."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.middleware import HtmxDetails

from chat import services
from chat.models import Conversation, UserSettings
from chat.providers.registry import available_models, default_model
from chat.views import downloads


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _sidebar(request: HttpRequest, current: Conversation | None) -> dict[str, Any]:
    query = request.GET.get("q", "").strip()
    return {
        "conversations": services.conversation_search(user=request.user, query=query)[:200],
        "current": current,
        "query": query,
        # While the current conversation's title is being generated, the list refreshes
        # itself until the title arrives.
        "title_pending": current is not None
        and services.conversation_title_pending(conversation=current),
    }


def _chat_page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    branch = services.conversation_branch(conversation=conversation) if conversation else []
    context = {
        **_sidebar(request, conversation),
        "conversation": conversation,
        "branch": branch,
        "models": available_models(),
        "selected_model": conversation.model if conversation else default_model(),
        "transport": _transport(request),
        "transports": UserSettings.Transport.choices,
    }
    return render(request, "chat/chat.html", context)


def _transport(request: HttpRequest) -> str:
    """How the page follows answers: `?transport=` for this page, else the user's choice."""
    asked = request.GET.get("transport")
    if asked in UserSettings.Transport.values:
        return asked
    return services.user_settings_for(user=request.user).transport


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return _chat_page(request, None)


def _conversation_or_404(request: HttpRequest, conversation_id: str) -> Conversation:
    try:
        return services.conversation_for(user=request.user, conversation_id=conversation_id)
    except services.NotFound:
        raise Http404("No such conversation.") from None


@require_GET
def conversation_page(request: HttpRequest, conversation_id: str) -> HttpResponse:
    return _chat_page(request, _conversation_or_404(request, conversation_id))


@require_GET
def transcript(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """The current branch alone, as the page shows it: swapped in after a version change."""
    conversation = _conversation_or_404(request, conversation_id)
    branch = services.conversation_branch(conversation=conversation)
    return render(request, "chat/chat.html#transcript", {"branch": branch})


@require_GET
def conversation_export(
    request: HttpRequest, conversation_id: str, file_format: str
) -> HttpResponse:
    """The page's Export links: the conversation as a Markdown or JSON attachment."""
    if file_format not in downloads.FORMATS:
        raise Http404("No such format.")
    return downloads.conversation_download(
        _conversation_or_404(request, conversation_id), file_format
    )


@require_GET
def sidebar(request: HtmxHttpRequest) -> HttpResponse:
    # The page's own URL says which conversation is open (htmx sends it along), so a
    # page whose URL changed after its first message still gets the right highlight.
    current_id = request.GET.get("current")
    if not current_id and request.htmx and request.htmx.current_url_abs_path:
        match = re.fullmatch(r"/c/([0-9a-f-]{36})/", request.htmx.current_url_abs_path)
        current_id = match.group(1) if match else None
    current = None
    if current_id:
        try:
            current = services.conversation_for(user=request.user, conversation_id=current_id)
        except services.NotFound:
            current = None
    return render(request, "chat/chat.html#sidebar", _sidebar(request, current))


@login_not_required
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.CHAT_ALLOW_SIGNUP:
        raise Http404("Sign-up is closed on this site.")
    if request.user.is_authenticated:
        return redirect("chat:home")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
        return redirect("chat:home")
    return render(request, "registration/signup.html", {"form": form})
