from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, Any]:
    return {
        "allow_signup": settings.CHAT_ALLOW_SIGNUP,
        "max_prompt_chars": settings.CHAT_MAX_PROMPT_CHARS,
        "default_system_prompt": settings.CHAT_SYSTEM_PROMPT,
    }
