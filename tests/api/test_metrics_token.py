"""/metrics for a client outside the allow-list: an API token with ``metrics:read``."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db

OUTSIDE = "203.0.113.9"  # not in the default allow-list (loopback only)


def scrape(client: Any, token: str | None = None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.get("/metrics", REMOTE_ADDR=OUTSIDE, **headers)


def test_a_token_with_metrics_read_may_scrape_from_anywhere(client: Any, make_token: Any) -> None:
    response = scrape(client, make_token(scopes=["metrics:read"]))
    assert response.status_code == 200
    assert b"waconnect_sessions" in response.content


def test_a_token_without_the_scope_or_no_token_may_not(client: Any, make_token: Any) -> None:
    assert scrape(client, make_token(scopes=["sessions:read"])).status_code in (401, 403)
    assert scrape(client, "wac_nope_nope").status_code in (401, 403)
    assert scrape(client).status_code in (401, 403)


def test_a_revoked_token_may_not(client: Any, make_token: Any) -> None:
    from api.models import ApiToken

    token = make_token(scopes=["metrics:read"])
    ApiToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert scrape(client, token).status_code in (401, 403)


def test_the_tokens_user_must_be_allowed_to_see_sessions(
    client: Any, make_token: Any, django_user_model: Any
) -> None:
    bare = django_user_model.objects.create_user(username="bare", is_staff=True)
    assert scrape(client, make_token(scopes=["metrics:read"], user=bare)).status_code in (401, 403)


def test_healthz_and_metrics_are_not_redirected_to_https(client: Any, settings: Any) -> None:
    """Probes and scrapers speak plain HTTP to the process: no 301 to hide a 503."""
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
    assert client.get("/metrics").status_code == 200
    assert client.get("/sessions/").status_code == 301  # pages still go to https
