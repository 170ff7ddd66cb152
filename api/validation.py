"""The one place the API checks a session name.

It applies the model field's validators (length, characters: the same rules as
the create page and the admin) and the case-insensitive uniqueness the create
form enforces. When sessions_app gains a single name validator shared by page,
admin and API, this function calls it instead.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError

from api.errors import ApiError
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
        raise ApiError(409, "name_taken", "A session with this name already exists.")
    return name
