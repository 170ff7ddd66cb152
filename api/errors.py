"""Every API error as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Views raise :class:`ApiError` (or let Django/ninja raise theirs); the handlers
installed by :func:`install` turn each into a problem document:
``{type, title, status, detail, code}`` plus ``errors`` for validation. Nothing
here logs a request's headers or body (they may carry a token or a QR code).
"""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError

from sessions_app.intents import IntentRefused

if TYPE_CHECKING:
    from ninja import NinjaAPI

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
#: ``type`` URIs are relative references to the API docs' error section.
TYPE_BASE = "/api/v1/docs#problem-"


class ApiError(Exception):
    """An answer other than success: HTTP status, stable code, a sentence for people."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def not_found(what: str = "session") -> ApiError:
    return ApiError(404, "not_found", f"No such {what}.")


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    body: dict[str, Any] = {
        "type": f"{TYPE_BASE}{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    response = HttpResponse(json.dumps(body), status=status, content_type=PROBLEM_TYPE)
    response["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401 and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = 'Bearer realm="waconnect"'
    return response


def _field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ninja's validation errors as ``{field, message, type}``, location joined by dots."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", [])]
        # ninja puts the parameter source first ("body", "query", ...), then a model name.
        out.append(
            {
                "field": ".".join(loc[2:] if loc[:1] == ["body"] else loc[1:]) or ".".join(loc),
                "in": loc[0] if loc else "",
                "message": str(error.get("msg", "invalid")),
                "type": str(error.get("type", "invalid")),
            }
        )
    return out


def unknown_endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/v1/: a problem too, not Django's HTML page."""
    return problem(404, "not_found", "No such API endpoint.")


def install(api: NinjaAPI) -> None:
    """Register the problem handlers on ``api`` (replacing ninja's defaults)."""

    @api.exception_handler(ApiError)
    def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return problem(exc.status, exc.code, exc.detail, errors=exc.errors, headers=exc.headers)

    @api.exception_handler(IntentRefused)
    def _refused(request: HttpRequest, exc: IntentRefused) -> HttpResponse:
        return problem(409, exc.code, exc.message)

    @api.exception_handler(ValidationError)
    def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        return problem(
            422,
            "validation_error",
            "The request is not valid; see errors.",
            errors=_field_errors(exc.errors),
        )

    @api.exception_handler(Throttled)
    def _throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
        wait = math.ceil(exc.wait) if exc.wait else 60
        return problem(
            429,
            "rate_limited",
            f"Too many requests for this token; retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )

    @api.exception_handler(AuthenticationError)
    def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return problem(
            401, "token_missing", "Send a token: Authorization: Bearer wac_<prefix>_<secret>."
        )

    @api.exception_handler(HttpError)
    def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return problem(exc.status_code, code, str(exc))

    @api.exception_handler(Http404)
    def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return problem(404, "not_found", "Not found.")

    @api.exception_handler(Exception)
    def _crash(request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.error(
            "API error in %s %s",
            request.method,
            request.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return problem(500, "internal_error", "Something went wrong on the server.")
