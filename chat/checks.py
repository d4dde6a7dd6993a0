"""System checks that see the project's middleware for the Django classes they extend.

Django's security checks look for their middleware by dotted path: with the subclasses
of chat/middleware.py listed instead, they would warn that the protection is missing
and skip every check of its settings (HSTS, secure cookies, X-Frame-Options…). Those
three warnings are silenced in settings; this check runs Django's security checks again
as if the stock paths were listed, and reports what that run finds, a missing
middleware included.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.test.utils import override_settings

# The project's class for each stock one Django's checks look for.
EXTENDS = {
    "chat.middleware.SecurityMiddleware": "django.middleware.security.SecurityMiddleware",
    "chat.middleware.XFrameOptionsMiddleware": (
        "django.middleware.clickjacking.XFrameOptionsMiddleware"
    ),
    "chat.middleware.CsrfViewMiddleware": "django.middleware.csrf.CsrfViewMiddleware",
    "chat.middleware.SessionMiddleware": "django.contrib.sessions.middleware.SessionMiddleware",
    "chat.middleware.ContentSecurityPolicyMiddleware": (
        "django.middleware.csp.ContentSecurityPolicyMiddleware"
    ),
}
# Django's "middleware missing" warnings, which settings silence in favour of these.
MISSING = {"security.W001", "security.W002", "security.W003"}


def _django_security_checks() -> list[Any]:
    registered = checks.registry.registry.get_checks(include_deployment_checks=True)
    return [
        check
        for check in registered
        if getattr(check, "__module__", "").startswith("django.core.checks.security")
    ]


@checks.register(checks.Tags.security, deploy=True)
def middleware_seen_as_django_s(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    security_checks = _django_security_checks()
    as_listed = [message for check in security_checks for message in check(app_configs)]
    stock = [EXTENDS.get(path, path) for path in settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=stock):
        as_django = [message for check in security_checks for message in check(app_configs)]
    found: list[checks.CheckMessage] = []
    for message in as_django:
        if message.id in MISSING:
            # Silenced under Django's id, which it raises for the project's classes too.
            found.append(checks.Warning(message.msg, hint=message.hint, id=f"chat.{message.id}"))
        elif message not in as_listed:  # else Django's own run reports it already
            found.append(message)
    return found
