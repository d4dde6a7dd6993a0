"""`manage.py issue_api_token <username> [--name NAME]`: a personal API token, printed once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import services


class Command(BaseCommand):
    help = (
        "Create a personal API token for a user and print it. Only its hash is stored: "
        "it cannot be shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--name", default="Issued by manage.py", help="How the token is listed (its label)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(options["username"])
        except model.DoesNotExist:
            raise CommandError(f"No user named {options['username']!r}.") from None
        if not user.is_active:
            raise CommandError(f"The account {options['username']!r} is disabled.")
        try:
            token, secret = services.api_token_create(user=user, name=options["name"])
        except services.ServiceError as error:
            raise CommandError(error.message) from None
        self.stderr.write(
            f"Token {token.name!r} ({token.prefix}…) for {user.get_username()}: "
            "copy it now, it is not shown again."
        )
        # Alone on stdout, so that a script can capture it.
        self.stdout.write(secret)
