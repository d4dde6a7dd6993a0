from __future__ import annotations

from django.urls import path

from chat.views import api, pages, preferences, stream

app_name = "chat"

urlpatterns = [
    # First: a request keeps its match, with a list of every pattern tried before it, for
    # as long as its event stream stays open.
    path("api/messages/<str:message_id>/stream", stream.message_stream, name="api-stream"),
    path("", pages.home, name="home"),
    path("c/<uuid:conversation_id>/", pages.conversation_page, name="conversation"),
    path("c/<uuid:conversation_id>/transcript", pages.transcript, name="transcript"),
    path(
        "c/<uuid:conversation_id>/export.<str:file_format>",
        pages.conversation_export,
        name="conversation-export",
    ),
    path("chat/sidebar", pages.sidebar, name="sidebar"),
    path("api/conversations", api.conversations, name="api-conversations"),
    path("api/conversations/<str:conversation_id>", api.conversation, name="api-conversation"),
    path(
        "api/conversations/<str:conversation_id>/export",
        api.conversation_export,
        name="api-conversation-export",
    ),
    path(
        "api/conversations/<str:conversation_id>/messages",
        api.conversation_messages,
        name="api-conversation-messages",
    ),
    path("api/messages/<str:message_id>", api.message, name="api-message"),
    path("api/messages/<str:message_id>/stop", api.message_stop, name="api-stop"),
    path("api/messages/<str:message_id>/edit", api.message_edit, name="api-edit"),
    path("api/messages/<str:message_id>/regenerate", api.message_regenerate, name="api-regenerate"),
    path("api/messages/<str:message_id>/select", api.message_select, name="api-select"),
    path("api/settings", preferences.user_settings, name="api-settings"),
]
