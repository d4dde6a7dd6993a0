"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

from __future__ import annotations

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

# Build the Django app (and so the app registry) before importing code that uses models.
django_asgi_app = get_asgi_application()

from chat.providers.registry import warm_up  # noqa: E402
from chat.recovery import sweep_in_background  # noqa: E402

sweep_in_background()
warm_up()

application = ProtocolTypeRouter({"http": django_asgi_app})
