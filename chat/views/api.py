"""The JSON API (CONTRACT §4). Thin: parse, check access, call a service, encode."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from chat import services
from chat.generation import answer_stop, generation_ready, generation_start
from chat.models import Message
from chat.serializers import conversation_json, message_json
from chat.views import downloads
from chat.views.access import Caller, api_caller, body_too_large
from chat.views.errors import json_error

ApiView = Callable[..., Coroutine[Any, Any, HttpResponse]]

# How long Stop waits for the generation to record its end before answering.
STOP_WAIT_SECONDS = 2.0


def api(*methods: str) -> Callable[[ApiView], ApiView]:
    """Route by method, sign the caller in, parse JSON bodies, and map errors to JSON.

    The caller is a session (CSRF-checked) or a personal API token: see `access.py`.
    """

    def decorate(view: ApiView) -> ApiView:
        @login_not_required
        @csrf_exempt  # checked in api_caller, for session requests only
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = json_error(
                    405, "method_not_allowed", f"{request.method} is not allowed here."
                )
                response["Allow"] = ", ".join(methods)
                return response
            refusal = body_too_large(request)
            if refusal is not None:
                return refusal
            caller = await api_caller(request)
            if not isinstance(caller, Caller):
                return caller
            request.user = caller.user
            try:
                return await view(request, *args, **kwargs)
            except services.Throttled as error:
                return json_error(
                    error.status, error.code, error.message, Retry_After=str(error.retry_after)
                )
            except services.ServiceError as error:
                return json_error(error.status, error.code, error.message)

        return wrapper

    return decorate


def body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        data = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise services.ServiceError("The body is not valid JSON.", code="bad_json") from None
    if not isinstance(data, dict):
        raise services.ServiceError("The body must be a JSON object.", code="bad_json")
    return data


def _sent(user_message: Message, assistant: Message) -> dict[str, Any]:
    return {
        "user_message": message_json(user_message),
        "assistant_message": message_json(assistant),
        "stream_url": stream_url(assistant),
    }


async def _start_answer(
    create: Callable[[], tuple[services.GenerationPlan | None, dict[str, Any]]],
) -> JsonResponse:
    """Create an answer with `create` (a sync service call), then start it: 201.

    No plan means a repeated idempotency key: the answer of the first request, which
    started it, is the answer: 200, and nothing new starts.
    """
    await generation_ready()
    plan, answer = await sync_to_async(create)()
    if plan is None:
        return JsonResponse(answer, status=200)
    generation_start(plan)
    return JsonResponse(answer, status=201)


def idempotency_key(request: HttpRequest) -> str | None:
    return request.headers.get("Idempotency-Key")


def stream_url(message: Message) -> str:
    return f"/api/messages/{message.id}/stream"


@api("GET", "POST")
async def conversations(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        data = body(request)
        conversation = await sync_to_async(services.conversation_create)(
            user=request.user,
            title=data.get("title"),
            model=data.get("model"),
            system_prompt=data.get("system_prompt"),
        )
        return JsonResponse(conversation_json(conversation), status=201)

    def listing() -> list[dict[str, Any]]:
        found = services.conversation_search(user=request.user, query=request.GET.get("q", ""))
        return [conversation_json(c) for c in found]

    return JsonResponse({"conversations": await sync_to_async(listing)()})


@api("GET", "PATCH", "DELETE")
async def conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    def handle() -> HttpResponse:
        conversation = services.conversation_for(user=request.user, conversation_id=conversation_id)
        if request.method == "DELETE":
            services.conversation_delete(conversation=conversation)
            return HttpResponse(status=204)
        if request.method == "PATCH":
            conversation = services.conversation_update(
                conversation=conversation, changes=body(request)
            )
        branch = services.conversation_branch(conversation=conversation)
        return JsonResponse(conversation_json(conversation, messages=branch))

    return await sync_to_async(handle)()


@api("GET")
async def conversation_export(request: HttpRequest, conversation_id: str) -> HttpResponse:
    file_format = request.GET.get("format", "json")
    if file_format not in downloads.FORMATS:
        raise services.ServiceError("format must be md or json.")

    def export() -> HttpResponse:
        conversation = services.conversation_for(user=request.user, conversation_id=conversation_id)
        return downloads.conversation_download(conversation, file_format)

    return await sync_to_async(export)()


@api("POST")
async def conversation_messages(request: HttpRequest, conversation_id: str) -> HttpResponse:
    data = body(request)

    def send() -> tuple[services.GenerationPlan | None, dict[str, Any]]:
        conversation = services.conversation_for(user=request.user, conversation_id=conversation_id)
        user_message, assistant, plan = services.message_send(
            user=request.user,
            conversation=conversation,
            content=data.get("content"),
            parent_id=data.get("parent_id"),
            model=data.get("model"),
            client_key=idempotency_key(request),
        )
        return plan, _sent(user_message, assistant)

    return await _start_answer(send)


@api("GET")
async def message(request: HttpRequest, message_id: str) -> HttpResponse:
    found = await sync_to_async(services.message_for)(user=request.user, message_id=message_id)
    return JsonResponse(await sync_to_async(message_json)(found))


@api("POST")
async def message_stop(request: HttpRequest, message_id: str) -> HttpResponse:
    seen = body(request).get("seen")
    if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
        raise services.ServiceError("seen must be an event id (a whole number).")
    found = await sync_to_async(services.message_for)(user=request.user, message_id=message_id)
    if found.is_streaming:
        await answer_stop(found.id, STOP_WAIT_SECONDS)
        found = await sync_to_async(services.message_for)(user=request.user, message_id=message_id)
    return JsonResponse(await sync_to_async(message_json)(found))


@api("POST")
async def message_edit(request: HttpRequest, message_id: str) -> HttpResponse:
    data = body(request)

    def edit() -> tuple[services.GenerationPlan | None, dict[str, Any]]:
        found = services.message_for(user=request.user, message_id=message_id)
        user_message, assistant, plan = services.message_edit(
            user=request.user,
            message=found,
            content=data.get("content"),
            client_key=idempotency_key(request),
        )
        return plan, _sent(user_message, assistant)

    return await _start_answer(edit)


@api("POST")
async def message_regenerate(request: HttpRequest, message_id: str) -> HttpResponse:
    def regenerate() -> tuple[services.GenerationPlan, dict[str, Any]]:
        found = services.message_for(user=request.user, message_id=message_id)
        assistant, plan = services.message_regenerate(user=request.user, message=found)
        return plan, {
            "assistant_message": message_json(assistant),
            "stream_url": stream_url(assistant),
        }

    return await _start_answer(regenerate)


@api("POST")
async def message_select(request: HttpRequest, message_id: str) -> HttpResponse:
    def select() -> dict[str, Any]:
        found = services.message_for(user=request.user, message_id=message_id)
        conversation = services.message_select(message=found)
        branch = services.conversation_branch(conversation=conversation)
        return conversation_json(conversation, messages=branch)

    return JsonResponse(await sync_to_async(select)())
