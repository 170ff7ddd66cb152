"""``manage.py ensure_admin``: make sure someone can log in to a fresh install."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from sessions_app import datafiles


class Command(BaseCommand):
    help = (
        "Create a superuser if none exists. The password comes from "
        "DJANGO_SUPERUSER_PASSWORD, or is generated and written (mode 600) to "
        "<data dir>/admin-password.txt; it is never printed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="Username (default: admin).")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        where = "DJANGO_SUPERUSER_PASSWORD"
        if not password:
            password = secrets.token_urlsafe(12)
            path = settings.DATA_DIR / "admin-password.txt"
            datafiles.write_private(path, password + "\n")  # 600 even if it existed as 644
            where = str(path)
        users.objects.create_superuser(options["username"], "", password)
        self.stdout.write(
            self.style.SUCCESS(f"Created superuser {options['username']!r}; password in {where}.")
        )
