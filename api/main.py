"""The one ``NinjaAPI``: routers mounted, token auth and throttle, problem errors.

Swagger UI (``/api/v1/docs``) and its assets come from ninja's own static files
(``ninja`` is in INSTALLED_APPS), so the docs work offline; docs and schema are
for staff users and token holders (:mod:`api.docs`). The OpenAPI schema
is completed here with the problem responses every operation can give.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from api import errors
from api.auth import TokenBearer, TokenRateThrottle
from api.docs import docs_access
from api.routers import messages, qr, sessions, webhooks

#: Error statuses an operation may answer besides its own, documented for every one.
COMMON_ERRORS = {
    "401": "Missing, invalid, expired or revoked token (or its user lost access)",
    "403": "The token lacks the scope, or its user the permission",
    "422": "The request is not valid (see errors)",
    "429": "Too many requests for this token (see Retry-After)",
}
PATH_ERRORS = {"404": "No such session, endpoint or delivery (or not one this token may see)"}
MESSAGE_PATH_ERRORS = {"404": "No such message (or not one of a session this token may see)"}
WRITE_ERRORS = {"409": "Refused in the session's current state (see code)"}
BODY_ERRORS = {"400": "The body is not JSON"}
QR_ERRORS = {"406": "None of the offered media types is acceptable", "409": "No QR code now"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "Stable, machine-readable reason."},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


class WaconnectApi(NinjaAPI):
    def create_temporal_response(self, request: HttpRequest) -> HttpResponse:
        """Every API answer may carry a pairing code or QR state: never cached."""
        response = super().create_temporal_response(request)
        response["Cache-Control"] = "no-store"
        return response

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(*args, **kwargs)
        schema["components"]["schemas"]["Problem"] = PROBLEM_SCHEMA
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                extra = dict(COMMON_ERRORS)
                if "{message_id}" in path:
                    extra |= MESSAGE_PATH_ERRORS
                elif "{" in path:
                    extra |= PATH_ERRORS
                if method != "get" or path.endswith("/sessions"):
                    extra |= WRITE_ERRORS
                if "requestBody" in operation:
                    extra |= BODY_ERRORS
                if path.endswith("/qr"):
                    extra |= QR_ERRORS
                responses = operation.setdefault("responses", {})
                for status, description in extra.items():
                    responses.setdefault(
                        status,
                        {
                            "description": description,
                            "content": {
                                errors.PROBLEM_TYPE: {
                                    "schema": {"$ref": "#/components/schemas/Problem"}
                                }
                            },
                        },
                    )
        return schema


api = WaconnectApi(
    title="waconnect API",
    version="1",
    description=(
        "Sessions (WhatsApp linked devices) and their messages from code. Authenticate with "
        "`Authorization: Bearer wac_<prefix>_<secret>`. Errors are "
        "application/problem+json with a stable `code`."
    ),
    urls_namespace="api-v1",
    auth=TokenBearer(),
    throttle=[TokenRateThrottle()],
    docs_url="/docs",
    docs_decorator=docs_access,
)
errors.install(api)
api.add_router("/sessions", sessions.router)
api.add_router("/sessions", qr.router)
api.add_router("/webhooks", webhooks.router)
api.add_router("", messages.router)  # /sessions/{id}/messages and /messages/{id}
