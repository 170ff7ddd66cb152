"""The web side's send: a queued row and a ring for the owner, or a clear refusal."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.utils import timezone

from messaging import intents, live
from messaging.models import Message
from messaging.states import Direction, Status
from sessions_app import doorbell
from sessions_app.intents import IntentRefused
from sessions_app.models import WaSession
from sessions_app.states import Desired

pytestmark = pytest.mark.django_db


@pytest.fixture
def session() -> WaSession:
    return WaSession.objects.create(name="sender")


def listen(group: str) -> str:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return channel


def receive(channel: str) -> dict[str, Any]:
    return async_to_sync(get_channel_layer().receive)(channel)


def test_a_message_is_queued_and_rings_the_owner_after_commit(
    session: WaSession, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.WACONNECT_MESSAGE_TTL = 120
    ring = listen(doorbell.SUPERVISORS_GROUP)
    watch = listen(live.messages_group(session.pk))
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        message = intents.enqueue(session, "+49 151 1234567", "hello", actor="token:crm")
    assert len(callbacks) == 1, "nothing rung before the row is committed"
    row = Message.objects.get(pk=message.pk)
    assert (row.direction, row.status, row.to, row.chat, row.text, row.actor, row.from_me) == (
        Direction.OUT,
        Status.QUEUED,
        "+49 151 1234567",
        "491511234567@s.whatsapp.net",
        "hello",
        "token:crm",
        True,
    )
    assert (
        before + dt.timedelta(seconds=120)
        <= row.deadline
        <= timezone.now() + dt.timedelta(seconds=120)
    )
    callbacks[0]()
    assert receive(ring) == {
        "type": "intent.changed",
        "session": session.pk,
        "reason": intents.RING_REASON,
    }
    pushed = receive(watch)
    assert pushed["type"] == "message.update"
    assert pushed["message"]["ref"] == row.ref and pushed["message"]["status"] == "queued"


def test_a_deadline_can_be_given_per_message(session: WaSession) -> None:
    wanted = timezone.now() + dt.timedelta(minutes=3)
    message = intents.enqueue(session.pk, "491511234567@s.whatsapp.net", "hi", deadline=wanted)
    assert Message.objects.get(pk=message.pk).deadline == wanted


def test_bad_requests_are_refused_by_field_and_nothing_is_written(session: WaSession) -> None:
    with pytest.raises(ValidationError) as caught:
        intents.enqueue(session, "0151 12", " ", deadline=timezone.now() - dt.timedelta(seconds=1))
    errors = caught.value.error_dict
    assert set(errors) == {"to", "text", "deadline"}
    assert errors["to"][0].code == "invalid_recipient"
    assert not Message.objects.exists()


def test_a_session_being_deleted_or_gone_takes_no_messages(session: WaSession) -> None:
    WaSession.objects.filter(pk=session.pk).update(desired_state=Desired.DELETED)
    with pytest.raises(IntentRefused) as refused:
        intents.enqueue(session, "491511234567", "hi")
    assert refused.value.code == "deleting"
    with pytest.raises(IntentRefused) as refused:
        intents.enqueue(session.pk + 1000, "491511234567", "hi")
    assert refused.value.code == "not_found"
    assert not Message.objects.exists()


def test_a_session_that_is_not_connected_still_queues(session: WaSession) -> None:
    """Not connected is no refusal: the message waits for it until its deadline."""
    assert session.state == "stopped"
    assert intents.enqueue(session, "491511234567", "later").status == Status.QUEUED


def test_the_live_payload_has_the_documented_shape(session: WaSession) -> None:
    message = intents.enqueue(session, "491511234567", "hi")
    data = live.payload(Message.objects.get(pk=message.pk))
    assert set(data) == {
        "id", "session", "ref", "direction", "status", "wa_id", "chat", "to", "sender",
        "sender_phone", "from_me", "push_name", "kind", "text", "failure_reason",
        "failure_detail", "version", "deadline", "created_at", "wa_timestamp", "sent_at",
        "delivered_at", "read_at", "status_changed_at",
    }  # fmt: skip
    assert data["deadline"].endswith("+00:00") and data["sent_at"] is None


def test_the_admin_lists_messages_read_only(admin_client: Any, session: WaSession) -> None:
    message = intents.enqueue(session, "491511234567", "hi")
    listing = admin_client.get("/admin/messaging/message/", {"q": message.ref})
    assert listing.status_code == 200 and message.ref in listing.content.decode()
    assert admin_client.get("/admin/messaging/message/add/").status_code == 403
    page = admin_client.get(f"/admin/messaging/message/{message.pk}/change/")
    assert page.status_code == 200 and b'name="text"' not in page.content
    for query in ({"status__exact": "queued"}, {"direction__exact": "out"}, {"kind": "text"}):
        assert admin_client.get("/admin/messaging/message/", query).status_code == 200
