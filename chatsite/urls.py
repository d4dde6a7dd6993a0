from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat.views import accounts, health, pages
from chat.views.errors import api_not_found, api_server_error

urlpatterns = [
    # The app's own first, its event stream at their head (see chat/urls.py).
    path("", include("chat.urls")),
    # The admin's sign-in, with the throttle's message (the throttle itself is in the
    # authentication backend, so it holds here anyway).
    path("admin/login/", accounts.throttled_login(admin.site.login)),
    path("admin/", admin.site.urls),
    path("accounts/", accounts.account, name="account"),
    path("accounts/tokens/", accounts.token_create, name="account-token-create"),
    path(
        "accounts/tokens/<uuid:token_id>/revoke",
        accounts.token_revoke,
        name="account-token-revoke",
    ),
    path("accounts/signup/", pages.signup, name="signup"),
    path(
        "accounts/login/",
        accounts.throttled_login(auth_views.LoginView.as_view(redirect_authenticated_user=True)),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
]

handler404 = api_not_found
handler500 = api_server_error
