"""Sessions over the API: intents written like the pages do, validation, pagination,
idempotency, QR formats, refusals. (Scopes and tokens: test_auth.py.)"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from api.models import IdempotencyKey
from sessions_app import intents
from sessions_app.models import SessionEvent, WaSession
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db

QR = "https://wa.me/settings/linked_devices#2@abc,def,ghi"


def test_create_writes_intent_with_the_token_as_actor(api: ApiClient) -> None:
    response = api.post("/sessions", {"name": "support"})
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    session = WaSession.objects.get(pk=body["id"])
    assert (body["name"], body["desired_state"], body["state"]) == ("support", "running", "stopped")
    assert (session.desired_state, session.pair_request) == ("running", 1)
    event = SessionEvent.objects.get(session=session)
    assert (event.kind, event.actor) == ("intent", "token:crm")


@pytest.mark.parametrize(
    "name",
    ["", "a", "no spaces", "-dash-first", "x" * 65, "ünïcode", "semi;colon", "new\nline"],
)
def test_bad_names_are_refused_with_the_pages_rules(api: ApiClient, name: str) -> None:
    response = api.post("/sessions", {"name": name})
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["field"] == "name"
    assert not WaSession.objects.exists()


@pytest.mark.parametrize("body", [{}, {"name": 5}, {"name": None}, [], {"name": ["a", "b"]}])
def test_malformed_bodies_are_422_problems(api: ApiClient, body: Any) -> None:
    response = api.post("/sessions", body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_invalid_json_is_a_problem_too(api: ApiClient) -> None:
    response = api.client.post(
        "/api/v1/sessions", data="{nope", content_type="application/json", headers=api.headers
    )
    assert response.status_code in (400, 422)
    assert response["Content-Type"] == "application/problem+json"


def test_names_are_unique_ignoring_case(api: ApiClient) -> None:
    WaSession.objects.create(name="Sales")
    response = api.post("/sessions", {"name": "sales"})
    assert (response.status_code, response.json()["code"]) == (409, "name_taken")


def test_idempotency_key_replays_the_first_answer(api: ApiClient) -> None:
    first = api.post("/sessions", {"name": "once"}, **{"Idempotency-Key": "k-1"})
    again = api.post("/sessions", {"name": "once"}, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again["Idempotent-Replayed"] == "true"
    assert WaSession.objects.count() == 1
    assert SessionEvent.objects.count() == 1


def test_idempotency_key_with_another_body_is_refused(api: ApiClient) -> None:
    api.post("/sessions", {"name": "once"}, **{"Idempotency-Key": "k-1"})
    other = api.post("/sessions", {"name": "twice"}, **{"Idempotency-Key": "k-1"})
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert list(WaSession.objects.values_list("name", flat=True)) == ["once"]


def test_idempotency_keys_are_per_token_and_expire(api: ApiClient, make_token: Any) -> None:
    api.post("/sessions", {"name": "once"}, **{"Idempotency-Key": "k-1"})
    other = ApiClient(make_token(name="other"))
    response = other.post("/sessions", {"name": "once"}, **{"Idempotency-Key": "k-1"})
    assert (response.status_code, response.json()["code"]) == (409, "name_taken")
    IdempotencyKey.objects.update(created_at=timezone.now() - dt.timedelta(hours=25))
    response = api.post("/sessions", {"name": "once"}, **{"Idempotency-Key": "k-1"})
    assert (response.status_code, response.json()["code"]) == (409, "name_taken")


def test_a_refused_request_is_not_remembered(api: ApiClient) -> None:
    assert api.post("/sessions", {"name": "x"}, **{"Idempotency-Key": "k"}).status_code == 422
    assert api.post("/sessions", {"name": "x"}, **{"Idempotency-Key": "k"}).status_code == 422
    assert not IdempotencyKey.objects.exists()


def test_lists_are_cursor_paginated_with_stable_ids(api: ApiClient) -> None:
    for i in range(5):
        WaSession.objects.create(name=f"s{i}")
    seen, cursor = [], None
    while True:
        page = api.get(f"/sessions?limit=2{f'&cursor={cursor}' if cursor else ''}").json()
        seen += [s["name"] for s in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
        WaSession.objects.create(name=f"late{len(seen)}")  # added during paging: no repeats
    assert seen[:5] == ["s0", "s1", "s2", "s3", "s4"]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    "query", ["cursor=nonsense", "cursor=eyJhZnRlciI6ICJ4In0", "limit=0", "limit=101", "limit=x"]
)
def test_bad_pagination_is_422(api: ApiClient, query: str) -> None:
    response = api.get(f"/sessions?{query}")
    assert response.status_code == 422
    assert response.json()["code"] in ("invalid_cursor", "validation_error")


def test_lists_filter_by_state_and_name(api: ApiClient) -> None:
    WaSession.objects.create(name="Alpha", state="connected")
    WaSession.objects.create(name="beta", state="stopped")
    assert [s["name"] for s in api.get("/sessions?state=connected").json()["data"]] == ["Alpha"]
    assert [s["name"] for s in api.get("/sessions?name=alpha").json()["data"]] == ["Alpha"]
    assert api.get("/sessions?state=sleeping").status_code == 422


@pytest.mark.parametrize("path", ["/sessions/999999", "/sessions/999999/events"])
def test_unknown_ids_are_404_problems(api: ApiClient, path: str) -> None:
    response = api.get(path)
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("start", {"desired_state": "running", "pair_request": 1}),
        ("stop", {"desired_state": "stopped"}),
        ("new-qr", {"desired_state": "running", "pair_request": 1}),
        ("logout", {"desired_state": "logged_out"}),
    ],
)
def test_actions_write_intent_and_log_the_token(
    api: ApiClient, session: WaSession, action: str, expected: dict[str, Any]
) -> None:
    response = api.post(f"/sessions/{session.pk}/{action}")
    assert response.status_code == 202
    row = WaSession.objects.filter(pk=session.pk).values(*expected).get()
    assert row == expected
    assert response.json()["desired_state"] == expected["desired_state"]
    assert SessionEvent.objects.get(session=session).actor == "token:crm"


def test_start_resumes_a_linked_device(api: ApiClient) -> None:
    session = WaSession.objects.create(
        name="linked", jid="49@s.whatsapp.net", desired_state="stopped"
    )
    api.post(f"/sessions/{session.pk}/start")
    session.refresh_from_db()
    assert (session.desired_state, session.connect_request, session.pair_request) == (
        "running",
        1,
        0,
    )


def test_pair_phone_uses_the_pages_validator(api: ApiClient, session: WaSession) -> None:
    bad = api.post(f"/sessions/{session.pk}/pair-phone", {"phone": "0151 1234"})
    assert (bad.status_code, bad.json()["errors"][0]["field"]) == (422, "phone")
    good = api.post(f"/sessions/{session.pk}/pair-phone", {"phone": "+49 (151) 123-4567"})
    assert good.status_code == 202
    session.refresh_from_db()
    assert (session.pair_phone, session.pair_request) == ("+491511234567", 1)
    assert "+491511234567" not in SessionEvent.objects.get().message  # the number is not logged


def test_delete_asks_the_supervisor_and_is_idempotent(api: ApiClient, session: WaSession) -> None:
    assert api.delete(f"/sessions/{session.pk}").json()["desired_state"] == "deleted"
    assert api.delete(f"/sessions/{session.pk}").status_code == 202
    assert SessionEvent.objects.filter(session=session).count() == 1
    refused = api.post(f"/sessions/{session.pk}/start")
    assert (refused.status_code, refused.json()["code"]) == (409, "deleting")


def test_intent_refused_is_a_409_with_its_code(
    api: ApiClient, session: WaSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(session: WaSession, actor: str) -> None:
        raise intents.IntentRefused("already_running", "The session is already running.")

    monkeypatch.setattr(intents, "start", refuse)
    response = api.post(f"/sessions/{session.pk}/start")
    assert response.status_code == 409
    assert response.json()["code"] == "already_running"
    assert response.json()["detail"] == "The session is already running."


def test_events_are_the_log_newest_first_paginated(api: ApiClient, session: WaSession) -> None:
    for action in ["stop", "start", "stop"]:
        api.post(f"/sessions/{session.pk}/{action}")
    page = api.get(f"/sessions/{session.pk}/events?limit=2").json()
    assert [e["message"] for e in page["data"]] == [
        "asked to stop",
        "asked to start; a new QR code",
    ]
    rest = api.get(f"/sessions/{session.pk}/events?cursor={page['next_cursor']}").json()
    assert [e["message"] for e in rest["data"]] == ["asked to stop"]
    assert rest["has_more"] is False
    assert {e["actor"] for e in page["data"] + rest["data"]} == {"token:crm"}


@pytest.fixture
def showing_qr() -> WaSession:
    expires = timezone.now() + dt.timedelta(seconds=60)
    return WaSession.objects.create(
        name="pairing", state="qr_required", qr_code=QR, qr_expires_at=expires
    )


def test_qr_as_json(api: ApiClient, showing_qr: WaSession) -> None:
    response = api.get(f"/sessions/{showing_qr.pk}/qr", Accept="application/json")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["code"] == QR
    assert dt.datetime.fromisoformat(body["expires_at"]) == showing_qr.qr_expires_at


def test_qr_as_svg_and_png(api: ApiClient, showing_qr: WaSession) -> None:
    svg = api.get(f"/sessions/{showing_qr.pk}/qr", Accept="image/svg+xml")
    assert svg["Content-Type"] == "image/svg+xml"
    assert b"<svg" in svg.content
    assert svg["Cache-Control"] == "no-store"
    png = api.get(f"/sessions/{showing_qr.pk}/qr", Accept="image/png")
    assert png["Content-Type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    preferred = api.get(f"/sessions/{showing_qr.pk}/qr", Accept="image/png;q=0.9, image/svg+xml")
    assert preferred["Content-Type"] == "image/svg+xml"
    anything = api.get(f"/sessions/{showing_qr.pk}/qr", Accept="*/*")
    assert anything.json()["code"] == QR


def test_qr_refuses_unknown_formats_and_sessions_without_a_code(
    api: ApiClient, showing_qr: WaSession, session: WaSession
) -> None:
    response = api.get(f"/sessions/{showing_qr.pk}/qr", Accept="text/html")
    assert (response.status_code, response.json()["code"]) == (406, "not_acceptable")
    response = api.get(f"/sessions/{session.pk}/qr")
    assert (response.status_code, response.json()["code"]) == (409, "no_qr")


def test_session_reads_show_qr_state_but_never_cache(api: ApiClient, showing_qr: WaSession) -> None:
    response = api.get(f"/sessions/{showing_qr.pk}")
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["qr_available"] is True
    assert QR not in response.content.decode()


def test_nothing_secret_is_logged(
    api: ApiClient, showing_qr: WaSession, caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    settings.DEBUG = True  # ninja's own HttpBearer logs the header in DEBUG
    token = api.headers["Authorization"]
    api.get(f"/sessions/{showing_qr.pk}/qr")
    api.client.get("/api/v1/sessions", headers={"Authorization": f"Token {token[7:]}"})
    api.post(f"/sessions/{showing_qr.pk}/pair-phone", {"phone": "+491511234567"})
    api.post("/sessions", {"name": "bad name"})
    text = caplog.text
    assert token[7:] not in text
    assert QR not in text
    assert "1511234567" not in text


def test_delete_answers_202_when_the_supervisor_removes_the_row_before_the_answer(
    api: ApiClient, session: WaSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline supervisor can finish a deletion between the intent and the answer
    (a CI run of schemathesis got a 500 from reading the vanished row)."""
    ask = intents.delete

    def ask_then_supervisor_removes(target: WaSession, actor: str) -> None:
        ask(target, actor)
        WaSession.objects.filter(pk=target.pk).delete()

    monkeypatch.setattr(intents, "delete", ask_then_supervisor_removes)
    response = api.delete(f"/sessions/{session.pk}")
    assert response.status_code == 202
    assert response.json()["desired_state"] == "deleted"
    assert api.delete(f"/sessions/{session.pk}").status_code == 404


def test_deleting_a_row_already_removed_writes_nothing(session: WaSession) -> None:
    stale = WaSession.objects.get(pk=session.pk)
    WaSession.objects.filter(pk=session.pk).delete()
    intents.delete(stale, "admin")  # no IntegrityError from an event for a missing row
    assert not SessionEvent.objects.filter(session_id=session.pk).exists()
