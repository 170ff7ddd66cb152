"""Pages rendered for a socket's user, exactly as the same page's GET would render them.

The create socket (``consumers.SessionCreateConsumer``) answers a create with the
new session's detail page, so the browser needs no HTTP request between pressing
"create" and showing the QR code. Templates want a request (the CSRF token of the
action forms, ``perms``, the user, the URL's namespace); :func:`request_for` builds
one from the socket's ASGI scope: the same headers and cookies the browser sent
with the socket's handshake, the login session Channels loaded, and the CSRF
secret read from the browser's cookie by Django's own CSRF middleware step, so the
forms' tokens are valid for that browser. Synchronous (template rendering, database).
"""

from __future__ import annotations

import io
from typing import Any

from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import resolve, reverse

from sessions_app import views
from sessions_app.models import WaSession


def request_for(scope: dict[str, Any], user: Any, path: str) -> HttpRequest | None:
    """A GET of ``path`` by ``user`` from the browser behind the socket's ``scope``.

    ``None`` when the browser sent no CSRF cookie: forms rendered with a new secret
    would not post (the browser never receives that cookie); the caller leaves the
    page to an ordinary GET then.
    """
    from django.core.handlers.asgi import ASGIRequest

    http_scope = {
        **scope,
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "scheme": "https" if scope.get("scheme") == "wss" else "http",
    }
    request = ASGIRequest(http_scope, io.BytesIO())
    request.user = user
    request.session = scope.get("session")
    CsrfViewMiddleware(lambda r: None).process_request(request)
    if "CSRF_COOKIE" not in request.META or request.META.get("CSRF_COOKIE_NEEDS_UPDATE"):
        return None
    request.resolver_match = resolve(path)
    return request


def detail_html(scope: dict[str, Any], user: Any, session: WaSession) -> str | None:
    """The detail page of ``session`` as ``user``'s GET would render it now, or None."""
    request = request_for(scope, user, reverse("sessions:detail", args=[session.pk]))
    return None if request is None else views.detail_html(request, session)
