"""WebSocket routes (CONTRACT §6); chatsite/asgi.py wraps them in origin and session checks."""

from __future__ import annotations

from django.urls import path

from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
]
