"""Creating tokens: one function for the page, the admin and ``create_api_token``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from api.models import ApiToken
from api.scopes import validate_scopes
from sessions_app.models import WaSession


def create_token(
    *,
    user: Any,
    name: str,
    scopes: Iterable[str],
    sessions: Iterable[WaSession] = (),
    expires_at: dt.datetime | None = None,
) -> tuple[ApiToken, str]:
    """A saved token and its full text; the text is shown once and never stored."""
    sessions = list(sessions)
    token, text = ApiToken.issue(
        name=name,
        user=user,
        scopes=validate_scopes(list(scopes)),
        expires_at=expires_at,
        all_sessions=not sessions,
    )
    with transaction.atomic():
        token.save()
        token.sessions.set(sessions)
    return token, text
