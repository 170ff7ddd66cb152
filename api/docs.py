"""Who may read the API docs and the OpenAPI schema: staff, or anyone with a valid token.

A staff user's browser session opens Swagger UI (which then fetches the schema with
the same cookie); a script or schemathesis fetches the schema with its bearer
token. Anyone else is sent to the login page (docs) or answered 401 (schema).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from api.auth import authenticate_token
from api.errors import ApiError, problem


def docs_access(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if user.is_authenticated and user.is_active and user.is_staff:
            return view(request, *args, **kwargs)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            try:
                authenticate_token(token)
            except ApiError as exc:
                return problem(exc.status, exc.code, exc.detail, headers=exc.headers)
            return view(request, *args, **kwargs)
        if request.path.endswith(".json"):
            return problem(401, "token_missing", "Log in as staff or send a token.")
        if user.is_authenticated:
            return problem(403, "permission_denied", "The API docs are for staff users.")
        return redirect_to_login(request.get_full_path())

    return guarded
