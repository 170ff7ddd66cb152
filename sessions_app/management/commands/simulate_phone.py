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
        parser.add_argument(
            "session",
            nargs="?",
            help="The session's name (names are never all digits; use --id for an id).",
        )
        parser.add_argument(
            "--id", type=int, dest="session_id", help="The session's numeric id instead of a name."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not conf.is_simulated():
            raise CommandError("simulate_phone needs WACONNECT_DRIVER=simulated")
        session = _find(options["session"], options["session_id"])
        intents.phone_gesture(session, options["gesture"], "simulate_phone")
        self.stdout.write(f"{options['gesture']} sent to {session.name}")


def _find(name: str | None, pk: int | None) -> WaSession:
    """The session named ``name`` (any case: names are unique regardless) or with id ``pk``."""
    if (name is None) == (pk is None):
        raise CommandError("give the session's name or --id N, not both")
    if pk is not None:
        found = WaSession.objects.filter(pk=pk).first()
        if found is None:
            raise CommandError(f"no session with id {pk}")
        return found
    found = WaSession.objects.filter(name__iexact=name).first()
    if found is None:
        hint = " (for an id, use --id)" if name.isdigit() else ""
        raise CommandError(f"no session named {name!r}{hint}")
    return found
