"""Pages: staff only, POST + CSRF for actions, intent written and nothing observed."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from sessions_app import leases
from sessions_app.models import PhoneAction, SessionEvent, SupervisorPresence, WaSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(staff_user: Any) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(
        name="sales", state="connected", jid="4915@s.whatsapp.net", lease_owner="sup", lease_epoch=4
    )


PAGES = ["sessions:list", "sessions:create"]


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_users_are_sent_to_login(client: Client, page: str) -> None:
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_non_staff_users_are_forbidden(client: Client, plain_user: Any, session: WaSession) -> None:
    client.force_login(plain_user)
    for url in [reverse("sessions:list"), reverse("sessions:detail", args=[session.pk])]:
        assert client.get(url).status_code == 403
    assert client.post(reverse("sessions:action", args=[session.pk, "stop"])).status_code == 403
    assert WaSession.objects.get(pk=session.pk).desired_state == "running"


def test_create_writes_intent_and_redirects_to_the_detail_page(staff_client: Client) -> None:
    response = staff_client.post(reverse("sessions:create"), {"name": "support"})
    session = WaSession.objects.get(name="support")
    assert response.status_code == 302
    assert response["Location"] == reverse("sessions:detail", args=[session.pk])
    assert (session.desired_state, session.pair_request, session.state) == ("running", 1, "stopped")
    event = SessionEvent.objects.get(session=session)
    assert (event.kind, event.actor) == ("intent", "ada")


def test_create_shows_form_errors(staff_client: Client) -> None:
    response = staff_client.post(reverse("sessions:create"), {"name": "no spaces"})
    assert response.status_code == 200
    assert b"Use letters, digits" in response.content
    assert not WaSession.objects.exists()


def test_detail_page_renders_the_snapshot_and_the_simulated_badge(
    staff_client: Client, session: WaSession
) -> None:
    response = staff_client.get(reverse("sessions:detail", args=[session.pk]))
    assert response.status_code == 200
    assert response.context["snapshot"]["phone"] == "+4915"
    assert response.context["simulated_driver"] is True
    assert b"simulate-scan" in response.content


def test_the_detail_page_reads_its_events_once(staff_client: Client, session: WaSession) -> None:
    """The event table and the page's snapshot show the same newest 20, one query
    (on the create socket's way to the QR code, the page was read twice)."""
    for i in range(25):
        SessionEvent.objects.create(session=session, kind="info", message=f"event {i}")
    table = SessionEvent._meta.db_table
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(reverse("sessions:detail", args=[session.pk]))
    assert sum(f'FROM "{table}"' in q["sql"] for q in queries.captured_queries) == 1
    shown = [e["id"] for e in response.context["snapshot"]["events"]]
    newest = list(session.events.values_list("id", flat=True)[:20])
    assert shown == newest
    for pk in newest:
        assert f'data-id="{pk}"'.encode() in response.content


def test_simulate_buttons_vanish_with_a_real_driver(
    staff_client: Client, session: WaSession, settings: Any
) -> None:
    settings.WACONNECT_DRIVER = "neonize"
    response = staff_client.get(reverse("sessions:detail", args=[session.pk]))
    assert b"simulate-scan" not in response.content
    url = reverse("sessions:action", args=[session.pk, "simulate-scan"])
    assert staff_client.post(url).status_code == 404


@pytest.mark.parametrize(
    ("action", "field", "value", "row"),
    [
        ("stop", "desired_state", "stopped", {}),
        ("logout", "desired_state", "logged_out", {}),
        ("new-qr", "pair_request", 1, {"jid": "", "state": "qr_timeout"}),
        ("start", "connect_request", 1, {"state": "stopped", "desired_state": "stopped"}),
    ],
)
def test_actions_write_intent_only(
    staff_client: Client,
    session: WaSession,
    action: str,
    field: str,
    value: object,
    row: dict[str, str],
) -> None:
    WaSession.objects.filter(pk=session.pk).update(**row)
    before = WaSession.objects.filter(pk=session.pk).values().get()
    response = staff_client.post(
        reverse("sessions:action", args=[session.pk, action]), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200
    assert response.json()["ok"] is True
    after = WaSession.objects.filter(pk=session.pk).values().get()
    assert after[field] == value
    changed = {k for k in after if after[k] != before[k]}
    assert changed <= {"desired_state", "pair_request", "connect_request"}


def test_actions_need_post_and_csrf(staff_user: Any, session: WaSession) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    url = reverse("sessions:action", args=[session.pk, "stop"])
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403
    assert WaSession.objects.get(pk=session.pk).desired_state == "running"


def test_unknown_actions_are_404(staff_client: Client, session: WaSession) -> None:
    assert (
        staff_client.post(reverse("sessions:action", args=[session.pk, "explode"])).status_code
        == 404
    )
    assert staff_client.post(reverse("sessions:action", args=[999, "stop"])).status_code == 404


def test_delete_is_an_intent_the_supervisor_carries_out(
    staff_client: Client, session: WaSession
) -> None:
    response = staff_client.post(reverse("sessions:action", args=[session.pk, "delete"]))
    assert response["Location"] == reverse("sessions:list")
    assert WaSession.objects.get(pk=session.pk).desired_state == "deleted"
    again = staff_client.post(
        reverse("sessions:action", args=[session.pk, "start"]), HTTP_ACCEPT="application/json"
    )
    assert again.status_code == 409
    assert WaSession.objects.get(pk=session.pk).desired_state == "deleted"


@pytest.mark.parametrize("phone", ["+4915112345678", "+49 151 1234-5678", "+1 (415) 555.0100"])
def test_pair_by_phone_accepts_international_numbers(
    staff_client: Client, session: WaSession, phone: str
) -> None:
    WaSession.objects.filter(pk=session.pk).update(jid="", state="qr_required")
    url = reverse("sessions:action", args=[session.pk, "pair-phone"])
    response = staff_client.post(url, {"phone": phone}, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    row = WaSession.objects.get(pk=session.pk)
    assert row.pair_phone == "".join(c for c in phone if c.isdigit() or c == "+")
    assert row.pair_request == 1


@pytest.mark.parametrize(
    "phone", ["", "015112345678", "+0151123", "+49abc", "+1234", "+4915112345678901"]
)
def test_pair_by_phone_rejects_bad_numbers_with_a_reason(
    staff_client: Client, session: WaSession, phone: str
) -> None:
    url = reverse("sessions:action", args=[session.pk, "pair-phone"])
    response = staff_client.post(url, {"phone": phone}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert (
        "phone number" in response.json()["error"]
        or "international format" in response.json()["error"]
    )
    assert WaSession.objects.get(pk=session.pk).pair_request == 0


def test_simulated_scan_queues_a_phone_gesture(staff_client: Client, session: WaSession) -> None:
    staff_client.post(reverse("sessions:action", args=[session.pk, "simulate-scan"]))
    assert list(PhoneAction.objects.values_list("session_id", "gesture")) == [(session.pk, "scan")]


def test_admin_lists_sessions_and_acts_through_intents(
    staff_client: Client, session: WaSession, staff_user: Any
) -> None:
    staff_user.is_superuser = True
    staff_user.save()
    response = staff_client.get(reverse("admin:sessions_app_wasession_changelist") + "?q=sales")
    assert response.status_code == 200
    assert b"sales" in response.content
    response = staff_client.post(
        reverse("admin:sessions_app_wasession_changelist"),
        {"action": "stop_sessions", "_selected_action": [session.pk]},
    )
    assert response.status_code == 302
    assert WaSession.objects.get(pk=session.pk).desired_state == "stopped"
    page = staff_client.get(reverse("admin:sessions_app_wasession_change", args=[session.pk]))
    assert b"asked to stop" in page.content


def test_create_answers_json_to_the_page_script(staff_client: Client) -> None:
    response = staff_client.post(
        reverse("sessions:create"), {"name": "support"}, HTTP_ACCEPT="application/json"
    )
    session = WaSession.objects.get(name="support")
    assert response.status_code == 200
    data = response.json()
    html = data.pop("html")
    assert data == {
        "ok": True,
        "id": session.pk,
        "url": reverse("sessions:detail", args=[session.pk]),
        "ws": f"/ws/sessions/{session.pk}/",
    }
    # The detail page as the GET renders it, so the script needs no second request.
    detail = staff_client.get(data["url"]).content.decode()
    for fragment in ['id="detail"', 'id="session-snapshot"', "simulate-scan", "support"]:
        assert fragment in html
        assert fragment in detail
    assert (session.desired_state, session.pair_request) == ("running", 1)
    assert SessionEvent.objects.get(session=session).actor == "ada"


def test_create_answers_json_form_errors_with_400(staff_client: Client) -> None:
    WaSession.objects.create(name="taken")
    url = reverse("sessions:create")
    bad = staff_client.post(url, {"name": "no spaces"}, HTTP_ACCEPT="application/json")
    assert bad.status_code == 400
    assert bad.json()["ok"] is False
    assert "Use letters, digits" in " ".join(bad.json()["errors"]["name"])
    taken = staff_client.post(url, {"name": "TAKEN"}, HTTP_ACCEPT="application/json")
    assert taken.status_code == 400
    assert taken.json()["errors"] == {"name": ["A session with this name already exists."]}
    assert WaSession.objects.count() == 1


def test_create_json_still_needs_staff_and_csrf(
    client: Client, plain_user: Any, staff_user: Any
) -> None:
    url = reverse("sessions:create")
    anonymous = client.post(url, {"name": "x1"}, HTTP_ACCEPT="application/json")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("login"))
    client.force_login(plain_user)
    assert client.post(url, {"name": "x2"}, HTTP_ACCEPT="application/json").status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff_user)
    assert strict.post(url, {"name": "x3"}, HTTP_ACCEPT="application/json").status_code == 403
    assert not WaSession.objects.exists()


def test_admin_lists_the_running_supervisors_read_only(
    staff_client: Client, staff_user: Any
) -> None:
    staff_user.is_superuser = True
    staff_user.save()
    leases.announce("host:1:abc", 15, 40, 12)
    leases.announce("host:2:dead", 15, 1000, 0)
    SupervisorPresence.objects.filter(owner="host:2:dead").update(expires_at=timezone.now())
    url = reverse("admin:sessions_app_supervisorpresence_changelist")
    page = staff_client.get(url).content.decode()
    assert "host:1:abc" in page and "host:2:dead" in page
    assert 'alt="True"' in page and 'alt="False"' in page, "alive and expired are told apart"
    presence = SupervisorPresence.objects.get(owner="host:1:abc")
    change = reverse("admin:sessions_app_supervisorpresence_change", args=[presence.pk])
    assert b'name="owner"' not in staff_client.get(change).content, "nothing to edit"
    assert staff_client.get(reverse("admin:sessions_app_supervisorpresence_add")).status_code == 403


@pytest.mark.parametrize(
    ("action", "data", "message"),
    [
        ("new-qr", {}, "linked to a phone; log it out first"),
        ("pair-phone", {"phone": "+4915112345678"}, "linked to a phone; log it out first"),
        ("start", {}, "already connected"),
    ],
)
def test_actions_that_make_no_sense_now_are_refused_with_a_reason(
    staff_client: Client, session: WaSession, action: str, data: dict[str, str], message: str
) -> None:
    """New QR / pairing code on a linked session, start while connected: 409, the
    reason shown (JSON for the page's script, a message after a plain post), nothing
    written."""
    before = WaSession.objects.filter(pk=session.pk).values().get()
    url = reverse("sessions:action", args=[session.pk, action])
    response = staff_client.post(url, data, HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert response.json()["ok"] is False
    assert message in response.json()["error"]
    plain = staff_client.post(url, data, follow=True)
    assert [message in str(m) for m in plain.context["messages"]] == [True]
    assert WaSession.objects.filter(pk=session.pk).values().get() == before
    assert not SessionEvent.objects.filter(session=session).exists()


def test_the_admin_start_action_reports_a_refusal(
    staff_client: Client, session: WaSession, staff_user: Any
) -> None:
    staff_user.is_superuser = True
    staff_user.save()
    stopped = WaSession.objects.create(
        name="idle", state="stopped", desired_state="stopped", jid="4916@s.whatsapp.net"
    )
    response = staff_client.post(
        reverse("admin:sessions_app_wasession_changelist"),
        {"action": "start_sessions", "_selected_action": [session.pk, stopped.pk]},
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert "sales: This session is already connected." in shown
    assert "Start requested for 1 session(s)." in shown
    assert WaSession.objects.get(pk=session.pk).connect_request == 0
    assert WaSession.objects.get(pk=stopped.pk).connect_request == 1
