from __future__ import annotations

from django.apps import AppConfig


class MessagingConfig(AppConfig):
    """Messages in and out of a session: the outbound queue, the inbound store."""

    name = "messaging"
    verbose_name = "Messages"
    default_auto_field = "django.db.models.BigAutoField"
