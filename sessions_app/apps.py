from __future__ import annotations

from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "WhatsApp sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Every process starts with its data directory private (700, files 600), and
        sockets are re-checked when a user's rights change; Django's deploy checks see
        the on-loop middleware (waconnect.checks)."""
        from sessions_app import datafiles, revocation
        from waconnect import checks  # noqa: F401 (registers the middleware's deploy checks)

        datafiles.secure_at_start()
        revocation.connect()
