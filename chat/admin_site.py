"""The admin site: Django's, plus the usage page, linked from the index and the sidebar.

Installed in place of `django.contrib.admin` (see INSTALLED_APPS), so `admin.site` is this
site and every `@admin.register` lands here. Imported while the app registry loads: no
models at module level.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.urls import URLPattern, URLResolver, path, reverse, reverse_lazy

USAGE_PERMISSION = "chat.view_message"


class ChatAdminSite(AdminSite):
    site_header = "Chat administration"
    site_title = "Chat admin"
    index_title = "Transcripts, usage and accounts"

    def get_urls(self) -> list[URLResolver | URLPattern]:
        from chat.views.usage import usage  # needs the models: imported once they are ready

        view: Any = self.admin_view(usage)
        # Where LoginRequiredMiddleware sends anonymous visitors: the admin's own login.
        view.login_url = reverse_lazy("admin:login", current_app=self.name)
        return [path("usage/", view, name="usage"), *super().get_urls()]

    def get_app_list(
        self, request: HttpRequest, app_label: str | None = None
    ) -> list[dict[str, Any]]:
        app_list: list[dict[str, Any]] = super().get_app_list(request, app_label)
        if not request.user.has_perm(USAGE_PERMISSION):
            return app_list
        for app in app_list:
            if app["app_label"] == "chat":
                # Listed like a model, so the index and the sidebar link to it.
                app["models"].append(
                    {
                        "name": "Usage and quotas",
                        "object_name": "Usage",
                        "perms": {"view": True},
                        "admin_url": reverse("admin:usage", current_app=self.name),
                        "add_url": None,
                        "view_only": True,
                    }
                )
                app["models"].sort(key=lambda model: model["name"])
        return app_list


class ChatAdminConfig(AdminConfig):
    default_site = "chat.admin_site.ChatAdminSite"
