"""Django's middleware, run on the event loop under ASGI instead of in a thread each.

Django's ``MiddlewareMixin`` runs every ``process_request`` and ``process_response``
of an async request through ``sync_to_async``: under Daphne each is a hand-off from
the event loop to the request's thread and back. The chain in ``settings.MIDDLEWARE``
had fifteen of them per request (profiled with ``benchmarks/profile_create.py
--api``), on the path from an API client's "create" to its QR code.

The steps of these classes are plain CPU work on the request and the response
(headers, cookies, lazy objects), so here they run on the loop. The one step that
can touch the database is saving the login session (and storing flash messages in
it): those go to the request's thread as before, only when there is something to
save. Django refuses any database call made on the loop
(``SynchronousOnlyOperation``), so a step that started to need one would fail
loudly, not block the loop. Under WSGI (and Django's test ``Client``) nothing
changes: the classes are Django's.

Django's deploy checks look for three of these by their exact import paths; see
:mod:`waconnect.checks` for how they still run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from csp.middleware import CSPMiddleware as _CSP
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as _Auth
from django.contrib.messages.middleware import MessageMiddleware as _Messages
from django.contrib.sessions.middleware import SessionMiddleware as _Session
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware as _XFrame
from django.middleware.common import CommonMiddleware as _Common
from django.middleware.csrf import CsrfViewMiddleware as _Csrf
from django.middleware.security import SecurityMiddleware as _Security


class OnLoopMixin:
    """``__acall__`` without thread hops: the hooks run on the event loop.

    ``response_needs_thread`` says when ``process_response`` must run in the
    request's thread after all (it would touch the database).
    """

    get_response: Callable[[HttpRequest], Any]

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            response = process_request(request)
        response = response or await self.get_response(request)
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request, response):
                response = await sync_to_async(process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = process_response(request, response)
        return response


class SecurityMiddleware(OnLoopMixin, _Security):
    """Django's, on the loop (headers and the HTTPS redirect only)."""


class CSPMiddleware(OnLoopMixin, _CSP):
    """django-csp's, on the loop (the nonce and the header only)."""


class CommonMiddleware(OnLoopMixin, _Common):
    """Django's, on the loop (URL resolving for APPEND_SLASH, Content-Length)."""


class AuthenticationMiddleware(OnLoopMixin, _Auth):
    """Django's, on the loop: it only sets the lazy ``request.user`` (read later,
    in the view's thread)."""


class XFrameOptionsMiddleware(OnLoopMixin, _XFrame):
    """Django's, on the loop (one header)."""


class SessionMiddleware(OnLoopMixin, _Session):
    """Django's, on the loop; saving a changed session goes to the request's thread."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(OnLoopMixin, _Messages):
    """Django's, on the loop; storing messages (perhaps in the session, which loads
    it) goes to the request's thread."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class CsrfViewMiddleware(OnLoopMixin, _Csrf):
    """Django's, on the loop, ``process_view`` included (the token check reads the
    cookie and the form or header; ``CSRF_USE_SESSIONS`` is refused, it would read
    the session on the loop). A rejection renders ``CSRF_FAILURE_VIEW`` on the loop:
    Django's own reads a template and no database."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        if settings.CSRF_USE_SESSIONS:
            raise ValueError("CsrfViewMiddleware on the loop cannot read the session")
        if iscoroutinefunction(get_response):
            # Django adapts process_view to the handler's mode when it loads the
            # chain: a coroutine function is called as it is, on the loop.
            self.process_view = self._process_view_on_loop  # type: ignore[method-assign]

    async def _process_view_on_loop(
        self,
        request: HttpRequest,
        callback: Callable[..., Any],
        callback_args: Any,
        callback_kwargs: Any,
    ) -> HttpResponseBase | None:
        return _Csrf.process_view(self, request, callback, callback_args, callback_kwargs)
