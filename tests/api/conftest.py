"""Fixtures for the HTTP API tests: users with chosen permissions, tokens, a client."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from api.issuing import create_token
from api.scopes import SCOPES
from benchmarks.liveserver import ADMIN_USERNAME, REPO, LiveServer
from sessions_app.models import WaSession

ALL_SCOPES = list(SCOPES)


def grant(user: Any, *codenames: str) -> Any:
    """Give ``user`` these sessions_app permissions (by codename); a fresh copy back."""
    perms = Permission.objects.filter(
        content_type__app_label="sessions_app", codename__in=codenames
    )
    assert perms.count() == len(codenames)
    user.user_permissions.add(*perms)
    return type(user).objects.get(pk=user.pk)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Users are made per test; PBKDF2's deliberate slowness is not under test here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def api_user(staff_user: Any) -> Any:
    """A staff user with every session permission (not a superuser)."""
    return grant(
        staff_user, "view_wasession", "add_wasession", "change_wasession", "delete_wasession"
    )


@pytest.fixture
def make_token(api_user: Any):  # type: ignore[no-untyped-def]
    def make(
        scopes: list[str] | None = None,
        sessions: list[WaSession] | None = None,
        user: Any = None,
        expires_at: dt.datetime | None = None,
        name: str = "crm",
    ) -> str:
        _, text = create_token(
            user=user or api_user,
            name=name,
            scopes=ALL_SCOPES if scopes is None else scopes,
            sessions=sessions or [],
            expires_at=expires_at,
        )
        return text

    return make


class ApiClient:
    """Django's test client with a bearer token and JSON bodies."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **headers: str) -> Any:
        return self.client.get(f"/api/v1{path}", headers={**self.headers, **headers})

    def post(self, path: str, body: Any = None, **headers: str) -> Any:
        return self.client.post(
            f"/api/v1{path}",
            data=body if body is not None else {},
            content_type="application/json",
            headers={**self.headers, **headers},
        )

    def delete(self, path: str) -> Any:
        return self.client.delete(f"/api/v1{path}", headers=self.headers)


@pytest.fixture
def api(make_token: Any) -> ApiClient:
    """A client with an all-scopes token of a user with every session permission."""
    return ApiClient(make_token())


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(name="sales", state="stopped")


@pytest.fixture(scope="package")
def live_api_server() -> Iterator[LiveServer]:
    """A real server (runserver: Daphne, inline supervisor, simulated WhatsApp).

    Long polls there are capped at 1 s and the rate limit is out of the way, so the
    schema-driven test's many calls stay quick.
    """
    env = {"WACONNECT_API_MAX_WAIT": "1", "WACONNECT_API_RATE": "100000/m"}
    with LiveServer(timing={"first_qr_ttl": 30}, extra_env=env, log_level="WARNING") as server:
        yield server


@pytest.fixture(scope="package")
def live_api(live_api_server: LiveServer) -> tuple[str, str]:
    """That server and a token with the sessions and messages scopes, made by
    ``manage.py create_api_token`` for its admin: ``(base URL, token)``."""
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "--user", ADMIN_USERNAME,
         "--name", "live", "--scope", "sessions:read", "--scope", "sessions:write",
         "--scope", "messages:read", "--scope", "messages:send"],
        cwd=REPO, env=live_api_server.env(), capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    return live_api_server.url, result.stdout.strip()
