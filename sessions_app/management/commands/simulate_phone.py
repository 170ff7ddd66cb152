"""``manage.py simulate_phone GESTURE SESSION``: act as the phone (simulated driver)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app import conf, intents
from sessions_app.models import PhoneAction, WaSession


class Command(BaseCommand):
    help = (
        "Make the simulated phone scan the QR code, log out, drop the connection or "
        "connect the device elsewhere. Only with WACONNECT_DRIVER=simulated. Takes "
        "effect at once through the channel layer, or at the supervisor's next "
        "reconcile when the supervisor runs in another process without Redis."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "gesture", choices=PhoneAction.Gesture.values, help="What the phone does."
        )
        parser.add_argument("session", help="The session's name or numeric id.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not conf.is_simulated():
            raise CommandError("simulate_phone needs WACONNECT_DRIVER=simulated")
        ref = options["session"]
        query = {"pk": int(ref)} if ref.isdigit() else {"name": ref}
        try:
            session = WaSession.objects.get(**query)
        except WaSession.DoesNotExist:
            raise CommandError(f"no session {ref!r}") from None
        intents.phone_gesture(session, options["gesture"], "simulate_phone")
        self.stdout.write(f"{options['gesture']} sent to {session.name}")
