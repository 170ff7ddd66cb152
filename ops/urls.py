"""Operations endpoints, at the site's root (where scrapers and probes look)."""

from __future__ import annotations

from django.urls import path

from ops import views

app_name = "ops"

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
