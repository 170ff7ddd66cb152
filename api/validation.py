"""The one place the API checks a session name.

It applies the model field's validators, which are
:func:`sessions_app.names.validate_session_name` (the one rule set the create page,
the admin and the ``simulate_phone`` command use), and the case-insensitive
uniqueness the database enforces, answered early as 409 (a concurrent create that
passes this check is refused by the constraint, see ``intents.create_session``).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError

from api.errors import ApiError
from sessions_app import names
from sessions_app.models import WaSession


def clean_session_name(name: str) -> str:
    """``name`` if it is acceptable for a new session, else 422 (rules) or 409 (taken)."""
    field = WaSession._meta.get_field("name")
    try:
        if not name:
            raise ValidationError("This field is required.")
        field.run_validators(name)
    except ValidationError as exc:
        raise ApiError(
            422,
            "validation_error",
            "The request is not valid; see errors.",
            errors=[
                {"field": "name", "in": "body", "message": message, "type": "value_error"}
                for message in exc.messages
            ],
        ) from None
    if WaSession.objects.filter(name__iexact=name).exists():
        raise ApiError(409, names.TAKEN_CODE, names.TAKEN_MESSAGE)
    return name
