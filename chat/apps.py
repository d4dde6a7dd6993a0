from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # `revocation` connects the receivers that end a user's streams and sockets when
        # their sign-in ends (logout, a new password, a deactivated account); `checks`
        # lets Django's security checks see the project's middleware.
        from chat import checks, revocation  # noqa: F401
