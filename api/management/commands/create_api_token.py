"""``manage.py create_api_token``: a token for automation; prints the token only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from api.issuing import create_token
from api.scopes import SCOPES
from sessions_app.models import WaSession


class Command(BaseCommand):
    help = (
        "Create an API token for a user and print it (only the token, on one line; "
        "it is not stored and cannot be shown again)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="Username the token acts for.")
        parser.add_argument("--name", required=True, help="Token name (events show token:NAME).")
        parser.add_argument(
            "--scope",
            action="append",
            required=True,
            choices=list(SCOPES),
            help="A scope; repeat for several.",
        )
        parser.add_argument(
            "--session",
            action="append",
            default=[],
            help="Limit the token to this session (name); repeat for several. Default: all.",
        )
        parser.add_argument(
            "--expires-in-days", type=int, default=None, help="Expiry in days (default: never)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user {options['user']!r}")
        sessions = list(WaSession.objects.filter(name__in=options["session"]))
        missing = set(options["session"]) - {s.name for s in sessions}
        if missing:
            raise CommandError(f"no session(s): {', '.join(sorted(missing))}")
        days = options["expires_in_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in-days must be positive")
        _, text = create_token(
            user=user,
            name=options["name"],
            scopes=options["scope"],
            sessions=sessions,
            expires_at=timezone.now() + dt.timedelta(days=days) if days else None,
        )
        self.stdout.write(text)
