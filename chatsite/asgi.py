"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

from __future__ import annotations

import gc
import os

import django
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

# Set Django up (and so the app registry) before importing code that uses models.
django.setup(set_prefix=False)

from chat.handlers import ChatASGIHandler  # noqa: E402
from chat.providers.registry import warm_up  # noqa: E402
from chat.recovery import sweep_in_background  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

sweep_in_background()
warm_up()

application = ProtocolTypeRouter(
    {
        "http": ChatASGIHandler(),
        # The Origin must be an allowed host (a page of this site); the session cookie
        # says who is there, and the consumer refuses anonymous sockets.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

# Everything loaded so far (Django, the SDKs, the app's modules: most of the process's
# objects) lives as long as the process. Out of the collector's sight, a full collection
# no longer walks it: with hundreds of open streams, those walks stalled the event loop
# for 100 ms and more, and every stream's next token with it.
gc.freeze()
# And a young collection every 10,000 new objects rather than every 700: each streamed
# answer makes thousands of short-lived ones (a request, its tasks, frames), and at 160
# streams the default's 30 passes a second, about 1.6 ms each, took 5 % of the core.
gc.set_threshold(10_000, 10, 10)
