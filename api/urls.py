"""The API token page."""

from __future__ import annotations

from django.urls import path

from api import views

app_name = "api"

urlpatterns = [
    path("", views.TokenPageView.as_view(), name="tokens"),
    path("<int:pk>/revoke/", views.RevokeTokenView.as_view(), name="revoke"),
]
