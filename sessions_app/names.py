"""Session names: the one set of rules every entry point applies.

A name is what people type to find a session (pages, admin, the API, the
``simulate_phone`` command), and an id is a number: a name is therefore never all
digits, so the two can never be confused. Case-insensitive uniqueness is a
database constraint (``WaSession.Meta.constraints``); this module holds the rules
a single value can be checked against without the database.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

MIN_LENGTH = 2
MAX_LENGTH = 64
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HELP_TEXT = (
    f"{MIN_LENGTH}–{MAX_LENGTH} characters: letters, digits, '.', '-', '_'; not digits only."
)
#: Shown for a name another session has in any case (the database constraint's message).
TAKEN_MESSAGE = "A session with this name already exists."
TAKEN_CODE = "name_taken"


def validate_session_name(value: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is a well-formed session name.

    Well-formed: 2–64 characters, letters, digits, ``.``, ``-`` and ``_``, starting
    with a letter or a digit, and not digits only (those read as ids).
    """
    if len(value) < MIN_LENGTH:
        raise ValidationError(
            "Ensure this value has at least %(min)d characters (it has %(length)d).",
            code="min_length",
            params={"min": MIN_LENGTH, "length": len(value)},
        )
    if len(value) > MAX_LENGTH:
        raise ValidationError(
            "Ensure this value has at most %(max)d characters (it has %(length)d).",
            code="max_length",
            params={"max": MAX_LENGTH, "length": len(value)},
        )
    if not NAME_RE.fullmatch(value):
        raise ValidationError(
            "Use letters, digits, dots, dashes and underscores, starting with a letter or digit.",
            code="invalid",
        )
    if value.isdigit():
        raise ValidationError(
            "A name cannot be digits only (numbers are session ids): add a letter.",
            code="all_digits",
        )
