"""URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from api import errors as api_errors
from api.main import api

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="sessions:list", permanent=False)),
    path("sessions/", include("sessions_app.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("ops.urls")),
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", api_errors.unknown_endpoint),
    path("tokens/", include("api.urls")),
]
