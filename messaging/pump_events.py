"""What the driver reports on a session's connection, recorded for its
:class:`messaging.pump.MessagePump`: incoming messages (stored once, then acked to
a driver that waits for that), receipts (only forward), WhatsApp's answers to our
sends (an ack of the send under way goes back to the :class:`~messaging.sender.Sender`,
which records it with its next take; anything else is recorded here).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.utils import timezone

from messaging import inbound, live, outbound
from messaging.dbthreads import message_db
from messaging.sender import Sender
from messaging.states import Status
from ops import metrics
from sessions_app.drivers.base import (
    Driver,
    DriverEvent,
    MessageReceived,
    MessageSent,
    Receipt,
    SendFailed,
)
from sessions_app.leases import Lease

logger = logging.getLogger(__name__)

#: The driver events the pump handles (the runner routes them here).
EVENTS = (MessageSent, SendFailed, MessageReceived, Receipt)

_mark_failed = message_db(outbound.mark_failed)
_apply_receipt = message_db(outbound.apply_receipt)
_store = message_db(inbound.store)
_fence_holds = message_db(outbound.fence_holds)


class EventRecorder:
    """Records one session's messaging events, under its lease."""

    def __init__(self, lease: Lease, driver: Driver, sender: Sender) -> None:
        self.lease = lease
        self.session_id = lease.session_id
        self.driver = driver
        self.sender = sender

    def _extra(self) -> dict[str, Any]:
        return {"session": self.session_id}

    async def on_event(self, event: DriverEvent) -> None:
        """Record one messaging event of the runner's current connection."""
        if isinstance(event, MessageReceived):
            await self._received(event)
        elif isinstance(event, Receipt):
            await self._receipt(event)
        elif isinstance(event, MessageSent):
            flight = self.sender.in_flight
            if flight is not None and flight.ref == event.ref and not flight.answered.done():
                # The sender records it, with the next take (one commit for both).
                metrics.message_send.observe(time.perf_counter() - flight.started)
                self.sender.ack_held(event)
                flight.answered.set_result(event)
            else:  # a late ack (the message is unknown by now)
                await self.sender.record_sent(event)
        elif isinstance(event, SendFailed):
            await self._failed(event)

    async def _received(self, event: MessageReceived) -> None:
        if not event.message_id:
            logger.warning("an incoming message without an id was dropped", extra=self._extra())
            return
        row = await _store(self.lease, event, timezone.now())
        if row is not None or await _fence_holds(self.lease):  # stored, now or before
            self._ack(event)
        if row is not None:
            metrics.messages_received.inc()
            await live.publish([row])

    def _ack(self, event: MessageReceived) -> None:
        """Tell a driver that acks incoming messages only once they are stored
        (``ack_received``, the simulated service's) that this one is. Never for a
        message the fence refused: WhatsApp delivers it again to the next owner.
        A driver without it (neonize: whatsmeow acks when its handler returns)
        has acked already."""
        ack = getattr(self.driver, "ack_received", None)
        if ack is not None:
            ack(self.session_id, event.message_id)

    async def _receipt(self, event: Receipt) -> None:
        await self.sender.acks_recorded(event.message_ids)  # else it matches nothing
        rows = await _apply_receipt(
            self.lease, list(event.message_ids), event.status, event.timestamp, timezone.now()
        )
        for row in rows:
            metrics.message_receipts.labels(row.status).inc()
        await live.publish(rows)

    async def _failed(self, event: SendFailed) -> None:
        row = await _mark_failed(
            self.lease, event.ref, event.outcome, event.reason, event.detail, timezone.now()
        )
        if row is not None and row.status == Status.QUEUED:
            metrics.messages_requeued.inc()
            self.sender.pause()
            self.sender.answered(event.ref, None, "")
        else:
            self.sender.answered(event.ref, row, str(row.status) if row is not None else "")
        if row is not None:
            logger.info(
                "message %s %s: %s",
                row.ref,
                row.status,
                event.reason,
                extra=self._extra(),
            )
            await live.publish([row])
