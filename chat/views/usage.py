"""The admin's usage page: tokens and messages per user and per model per day, time to
first token per model, and the per-user daily token quotas, which admins edit here.

Served by the admin site (`chat/admin_site.py`), which lets only active staff in. Reading
needs `chat.view_message` (reviewers have it); setting a quota needs
`chat.change_usersettings`.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from chat import services
from chat import usage as figures
from chat.admin_site import USAGE_PERMISSION

QUOTA_PERMISSION = "chat.change_usersettings"
WINDOWS = (1, 7, 14, 30, 90)  # days the page offers
DEFAULT_WINDOW = 7


class QuotaForm(forms.Form):
    username = forms.CharField(max_length=150)
    daily_token_quota = forms.IntegerField(
        min_value=0, max_value=services.MAX_DAILY_TOKEN_QUOTA, required=False
    )

    def clean_username(self) -> Any:
        username = self.cleaned_data["username"].strip()
        User = get_user_model()
        user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise forms.ValidationError(f"There is no user {username!r}.")
        self.cleaned_data["user"] = user
        return username


def _window(request: HttpRequest) -> int:
    try:
        days = int(request.GET.get("days", DEFAULT_WINDOW))
    except ValueError:
        return DEFAULT_WINDOW
    return days if days in WINDOWS else DEFAULT_WINDOW


@require_http_methods(["GET", "HEAD", "POST"])
def usage(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(USAGE_PERMISSION):
        raise PermissionDenied
    can_edit = request.user.has_perm(QUOTA_PERMISSION)
    days = _window(request)
    form = QuotaForm()
    status = 200
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied
        form = QuotaForm(request.POST)
        if form.is_valid():
            quota = form.cleaned_data["daily_token_quota"]
            try:
                services.user_quota_set(user=form.cleaned_data["user"], quota=quota)
            except services.ServiceError as error:
                form.add_error("daily_token_quota", error.message)
            else:
                messages.success(request, _quota_said(form.cleaned_data["username"], quota))
                return redirect(f"{reverse('admin:usage')}?days={days}")
        status = 400

    since = figures.window_start(days)
    by_user = figures.usage_by_user_day(since=since)
    by_model = figures.usage_by_model_day(since=since)
    context = {
        **admin.site.each_context(request),
        "title": "Usage and quotas",
        "days": days,
        "windows": WINDOWS,
        "since": since,
        "by_user": by_user,
        "by_model": by_model,
        "totals": {
            "sent": sum(row.sent for row in by_user),
            "answers": sum(row.answers for row in by_user),
            "tokens": sum(row.tokens for row in by_user),
        },
        "latency": figures.latency_by_model(since=since),
        "quotas": figures.quota_rows(user_ids={row.user_id for row in by_user}),
        "site_quota": settings.CHAT_DAILY_TOKEN_QUOTA,
        "can_edit": can_edit,
        "form": form,
    }
    return TemplateResponse(request, "admin/chat/usage.html", context, status=status)


def _quota_said(username: str, quota: int | None) -> str:
    if quota is None:
        return f"Daily token quota of {username}: the site's."
    if quota == 0:
        return f"Daily token quota of {username}: unlimited."
    return f"Daily token quota of {username}: {quota} tokens."
