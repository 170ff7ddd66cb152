"""WebSocket URL routes."""

from __future__ import annotations

from django.urls import path

from sessions_app import consumers

websocket_urlpatterns = [
    path("ws/sessions/", consumers.SessionListConsumer.as_asgi()),
    path("ws/sessions/<int:pk>/", consumers.SessionConsumer.as_asgi()),
]
