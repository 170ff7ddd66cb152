"""Under ASGI the middleware chain runs on the event loop (waconnect/middleware.py),
and still does everything Django's classes do: CSRF checks, the login session
saved, flash messages kept, the security headers.

Django's ``AsyncClient`` goes through the ASGI handler, as Daphne does; the sync
``Client`` (every other page test) through the WSGI one, where the classes are
Django's own code path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from asgiref import sync as asgiref_sync
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.urls import reverse

from api.issuing import create_token
from sessions_app.models import WaSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

PASSWORD = "correct horse battery"
MIDDLEWARE_STEPS = {"process_request", "process_response", "process_view"}


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function run through ``sync_to_async`` (a thread hop)."""
    seen: list[str] = []
    call = asgiref_sync.SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        func: Callable[..., Any] = self.func
        seen.append(getattr(func, "__name__", repr(func)))
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(asgiref_sync.SyncToAsync, "__call__", counted)
    return seen


@sync_to_async
def _session_and_token(user: Any) -> tuple[WaSession, str]:
    session = WaSession.objects.create(name="looped")
    _, text = create_token(user=user, name="loop", scopes=["sessions:read", "sessions:write"])
    return session, text


async def test_an_api_request_runs_no_middleware_step_in_a_thread(
    staff_user: Any, hops: list[str]
) -> None:
    """Fifteen steps of the chain were thread hops each; now only the view's own
    database work (the token, the row) leaves the loop."""
    session, token = await _session_and_token(staff_user)
    client = AsyncClient()
    hops.clear()
    response = await client.get(
        f"/api/v1/sessions/{session.pk}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "looped"
    assert not MIDDLEWARE_STEPS & set(hops), hops
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"] == "no-store"


async def test_a_page_post_without_the_csrf_token_is_refused_on_the_loop(staff_user: Any) -> None:
    client = AsyncClient(enforce_csrf_checks=True)
    page = await client.get(reverse("login"))
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    response = await client.post(
        reverse("login"), {"username": staff_user.username, "password": PASSWORD}
    )
    assert response.status_code == 403


async def test_a_login_over_asgi_is_saved_and_a_flash_message_survives_the_redirect(
    staff_user: Any, hops: list[str]
) -> None:
    """The login session is saved (in the request's thread: a database write) and the
    action's flash message is stored and shown on the next page."""
    client = AsyncClient(enforce_csrf_checks=True)
    page = await client.get(reverse("login"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None
    hops.clear()
    response = await client.post(
        reverse("login"),
        {"username": staff_user.username, "password": PASSWORD, "csrfmiddlewaretoken": token[1]},
    )
    assert response.status_code == 302, response.content
    assert "process_response" in hops  # the session's save, in the request's thread
    listing = await client.get(reverse("sessions:list"))
    assert listing.status_code == 200  # logged in: the session was saved

    session = await sync_to_async(WaSession.objects.create)(name="flashed", state="stopped")
    csrf = client.cookies["csrftoken"].value
    response = await client.post(
        reverse("sessions:action", args=[session.pk, "start"]), headers={"X-CSRFToken": csrf}
    )
    assert response.status_code == 302
    detail = await client.get(response["Location"])
    assert detail.status_code == 200
    assert "Start requested." in detail.content.decode()  # stored, then read and shown
    again = await client.get(response["Location"])
    assert "Start requested." not in again.content.decode()  # and used up
