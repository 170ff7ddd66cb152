"""Pages: list, create, detail, and one POST endpoint per admin action."""

from __future__ import annotations

from django.urls import path

from sessions_app import converters, messages_panel, views  # noqa: F401 (registers <session_id:>)

app_name = "sessions"

urlpatterns = [
    path("", views.SessionListView.as_view(), name="list"),
    path("new/", views.SessionCreateView.as_view(), name="create"),
    path("<session_id:pk>/", views.SessionDetailView.as_view(), name="detail"),
    # Before the actions: "messages" would match <slug:action>.
    path(
        "<session_id:pk>/messages/",
        messages_panel.SendMessageView.as_view(),
        name="send-message",
    ),
    path("<session_id:pk>/<slug:action>/", views.SessionActionView.as_view(), name="action"),
]
