"""Account pages: personal API tokens, and the sign-in pages' throttle message.

Plain forms with CSRF tokens: they work without JavaScript, and there is nothing here that
streams. A new token's secret is shown once, in the answer to the form that created it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.forms.utils import ErrorList
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from chat import services
from chat.backends import THROTTLED_ATTRIBUTE

View = Callable[..., HttpResponseBase]


def _account_page(request: HttpRequest, *, status: int = 200, **context: Any) -> HttpResponse:
    context["tokens"] = services.api_token_list(user=request.user)
    response = render(request, "account/account.html", context, status=status)
    # The page may hold a secret, and always lists live tokens: never keep a copy.
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def account(request: HttpRequest) -> HttpResponse:
    return _account_page(request)


@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    try:
        token, secret = services.api_token_create(user=request.user, name=request.POST.get("name"))
    except services.ServiceError as error:
        return _account_page(
            request,
            status=400,
            name_error=error.message,
            name=request.POST.get("name", ""),
        )
    return _account_page(request, new_token=token, new_secret=secret)


@require_POST
def token_revoke(request: HttpRequest, token_id: str) -> HttpResponse:
    try:
        token = services.api_token_for(user=request.user, token_id=token_id)
    except services.NotFound:
        raise Http404("No such token.") from None
    services.api_token_revoke(token=token)
    messages.success(request, f"The token “{token.name}” is revoked: it no longer works.")
    return redirect("account")


def throttled_login(view: View) -> View:
    """A sign-in view that says so, with 429 and Retry-After, when the throttle refused.

    The throttle itself is in the authentication backend; this only words the page.
    """

    @login_not_required
    @never_cache
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        refusal: services.Throttled | None = getattr(request, THROTTLED_ATTRIBUTE, None)
        if refusal is None:
            return response
        if isinstance(response, TemplateResponse) and response.context_data:
            form = response.context_data.get("form")
            if form is not None:
                # In place of "wrong user name or password", which would be untrue.
                form.errors["__all__"] = ErrorList([refusal.message], error_class="nonfield")
        response.status_code = 429
        response["Retry-After"] = str(refusal.retry_after)
        return response

    return wrapper
