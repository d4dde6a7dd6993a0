"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

from __future__ import annotations

import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

# Build the Django app (and so the app registry) before importing code that uses models.
django_asgi_app = get_asgi_application()

from chat.providers.registry import warm_up  # noqa: E402
from chat.recovery import sweep_in_background  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

sweep_in_background()
warm_up()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The Origin must be an allowed host (a page of this site); the session cookie
        # says who is there, and the consumer refuses anonymous sockets.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
