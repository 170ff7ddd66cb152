"""message.received and message.status: emitted inside messaging's own fenced writes
(its messages_changed signal), committed with the message row or not at all."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from messaging import inbound, outbound
from messaging.models import Message
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
