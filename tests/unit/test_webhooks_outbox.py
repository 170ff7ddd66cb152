"""The outbox (SQLite): events and deliveries written in the caller's transaction,
gap-free per-session sequence numbers, and the session events of fenced writes."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from sessions_app import leases
from sessions_app.leases import EventRecord
from sessions_app.models import WaSession
from webhooks import outbox
from webhooks.models import Delivery, Endpoint, Event

pytestmark = pytest.mark.django_db


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(name="shop", pair_request=1)


def endpoint(**kwargs: object) -> Endpoint:
    return Endpoint.objects.create(url="http://127.0.0.1:9/hook", **kwargs)


def test_emit_writes_the_event_and_one_delivery_per_endpoint_that_wants_it(
    session: WaSession,
) -> None:
    every = endpoint()
    status_only = endpoint(event_types=["session.status"])
    messages_only = endpoint(event_types=["message.received"])
    endpoint(enabled=False)
    other = WaSession.objects.create(name="other")
    elsewhere = endpoint(all_sessions=False)
    elsewhere.sessions.set([other])

    event = outbox.emit("session.status", session.pk, {"state": "connected"})

    assert event is not None
    assert event.payload["session"] == {"id": session.pk, "name": "shop"}
    assert event.payload["type"] == "session.status"
    assert event.payload["data"] == {"state": "connected"}
    assert event.payload["id"] == event.id and event.id.startswith("evt_")
    targets = set(Delivery.objects.filter(event=event).values_list("endpoint_id", flat=True))
    assert targets == {every.pk, status_only.pk}
    assert messages_only.pk not in targets


def test_nothing_is_written_when_no_endpoint_listens(session: WaSession) -> None:
    endpoint(event_types=["message.status"])
    assert outbox.emit("session.status", session.pk, {}) is None
    assert not Event.objects.exists()


def test_qr_codes_go_only_to_endpoints_that_list_them(session: WaSession) -> None:
    endpoint()
    qr = endpoint(event_types=["session.qr"])
    event = outbox.emit("session.qr", session.pk, {"qr": "2@abc"})
    assert event is not None
    assert list(event.deliveries.values_list("endpoint_id", flat=True)) == [qr.pk]
    assert "2@abc" not in repr(event)


def test_sequence_numbers_are_per_session_and_a_rollback_gives_its_number_back(
    session: WaSession,
) -> None:
    endpoint()
    other = WaSession.objects.create(name="other")
    assert outbox.emit("session.status", session.pk, {}).seq == 1  # type: ignore[union-attr]
    assert outbox.emit("session.status", other.pk, {}).seq == 1  # type: ignore[union-attr]

    def failing_change() -> None:
        with transaction.atomic():
            outbox.emit("session.status", session.pk, {})
            raise RuntimeError("the change it reports failed")

    with pytest.raises(RuntimeError):
        failing_change()
    assert Event.objects.filter(session_id=session.pk).count() == 1
    assert outbox.emit("session.status", session.pk, {}).seq == 2  # type: ignore[union-attr]
    assert Delivery.objects.filter(session_id=session.pk).count() == 2


def test_a_fenced_state_write_emits_session_status_with_its_cause(session: WaSession) -> None:
    endpoint()
    (lease,) = leases.claim("sup-a", 10, 1)
    assert leases.write(
        lease,
        {"state": "connecting"},
        EventRecord("state", "QR round requested", "stopped", "connecting"),
    )
    (event,) = Event.objects.all()
    assert event.type == "session.status"
    assert event.payload["data"] | {"at": None} == {
        "state": "connecting",
        "previous_state": "stopped",
        "cause": "QR round requested",
        "actor": "supervisor:sup-a",
        "lease_epoch": 1,
        "at": None,
    }


def test_a_write_under_a_lost_lease_emits_nothing(session: WaSession) -> None:
    endpoint()
    (lease,) = leases.claim("sup-a", 10, 1)
    WaSession.objects.filter(pk=session.pk).update(lease_owner="sup-b")
    assert not leases.write(
        lease, {"state": "connecting"}, EventRecord("state", "go", "stopped", "connecting")
    )
    assert not Event.objects.exists()


def test_a_new_qr_code_is_a_session_qr_event_after_the_status(session: WaSession) -> None:
    endpoint(event_types=["session.status", "session.qr"])
    (lease,) = leases.claim("sup-a", 10, 1)
    fields = {"state": "qr_required", "qr_code": "2@secret-qr"}
    leases.write(lease, fields, EventRecord("state", "QR code", "connecting", "qr_required"))
    leases.write(lease, {"qr_code": "2@next-qr"}, None)  # a rotation: no state change
    events = list(Event.objects.order_by("seq").values_list("type", "seq"))
    assert events == [("session.status", 1), ("session.qr", 2), ("session.qr", 3)]
    assert Event.objects.get(seq=3).payload["data"]["qr"] == "2@next-qr"


def test_a_write_with_a_state_and_a_qr_code_looks_the_endpoints_up_once(
    session: WaSession,
) -> None:
    """The write on the way from WhatsApp's first code to the page reports two events;
    the endpoint SELECT (a fenced write's only cost when nobody listens) runs once."""
    (lease,) = leases.claim("sup-a", 10, 1)
    table = Endpoint._meta.db_table
    fields = {"state": "qr_required", "qr_code": "2@secret-qr"}
    with CaptureQueriesContext(connection) as quiet:
        leases.write(lease, fields, EventRecord("state", "QR code", "connecting", "qr_required"))
    endpoint(event_types=["session.qr"])
    with CaptureQueriesContext(connection) as heard:
        leases.write(lease, fields, EventRecord("state", "QR code", "connecting", "qr_required"))
    for captured in (quiet, heard):
        lookups = [q["sql"] for q in captured.captured_queries if f'FROM "{table}"' in q["sql"]]
        assert len(lookups) == 1, lookups
    assert list(Event.objects.values_list("type", flat=True)) == ["session.qr"]


def test_hand_over_and_delete_are_reported_too(session: WaSession) -> None:
    endpoint()
    (lease,) = leases.claim("sup-a", 10, 1)
    leases.write(lease, {"state": "connected"}, EventRecord("state", "up", "pairing", "connected"))
    leases.hand_over("sup-a", [session.pk], "supervisor shutting down; handing over")
    (lease,) = leases.claim("sup-b", 10, 1)
    assert leases.delete(lease)
    states = [
        (e.payload["data"]["previous_state"], e.payload["data"]["state"])
        for e in Event.objects.order_by("seq")
    ]
    assert states == [
        ("pairing", "connected"),
        ("connected", "disconnected"),
        ("disconnected", "deleted"),
    ]
    last = Event.objects.order_by("seq").last()
    assert last is not None and last.session_name == "shop"
    assert Delivery.objects.count() == 3  # they outlive the session row
