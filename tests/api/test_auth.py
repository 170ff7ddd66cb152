"""Tokens: every endpoint × missing scope × missing permission × session limit × bad token."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from api import scopes
from api.models import ApiToken
from sessions_app.models import WaSession
from tests.api.conftest import ApiClient, grant

pytestmark = pytest.mark.django_db

R, W = scopes.SESSIONS_READ, scopes.SESSIONS_WRITE

#: method, path (``{id}`` = the session), body, scope, permission codename, success status
ENDPOINTS = [
    ("get", "/sessions", None, R, "view_wasession", 200),
    ("post", "/sessions", {"name": "fresh"}, W, "add_wasession", 201),
    ("get", "/sessions/{id}", None, R, "view_wasession", 200),
    ("get", "/sessions/{id}/qr", None, R, "view_wasession", 200),
    ("get", "/sessions/{id}/events", None, R, "view_wasession", 200),
    # The session is in a QR round: a start is refused as already running (409),
    # past the scope and permission checks; a successful start is in test_sessions_api.
    ("post", "/sessions/{id}/start", None, W, "change_wasession", 409),
    ("post", "/sessions/{id}/stop", None, W, "change_wasession", 202),
    ("post", "/sessions/{id}/new-qr", None, W, "change_wasession", 202),
    ("post", "/sessions/{id}/logout", None, W, "change_wasession", 202),
    ("post", "/sessions/{id}/pair-phone", {"phone": "+49 151 1234567"}, W, "change_wasession", 202),
    ("delete", "/sessions/{id}", None, W, "delete_wasession", 202),
]
IDS = [f"{m} {p}" for m, p, *_ in ENDPOINTS]
PER_SESSION = [e for e in ENDPOINTS if "{id}" in e[1]]


@pytest.fixture
def qr_session() -> WaSession:
    return WaSession.objects.create(
        name="sales", state="qr_required", qr_code="https://wa.me/settings/linked_devices#x"
    )


def call(client: ApiClient, method: str, path: str, body: Any, session: WaSession) -> Any:
    url = path.replace("{id}", str(session.pk))
    if method == "post":
        return client.post(url, body)
    return getattr(client, method)(url)


@pytest.mark.parametrize(("method", "path", "body", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_the_right_scope_and_permission_succeed(
    make_token: Any,
    qr_session: WaSession,
    method: str,
    path: str,
    body: Any,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    response = call(ApiClient(make_token([scope])), method, path, body, qr_session)
    assert response.status_code == ok, response.content


@pytest.mark.parametrize(("method", "path", "body", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_a_token_without_the_scope_is_refused(
    make_token: Any,
    qr_session: WaSession,
    method: str,
    path: str,
    body: Any,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    others = [s for s in scopes.SCOPES if s != scope]
    response = call(ApiClient(make_token(others)), method, path, body, qr_session)
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "insufficient_scope"
    assert "insufficient_scope" in response["WWW-Authenticate"]
    assert WaSession.objects.get(pk=qr_session.pk).desired_state == "running"
    assert WaSession.objects.count() == 1


@pytest.mark.parametrize(("method", "path", "body", "scope", "perm", "ok"), ENDPOINTS, ids=IDS)
def test_a_token_never_does_more_than_its_user_may(
    make_token: Any,
    django_user_model: Any,
    qr_session: WaSession,
    method: str,
    path: str,
    body: Any,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    """The user has every session permission but this one (and for view, not change
    either: change implies view); the token has every scope."""
    taken = {perm, "change_wasession"} if perm == "view_wasession" else {perm}
    others = [p for p in ("view", "add", "change", "delete") if f"{p}_wasession" not in taken]
    user = django_user_model.objects.create_user(username="cyd", is_staff=True)
    user = grant(user, *[f"{p}_wasession" for p in others])
    response = call(ApiClient(make_token(user=user)), method, path, body, qr_session)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert WaSession.objects.get(pk=qr_session.pk).desired_state == "running"


@pytest.mark.parametrize(
    ("method", "path", "body", "scope", "perm", "ok"), PER_SESSION, ids=IDS[2:]
)
def test_sessions_outside_the_tokens_list_look_like_missing_ones(
    make_token: Any,
    qr_session: WaSession,
    method: str,
    path: str,
    body: Any,
    scope: str,
    perm: str,
    ok: int,
) -> None:
    other = WaSession.objects.create(name="other", state="qr_required", qr_code="https://wa.me/y")
    limited = ApiClient(make_token(sessions=[other]))
    hidden = call(limited, method, path, body, qr_session)
    missing = call(limited, method, path.replace("{id}", "999999"), body, qr_session)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    assert call(limited, method, path, body, other).status_code == ok


def test_a_limited_token_lists_only_its_sessions_and_cannot_create(
    make_token: Any, qr_session: WaSession
) -> None:
    other = WaSession.objects.create(name="other")
    limited = ApiClient(make_token(sessions=[other]))
    assert [s["name"] for s in limited.get("/sessions").json()["data"]] == ["other"]
    response = limited.post("/sessions", {"name": "mine"})
    assert (response.status_code, response.json()["code"]) == (403, "session_limited")


def bad_tokens(make_token: Any, api_user: Any) -> dict[str, tuple[str, str]]:
    good = make_token()
    prefix = good.split("_")[1]
    revoked = make_token(name="old")
    ApiToken.objects.get(prefix=revoked.split("_")[1]).revoke()
    expired = make_token(expires_at=timezone.now() - dt.timedelta(seconds=1))
    return {
        "missing": ("", "token_missing"),
        "not bearer": (f"Basic {good}", "token_invalid"),
        "garbage": ("Bearer nonsense", "token_invalid"),
        "wrong secret": (f"Bearer wac_{prefix}_{'x' * 43}", "token_invalid"),
        "unknown prefix": (f"Bearer wac_ffffffff_{good.split('_', 2)[2]}", "token_invalid"),
        "revoked": (f"Bearer {revoked}", "token_revoked"),
        "expired": (f"Bearer {expired}", "token_expired"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "not bearer", "garbage", "wrong secret", "unknown prefix", "revoked", "expired"],
)
def test_bad_tokens_get_401_with_a_reason(
    make_token: Any, api_user: Any, qr_session: WaSession, case: str
) -> None:
    header, code = bad_tokens(make_token, api_user)[case]
    client = ApiClient(None)
    headers = {"Authorization": header} if header else {}
    for method, path, body, *_ in ENDPOINTS:
        url = path.replace("{id}", str(qr_session.pk))
        if method == "post":
            response = client.client.post(
                f"/api/v1{url}", data=body or {}, content_type="application/json", headers=headers
            )
        else:
            response = getattr(client.client, method)(f"/api/v1{url}", headers=headers)
        assert response.status_code == 401, (method, url)
        assert response.json()["code"] == code
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert WaSession.objects.get(pk=qr_session.pk).desired_state == "running"


@pytest.mark.parametrize("change", [{"is_active": False}, {"is_staff": False}])
def test_a_token_does_not_outlive_its_users_access(
    api: ApiClient, api_user: Any, change: dict[str, bool]
) -> None:
    assert api.get("/sessions").status_code == 200
    type(api_user).objects.filter(pk=api_user.pk).update(**change)
    response = api.get("/sessions")
    assert (response.status_code, response.json()["code"]) == (401, "user_inactive")


def test_a_permission_taken_away_applies_to_the_next_request(
    api: ApiClient, api_user: Any, qr_session: WaSession
) -> None:
    assert api.get("/sessions").status_code == 200
    api_user.user_permissions.remove(
        *api_user.user_permissions.filter(codename__in=["view_wasession", "change_wasession"])
    )
    assert api.get("/sessions").status_code == 403


def test_only_the_hash_is_stored_and_last_use_is_recorded_once_a_minute(
    make_token: Any, django_assert_max_num_queries: Any
) -> None:
    text = make_token()
    token = ApiToken.objects.get()
    assert text.split("_", 2)[2] not in str(ApiToken.objects.values().get())
    assert token.last_used_at is None
    client = ApiClient(text)
    client.get("/sessions")
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    client.get("/sessions")
    assert ApiToken.objects.get().last_used_at == first


def test_requests_past_the_rate_get_429_with_retry_after(api: ApiClient, settings: Any) -> None:
    settings.WACONNECT_API_RATE = "3/m"
    from django.core.cache import cache

    cache.clear()
    statuses = [api.get("/sessions").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = api.get("/sessions")
    assert response.json()["code"] == "rate_limited"
    assert int(response["Retry-After"]) > 0
    cache.clear()


def test_a_limited_token_whose_sessions_are_gone_sees_none_not_all(
    make_token: Any, qr_session: WaSession
) -> None:
    other = WaSession.objects.create(name="other")
    limited = ApiClient(make_token(sessions=[other]))
    other.delete()  # what the supervisor does once a deletion is done
    assert limited.get("/sessions").json()["data"] == []
    assert limited.get(f"/sessions/{qr_session.pk}").status_code == 404
    assert limited.post("/sessions", {"name": "mine"}).json()["code"] == "session_limited"


def test_change_implies_view_as_on_the_pages(
    make_token: Any, django_user_model: Any, qr_session: WaSession
) -> None:
    changer = grant(
        django_user_model.objects.create_user(username="changer", is_staff=True),
        "change_wasession",
    )
    client = ApiClient(make_token(scopes=[R], user=changer))
    assert client.get(f"/sessions/{qr_session.pk}").status_code == 200
