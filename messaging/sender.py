"""A session's sending, for its :class:`messaging.pump.MessagePump`: in order, one
at a time, each started at least ``WACONNECT_SEND_INTERVAL`` after the previous one.

For each message: ``sending`` is recorded under the lease's epoch *before* the
driver is asked (the take, batched with other sessions' by
:mod:`messaging.batcher`), then ``driver.send_text(session_id, ref, chat, text)``;
the answer arrives as an event (:mod:`messaging.pump_events` resolves
:attr:`Sender.in_flight`). WhatsApp's ack of one message is recorded together
with the take of the next when the next may go at once; alone, before any wait,
otherwise. No answer within the driver's send deadline plus a grace
(``answer_timeout``): ``unknown``, never resent. A ``not_connected`` refusal puts
the message back in the queue and pauses sending for :data:`NOT_CONNECTED_PAUSE`
(or until the runner reports a new connection). A pass that failed on a database
error settles what it left ``sending`` before the next (:meth:`Sender.settle_lost_track`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any

from django.utils import timezone

from messaging import live, outbound
from messaging.batcher import batcher
from messaging.conf import MessagingConfig
from messaging.dbthreads import message_db
from messaging.models import Message
from messaging.states import Status, pacing_delay
from ops import metrics
from sessions_app.drivers.base import Driver, DriverError, MessageSent
from sessions_app.leases import Lease

logger = logging.getLogger(__name__)

#: Seconds sending pauses after the driver refused a send as not connected.
NOT_CONNECTED_PAUSE = 2.0

_mark_sent = message_db(outbound.mark_sent)
_mark_failed = message_db(outbound.mark_failed)
_mark_unknown = message_db(outbound.mark_unknown)
_settle_lost_track = message_db(outbound.settle_lost_track)


@dataclasses.dataclass
class InFlight:
    ref: str
    started: float  # perf_counter at take
    answered: asyncio.Future[MessageSent | None]  # the ack, else None (recorded)
    asked: bool = False  # the driver was asked (else it is certainly not sent)


def count_unknown(rows: list[Message]) -> None:
    if rows:
        metrics.messages_sent.labels("unknown").inc(len(rows))


class Sender:
    """Sends one session's queue while connected (see the module doc)."""

    def __init__(self, lease: Lease, driver: Driver, config: MessagingConfig) -> None:
        self.lease = lease
        self.session_id = lease.session_id
        self.driver = driver
        self.config = config
        self.connected = False
        self.closed = False
        self.in_flight: InFlight | None = None
        self.paused_until = 0.0  # loop.time(): a not_connected refusal's pause
        self.wake = asyncio.Event()
        #: WhatsApp's ids of acks held to be recorded with the next take: set once written.
        self._unrecorded: dict[str, asyncio.Event] = {}
        #: Refs the driver was asked to send whose outcome is not written yet, with
        #: WhatsApp's ack once it came: what :meth:`settle_lost_track` settles.
        self.unresolved: dict[str, MessageSent | None] = {}
        #: A pass failed: a message may be ``sending`` that nothing will ever answer.
        self.lost_track = False

    def _extra(self) -> dict[str, Any]:
        return {"session": self.session_id}

    def settled(self, connected: bool, *, wake: bool = True) -> None:
        """The runner's step ended: ``connected`` or not; ``wake``: look at the queue
        (and the deadlines) now."""
        if connected and not self.connected:
            self.paused_until = 0.0  # a new connection ends a not_connected pause
        self.connected = connected
        if wake:
            self.wake.set()

    def pause(self) -> None:
        """The driver refused a send as not connected: wait before the next."""
        self.paused_until = asyncio.get_running_loop().time() + NOT_CONNECTED_PAUSE

    def answered(self, ref: str, row: Message | None, outcome: str) -> None:
        """The send of ``ref`` has its outcome (``row`` None: nothing changed)."""
        if row is not None and outcome in metrics.SEND_OUTCOMES:
            metrics.messages_sent.labels(outcome).inc()
        self.unresolved.pop(ref, None)
        flight = self.in_flight
        if flight is not None and flight.ref == ref and not flight.answered.done():
            flight.answered.set_result(None)

    async def connection_closed(self) -> None:
        """No answer will come for a send under way: ``unknown``."""
        self.connected = False
        flight = self.in_flight
        if flight is not None and flight.asked and not flight.answered.done():
            row = await _mark_unknown(
                self.lease,
                flight.ref,
                outbound.NO_ANSWER,
                "the connection closed before WhatsApp answered; it may have gone out",
                timezone.now(),
            )
            self.answered(flight.ref, row, "unknown")

    def ack_held(self, event: MessageSent) -> None:
        """WhatsApp acknowledged a send; it is recorded with the next take, and a
        receipt for it waits until then (:meth:`acks_recorded`)."""
        if event.ref in self.unresolved:
            self.unresolved[event.ref] = event
        if event.message_id:
            self._unrecorded.setdefault(event.message_id, asyncio.Event())

    def _ack_recorded(self, event: MessageSent) -> None:
        recorded = self._unrecorded.pop(event.message_id, None)
        if recorded is not None:
            recorded.set()

    async def acks_recorded(self, wa_ids: Iterable[str], timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) until the acks of these WhatsApp ids are written.

        A receipt moves a ``sent`` message forward and matches it by the id the ack
        wrote: applied before the ack, it matched nothing and was lost (the message
        then skipped ``delivered``, or stayed ``sent`` for good).
        """
        waits = [self._unrecorded[i].wait() for i in wa_ids if i in self._unrecorded]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*waits)

    async def record_sent(self, event: MessageSent, row: Message | None = None) -> None:
        """A late (or lone) ack; ``row``: already recorded with a take."""
        try:
            if row is None:
                row = await _mark_sent(
                    self.lease, event.ref, event.message_id, event.timestamp, timezone.now()
                )
        finally:
            self._ack_recorded(event)
        self.answered(event.ref, row, "sent")
        if row is not None:
            await live.publish([row])

    async def send_queued(self, last: dt.datetime | None) -> dt.datetime | None:
        """Send queued messages while connected, one at a time, paced; return the time
        the last send started."""
        loop = asyncio.get_running_loop()
        acked: MessageSent | None = None
        try:
            while self.connected and not self.closed:
                pause = self.paused_until - loop.time()
                if pause > 0:
                    loop.call_later(pause, self.wake.set)
                    return last
                delay = pacing_delay(last, timezone.now(), self.config.send_interval)
                if delay > 0:
                    if acked is not None:
                        acked, done = None, acked
                        await self.record_sent(done)
                    await asyncio.sleep(delay)
                    continue
                sent = None if acked is None else (acked.ref, acked.message_id, acked.timestamp)
                row, taken = await batcher().sent_and_take(self.lease, sent)
                if acked is not None:
                    acked, done = None, acked
                    self._ack_recorded(done)
                    self.answered(done.ref, row, "sent")
                    if row is not None:
                        await live.publish([row])
                count_unknown(taken.stale)
                await live.publish(taken.stale)
                message = taken.message
                if message is None:
                    return last
                last = message.sending_at
                await live.publish([message])
                acked = await self._send(message)
            return last
        finally:
            if acked is not None:
                await self.record_sent(acked)

    async def _send(self, message: Message) -> MessageSent | None:
        """Ask the driver and wait for its answer: WhatsApp's ack (for the caller
        to record), or None (any other outcome, recorded here)."""
        flight = InFlight(
            message.ref, time.perf_counter(), asyncio.get_running_loop().create_future()
        )
        self.in_flight = flight
        try:
            if self.closed or not self.connected:
                # Closed or disconnected during the take: never asked, so back in the
                # queue. No await between this check and the driver call below.
                row = await _mark_failed(
                    self.lease, message.ref, "refused", "not_connected", "", timezone.now()
                )
                await live.publish([row] if row is not None else [])
                return None
            flight.asked = True
            self.unresolved[message.ref] = None
            try:
                await self.driver.send_text(  # type: ignore[attr-defined]
                    self.session_id, message.ref, message.chat, message.text
                )
            except DriverError as exc:
                # The driver could not do it (no connection open): not sent, queued again.
                logger.info("driver refused the send: %s", exc, extra=self._extra())
                self.unresolved.pop(message.ref, None)  # never sent: queued again below
                row = await _mark_failed(
                    self.lease, message.ref, "refused", "not_connected", str(exc), timezone.now()
                )
                metrics.messages_requeued.inc()
                self.pause()
                await live.publish([row] if row is not None else [])
                return None
            except Exception as exc:
                # It may or may not have left: never resend, record unknown.
                logger.warning("driver send raised: %r", exc, extra=self._extra())
                await self._unknown(message.ref, "error", f"the driver failed: {exc}"[:500])
                return None
            try:
                async with asyncio.timeout(self.config.answer_timeout):
                    return await flight.answered
            except TimeoutError:
                await self._unknown(
                    message.ref,
                    outbound.NO_ANSWER,
                    f"no answer from the driver within {self.config.answer_timeout:g} s",
                )
                return None
        finally:
            self.in_flight = None

    async def settle_lost_track(self) -> None:
        """After a failed pass (:attr:`lost_track`): settle what this pump left
        ``sending`` (:func:`messaging.outbound.settle_lost_track`), else it would hold
        the session's queue until the lease changed hands. Raises on a database
        error (the pump tries again on its next pass)."""
        acked = {ref: event for ref, event in self.unresolved.items() if event is not None}
        asked = [ref for ref, event in self.unresolved.items() if event is None]
        rows = await _settle_lost_track(
            self.lease,
            [(ref, e.message_id, e.timestamp) for ref, e in acked.items()],
            asked,
            timezone.now(),
        )
        self.lost_track = False
        for event in acked.values():
            self._ack_recorded(event)
        for row in rows:
            self.answered(row.ref, row, str(row.status))
            if row.status == Status.QUEUED:
                metrics.messages_requeued.inc()
        self.unresolved.clear()
        if rows:
            counts = collections.Counter(str(row.status) for row in rows)
            logger.warning(
                "settled %d messages left sending by a failed pass: %s",
                len(rows),
                ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
                extra=self._extra(),
            )
            await live.publish(rows)

    async def _unknown(self, ref: str, reason: str, detail: str) -> None:
        row = await _mark_unknown(self.lease, ref, reason, detail, timezone.now())
        self.answered(ref, row, "unknown")
        await live.publish([row] if row is not None else [])
