"""``manage.py simulate_phone GESTURE SESSION``: act as the phone (simulated driver);
``simulate_phone message SESSION --from NUMBER --text TEXT``: a peer messages it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app import conf, intents
from sessions_app.forms import PeerMessageForm
from sessions_app.models import PhoneAction, WaSession


class Command(BaseCommand):
    help = (
        "Make the simulated phone scan the QR code, log out, drop the connection or "
        "connect the device elsewhere; or ('message') let a peer's phone send the "
        "session a message, which the simulated WhatsApp holds until the session is "
        "connected. Only with WACONNECT_DRIVER=simulated. Takes effect at once through "
        "the channel layer, or at the supervisor's next reconcile when the supervisor "
        "runs in another process without Redis."
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
        parser.add_argument(
            "--from",
            dest="sender",
            metavar="NUMBER",
            help="message: the peer's phone number with its country code, e.g. +4917612345678.",
        )
        parser.add_argument("--text", help="message: the text the peer sends.")
        parser.add_argument(
            "--name", default="", dest="push_name", help="message: the peer's push name."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not conf.is_simulated():
            raise CommandError("simulate_phone needs WACONNECT_DRIVER=simulated")
        gesture = options["gesture"]
        if gesture != PhoneAction.Gesture.MESSAGE:
            if options["sender"] is not None or options["text"] is not None:
                raise CommandError("--from and --text are for the 'message' gesture")
            session = _find(options["session"], options["session_id"])
            intents.phone_gesture(session, gesture, "simulate_phone")
            self.stdout.write(f"{gesture} sent to {session.name}")
            return
        form = PeerMessageForm(
            {
                "sender": options["sender"] or "",
                "text": options["text"] or "",
                "push_name": options["push_name"],
            }
        )
        if not form.is_valid():
            errors = " ".join(str(e) for field in form.errors.values() for e in field)
            raise CommandError(f"message: {errors} (give --from NUMBER and --text TEXT)")
        session = _find(options["session"], options["session_id"])
        data = form.cleaned_data
        intents.peer_message(
            session, data["sender"], data["text"], "simulate_phone", data["push_name"]
        )
        self.stdout.write(f"a message from {data['sender']} sent to {session.name}")


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
