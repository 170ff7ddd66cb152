"""An incoming message is acked to a driver that asks for it (``ack_received``) only
once the owner stored it, or had stored it before: never one its lease's fence
refused, which WhatsApp must deliver again to the session's next owner."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone

from messaging import pump
from messaging.conf import MessagingConfig
from messaging.models import Message
from sessions_app import leases
from sessions_app.drivers.base import MessageReceived
from sessions_app.leases import Lease
from sessions_app.models import WaSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

PEER_JID = "491700000001@s.whatsapp.net"


class AckingDriver:
    """Records what the pump acks; sends nothing."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, str]] = []

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        raise AssertionError("nothing is sent here")

    def ack_received(self, session_id: int, message_id: str) -> None:
        self.acks.append((session_id, message_id))


@sync_to_async
def claimed() -> Lease:
    WaSession.objects.create(name="acked", pair_request=1)
    (lease,) = leases.claim("owner-a", 60, 1)
    return lease


@sync_to_async
def taken_over(lease: Lease) -> None:
    WaSession.objects.filter(pk=lease.session_id).update(
        lease_owner="owner-b", lease_epoch=F("lease_epoch") + 1
    )


@sync_to_async
def stored(session_id: int) -> list[str]:
    return list(Message.objects.filter(session_id=session_id).values_list("wa_id", flat=True))


def received(session_id: int, message_id: str) -> MessageReceived:
    return MessageReceived(
        session_id, message_id, PEER_JID, PEER_JID, PEER_JID, False, timezone.now(), "P",
        "text", "hello",
    )  # fmt: skip


async def test_an_incoming_message_is_acked_once_stored_and_never_when_fenced() -> None:
    lease = await claimed()
    driver = AckingDriver()
    the_pump = pump.MessagePump(lease, driver, MessagingConfig(send_interval=0))  # type: ignore[arg-type]
    sid = lease.session_id
    try:
        await the_pump.on_event(received(sid, "IN-1"))
        await the_pump.on_event(received(sid, "IN-1"))  # redelivered: stored before
        assert driver.acks == [(sid, "IN-1"), (sid, "IN-1")]
        await taken_over(lease)
        await the_pump.on_event(received(sid, "IN-2"))  # the fence refuses it
        assert driver.acks == [(sid, "IN-1"), (sid, "IN-1")], "acked what it could not store"
        assert await stored(sid) == ["IN-1"]
    finally:
        await the_pump.aclose()
