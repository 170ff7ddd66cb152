"""WebSocket URL routes; any other path is closed with 4404 (no 500, no echo)."""

from __future__ import annotations

from django.urls import path, re_path

from sessions_app import consumers, converters  # noqa: F401 (registers <session_id:>)

websocket_urlpatterns = [
    path("ws/sessions/", consumers.SessionListConsumer.as_asgi()),
    path("ws/sessions/new/", consumers.SessionCreateConsumer.as_asgi()),
    path("ws/sessions/<session_id:pk>/", consumers.SessionConsumer.as_asgi()),
    re_path(r"", consumers.NotFoundConsumer.as_asgi()),
]
