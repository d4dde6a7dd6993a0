"""Error answers: JSON under /api/, pages elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as default_csrf_failure
from django.views.defaults import page_not_found, server_error


def json_error(status: int, code: str, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message}}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if is_api(request):
        return json_error(
            403, "csrf_failed", "CSRF check failed: send the X-CSRFToken header with the session."
        )
    return default_csrf_failure(request, reason)


def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api(request):
        return json_error(404, "not_found", "No such resource.")
    return page_not_found(request, exception or Exception())


def api_server_error(request: HttpRequest) -> HttpResponse:
    if is_api(request):
        return json_error(500, "internal", "The server failed; the error was logged.")
    return server_error(request)
