"""The user's preferences as JSON: `GET` and `PATCH /api/settings`."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse

from chat import services
from chat.serializers import user_settings_json
from chat.views.api import api, body


@api("GET", "PATCH")
async def user_settings(request: HttpRequest) -> HttpResponse:
    if request.method == "PATCH":
        changes = body(request)
        found = await sync_to_async(services.user_settings_update)(
            user=request.user, changes=changes
        )
    else:
        found = await sync_to_async(services.user_settings_for)(user=request.user)
    return JsonResponse(user_settings_json(found))
