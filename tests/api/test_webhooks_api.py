"""``/api/v1/webhooks``: scope and permission checks, the secret shown once, SSRF at
save time, rotation, test events, redelivery; problem+json errors."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from standardwebhooks import Webhook

from api.scopes import SESSIONS_READ, WEBHOOKS_MANAGE
from sessions_app.models import WaSession
from tests.api.conftest import ApiClient
from webhooks import signing
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

WEBHOOK_PERMS = [
    "view_endpoint",
    "add_endpoint",
    "change_endpoint",
    "delete_endpoint",
    "change_delivery",
]


@pytest.fixture
def hooks_user(api_user: Any) -> Any:
    perms = Permission.objects.filter(
        content_type__app_label="webhooks", codename__in=WEBHOOK_PERMS
    )
    assert perms.count() == len(WEBHOOK_PERMS)
    api_user.user_permissions.add(*perms)
    return type(api_user).objects.get(pk=api_user.pk)


@pytest.fixture
def hooks(make_token: Any, hooks_user: Any) -> ApiClient:
    return ApiClient(make_token(scopes=[WEBHOOKS_MANAGE], user=hooks_user))


def patch(client: ApiClient, path: str, body: Any) -> Any:
    return client.client.patch(
        f"/api/v1{path}", data=json.dumps(body), content_type="application/json",
        headers=client.headers,
    )  # fmt: skip


def test_create_shows_the_secret_once_and_reads_never_do(hooks: ApiClient) -> None:
    created = hooks.post(
        "/webhooks/endpoints",
        {"url": "https://93.184.215.14/hook", "event_types": ["session.status", "session.qr"]},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["event_types"] == ["session.status", "session.qr"]
    assert body["all_sessions"] is True
    read = hooks.get(f"/webhooks/endpoints/{body['id']}").json()
    assert "secret" not in read
    listed = hooks.get("/webhooks/endpoints").json()
    assert [e["id"] for e in listed["data"]] == [body["id"]]
    assert body["secret"] not in json.dumps(listed)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "http://10.0.0.1/hook", "http://169.254.169.254/", "http://localhost/"],
)
def test_refused_urls_are_a_422_problem(hooks: ApiClient, settings: Any, url: str) -> None:
    settings.WACONNECT_WEBHOOKS_ALLOW_PRIVATE = False
    answer = hooks.post("/webhooks/endpoints", {"url": url})
    assert answer.status_code == 422
    assert answer["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == "validation_error"
    assert answer.json()["errors"][0]["field"] == "url"
    assert not Endpoint.objects.exists()


def test_a_changed_url_is_checked_too(hooks: ApiClient, settings: Any) -> None:
    settings.WACONNECT_WEBHOOKS_ALLOW_PRIVATE = False
    created = hooks.post("/webhooks/endpoints", {"url": "https://93.184.215.14/"}).json()
    path = f"/webhooks/endpoints/{created['id']}"
    answer = patch(hooks, path, {"url": "http://169.254.169.254/latest/meta-data"})
    assert (answer.status_code, answer.json()["errors"][0]["field"]) == (422, "url")
    assert Endpoint.objects.get().url == "https://93.184.215.14/"


def test_unknown_event_types_and_sessions_are_refused(hooks: ApiClient) -> None:
    bad_type = hooks.post(
        "/webhooks/endpoints", {"url": "https://93.184.215.14/", "event_types": ["nope"]}
    )
    assert bad_type.status_code == 422
    bad_session = hooks.post(
        "/webhooks/endpoints", {"url": "https://93.184.215.14/", "session_ids": [999]}
    )
    assert bad_session.status_code == 422
    assert "999" in bad_session.json()["detail"]


def test_the_scope_and_the_permission_are_both_needed(
    make_token: Any, api_user: Any, hooks_user: Any
) -> None:
    no_scope = ApiClient(make_token(scopes=[SESSIONS_READ], user=hooks_user))
    answer = no_scope.get("/webhooks/endpoints")
    assert (answer.status_code, answer.json()["code"]) == (403, "insufficient_scope")
    viewer = type(api_user).objects.create_user(username="vi", password="x" * 20, is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(content_type__app_label="webhooks", codename="view_endpoint")
    )
    read_only = ApiClient(make_token(scopes=[WEBHOOKS_MANAGE], user=viewer))
    assert read_only.get("/webhooks/endpoints").status_code == 200
    refused = read_only.post("/webhooks/endpoints", {"url": "https://93.184.215.14/"})
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")


def test_a_token_limited_to_sessions_cannot_manage_webhooks(
    make_token: Any, hooks_user: Any
) -> None:
    session = WaSession.objects.create(name="mine")
    limited = ApiClient(make_token(scopes=[WEBHOOKS_MANAGE], user=hooks_user, sessions=[session]))
    answer = limited.get("/webhooks/endpoints")
    assert (answer.status_code, answer.json()["code"]) == (403, "session_limited")


def test_rotation_returns_a_new_secret_and_both_sign_during_the_overlap(
    hooks: ApiClient,
) -> None:
    created = hooks.post("/webhooks/endpoints", {"url": "https://93.184.215.14/"}).json()
    rotated = hooks.post(
        f"/webhooks/endpoints/{created['id']}/rotate-secret", {"overlap_seconds": 3600}
    ).json()
    assert rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    endpoint = Endpoint.objects.get(pk=created["id"])
    headers = signing.sign_headers("evt_x", "{}", endpoint.signing_secrets(), timezone.now())
    Webhook(created["secret"]).verify("{}", headers)
    Webhook(rotated["secret"]).verify("{}", headers)
    later = timezone.now() + dt.timedelta(hours=2)
    assert endpoint.signing_secrets(later) == [rotated["secret"]]


def test_patch_disables_and_enables_and_narrows_sessions(hooks: ApiClient) -> None:
    created = hooks.post("/webhooks/endpoints", {"url": "https://93.184.215.14/"}).json()
    path = f"/webhooks/endpoints/{created['id']}"
    off = patch(hooks, path, {"enabled": False}).json()
    assert (off["enabled"], off["disabled_reason"]) == (False, "disabled by an operator")
    on = patch(hooks, path, {"enabled": True}).json()
    assert (on["enabled"], on["disabled_reason"]) == (True, "")
    session = WaSession.objects.create(name="one")
    narrowed = patch(hooks, path, {"session_ids": [session.pk]}).json()
    assert (narrowed["all_sessions"], narrowed["session_ids"]) == (False, [session.pk])
    assert patch(hooks, path, {"session_ids": []}).status_code == 422


def test_test_event_redelivery_and_delivery_listing(hooks: ApiClient) -> None:
    created = hooks.post("/webhooks/endpoints", {"url": "https://93.184.215.14/"}).json()
    sent = hooks.post(f"/webhooks/endpoints/{created['id']}/test")
    assert sent.status_code == 202
    delivery = sent.json()
    assert (delivery["event_type"], delivery["status"]) == ("webhook.test", "pending")
    Delivery.objects.filter(pk=delivery["id"]).update(status="dead", attempts=8)

    listed = hooks.get(f"/webhooks/deliveries?status=dead&endpoint_id={created['id']}").json()
    assert [d["id"] for d in listed["data"]] == [delivery["id"]]
    one = hooks.post(f"/webhooks/deliveries/{delivery['id']}/redeliver")
    assert one.status_code == 202 and one.json()["status"] == "pending"
    assert one.json()["attempts"] == 0

    Delivery.objects.filter(pk=delivery["id"]).update(status="dead")
    since = (timezone.now() - dt.timedelta(hours=1)).isoformat()
    many = hooks.post(f"/webhooks/endpoints/{created['id']}/redeliver", {"since": since})
    assert (many.status_code, many.json()) == (202, {"count": 1})

    Delivery.objects.filter(pk=delivery["id"]).update(status="delivering")
    busy = hooks.post(f"/webhooks/deliveries/{delivery['id']}/redeliver")
    assert (busy.status_code, busy.json()["code"]) == (409, "in_flight")


def test_unknown_ids_are_404_problems_and_delete_removes(hooks: ApiClient) -> None:
    missing = hooks.get("/webhooks/endpoints/12345")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert hooks.get("/webhooks/deliveries/12345").status_code == 404
    created = hooks.post("/webhooks/endpoints", {"url": "https://93.184.215.14/"}).json()
    assert hooks.delete(f"/webhooks/endpoints/{created['id']}").status_code == 204
    assert not Endpoint.objects.exists()
