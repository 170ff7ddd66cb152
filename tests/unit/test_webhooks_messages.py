"""message.received and message.status: emitted inside messaging's own fenced writes
(its messages_changed signal), committed with the message row or not at all."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messaging import inbound, outbound
from messaging.models import Message
from messaging.outbound_batch import Step, sent_and_take_many
from messaging.states import Direction, Status
from sessions_app import leases
from sessions_app.drivers.base import MessageReceived
from sessions_app.leases import Lease
from sessions_app.models import WaSession
from webhooks.models import Delivery, Endpoint, Event

pytestmark = pytest.mark.django_db

NOW = timezone.now()


@pytest.fixture
def lease() -> Lease:
    WaSession.objects.create(name="chat", pair_request=1)
    (held,) = leases.claim("owner-a", 60, 1)
    types = ["message.received", "message.status"]
    Endpoint.objects.create(url="http://127.0.0.1:9/hook", event_types=types)
    return held


def incoming(message_id: str = "WA1") -> MessageReceived:
    return MessageReceived(
        session_id=0, message_id=message_id, chat="491700000001@s.whatsapp.net",
        sender="1234567@lid", sender_phone="491700000001@s.whatsapp.net", from_me=False,
        timestamp=NOW, push_name="Peer", kind="text", text="hi there",
    )  # fmt: skip


def test_an_incoming_message_is_one_message_received_event_with_its_text(lease: Lease) -> None:
    assert inbound.store(lease, incoming(), NOW) is not None
    assert inbound.store(lease, incoming(), NOW) is None  # a redelivery: no second event
    (event,) = Event.objects.all()
    assert event.type == "message.received" and event.seq == 1
    data = event.payload["data"]
    assert (data["text"], data["direction"], data["wa_id"]) == ("hi there", "in", "WA1")
    assert Delivery.objects.count() == 1
    assert "hi there" not in repr(event)


def test_no_event_without_the_message_row(lease: Lease) -> None:
    def failing() -> None:
        with transaction.atomic():
            inbound.store(lease, incoming("WA2"), NOW)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        failing()
    assert not Message.objects.exists() and not Event.objects.exists()


def test_outcomes_and_receipts_are_message_status_events_but_owner_steps_are_not(
    lease: Lease,
) -> None:
    message = Message.objects.create(
        session_id=lease.session_id, direction=Direction.OUT, to="491510000000",
        chat="491510000000@s.whatsapp.net", from_me=True, text="hello", status=Status.QUEUED,
        deadline=NOW + dt.timedelta(hours=1),
    )  # fmt: skip
    outbound.take_next(lease, NOW)  # sending: the owner's step, not reported
    assert not Event.objects.exists()
    outbound.mark_sent(lease, message.ref, "3EB0ABC", NOW, NOW)
    outbound.apply_receipt(lease, ["3EB0ABC"], "delivered", NOW, NOW)
    statuses = [(e.type, e.payload["data"]["status"], e.seq) for e in Event.objects.order_by("seq")]
    assert statuses == [("message.status", "sent", 1), ("message.status", "delivered", 2)]


def test_a_batch_of_many_sessions_looks_endpoints_up_once_and_honours_their_sessions(
    lease: Lease,
) -> None:
    """The owner records many sessions' acks in one statement: one endpoint lookup
    for all of them; an endpoint limited to some sessions hears only those."""
    WaSession.objects.create(name="other", pair_request=1)
    (other,) = leases.claim("owner-a", 60, 1)
    only_other = Endpoint.objects.create(url="http://127.0.0.1:9/other", event_types=[])
    only_other.all_sessions = False
    only_other.save()
    only_other.sessions.add(other.session_id)
    sent = []
    for held in (lease, other):
        message = Message.objects.create(
            session_id=held.session_id, direction=Direction.OUT, to="491510000000",
            chat="491510000000@s.whatsapp.net", from_me=True, text="hello",
            status=Status.QUEUED, deadline=NOW + dt.timedelta(hours=1),
        )  # fmt: skip
        sent.append(Step(held, (message.ref, f"WA{held.session_id}", NOW)))
    sent_and_take_many([Step(lease), Step(other)], NOW)
    with CaptureQueriesContext(connection) as queries:
        sent_and_take_many(sent, NOW)
    lookups = [q for q in queries.captured_queries if '"enabled"' in q["sql"]]
    assert len(lookups) == 1, "one endpoint lookup for the batch"
    by_endpoint = sorted(Delivery.objects.values_list("endpoint_id", "session_id"))
    everyone = Endpoint.objects.exclude(pk=only_other.pk).get().pk
    assert by_endpoint == sorted(
        [
            (everyone, lease.session_id),
            (everyone, other.session_id),
            (only_other.pk, other.session_id),
        ]
    )
