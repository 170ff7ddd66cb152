"""The owner's side of messages: one pump per session runner, while its lease holds.

The session runner (:mod:`sessions_app.runner`) owns the connection; the pump
owns what goes over it. The runner calls:

- :meth:`MessagePump.settled` after each step, saying whether the session is
  connected (logged in) now; a connected session's queue is sent;
- :meth:`MessagePump.kick` for a doorbell ring about a queued message;
- :meth:`MessagePump.on_event` for the messaging events of its connection
  (:data:`EVENTS`: ``MessageSent``, ``SendFailed``, ``MessageReceived``,
  ``Receipt``), in the runner's task, in order;
- :meth:`MessagePump.connection_closed` when it closed the connection itself (a
  driver reports nothing after ``stop``, so a send under way is ``unknown``);
- :meth:`MessagePump.aclose` when the runner ends.

Sending: in order, one at a time, each started at least ``WACONNECT_SEND_INTERVAL``
after the previous one (the last send's time is read from the database at start,
so pacing survives a take-over). For each: ``sending`` is recorded under the
lease's epoch *before* the driver is asked (:func:`messaging.outbound.take_next`),
then ``driver.send_text(session_id, ref, chat, text)``; the answer arrives as an
event. No answer within the driver's send deadline (``WACONNECT_SEND_TIMEOUT``)
plus a grace: ``unknown``, never resent. A
``not_connected`` refusal puts the message back in the queue and pauses sending
for :data:`NOT_CONNECTED_PAUSE` (or until the runner reports a new connection).

Deadlines: while nothing can be sent, a timer expires the session's queued
messages at their deadline; the supervisors' reconcile sweeps the rest
(:func:`sweep_expired`), sessions nobody owns included.

Every change is pushed to the session's message watchers (:mod:`messaging.live`)
and counted (:mod:`ops.metrics`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Any

from django.utils import timezone

from messaging import inbound, live, outbound
from messaging.conf import MessagingConfig
from messaging.dbthreads import message_db
from messaging.models import Message
from messaging.states import Status, pacing_delay
from ops import metrics
from sessions_app.drivers.base import (
    Driver,
    DriverError,
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
#: Seconds sending pauses after the driver refused a send as not connected.
NOT_CONNECTED_PAUSE = 2.0
#: Seconds before the pump tries again after a pass failed (a database error).
RETRY_AFTER_ERROR = 1.0

_sent_and_take = message_db(outbound.sent_and_take)
_mark_stale = message_db(outbound.mark_stale_sending)
_mark_sent = message_db(outbound.mark_sent)
_mark_failed = message_db(outbound.mark_failed)
_mark_unknown = message_db(outbound.mark_unknown)
_apply_receipt = message_db(outbound.apply_receipt)
_expire = message_db(outbound.expire_overdue)
_next_deadline = message_db(outbound.next_deadline)
_last_send_at = message_db(outbound.last_send_at)
_store = message_db(inbound.store)
_sessions_with_queued = message_db(outbound.sessions_with_queued)
_fence_holds = message_db(outbound.fence_holds)


def handles(event: DriverEvent) -> bool:
    """Whether ``event`` is the pump's (else it is the lifecycle's)."""
    return isinstance(event, EVENTS)


@dataclasses.dataclass
class _InFlight:
    ref: str
    started: float  # perf_counter at take
    answered: asyncio.Future[MessageSent | None]  # the ack, else None (recorded)
    asked: bool = False  # the driver was asked (else it is certainly not sent)


class MessagePump:
    """Sends a session's queued messages and stores what arrives, under one lease."""

    def __init__(self, lease: Lease, driver: Driver, config: MessagingConfig) -> None:
        self.lease = lease
        self.session_id = lease.session_id
        self.driver = driver
        self.config = config
        self.connected = False
        self.in_flight: _InFlight | None = None
        self._paused_until = 0.0  # loop.time(): a not_connected refusal's pause
        self._wake = asyncio.Event()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"waconnect-messages-{self.session_id}"
        )

    def _extra(self) -> dict[str, Any]:
        return {"session": self.session_id}

    # -- called by the runner ---------------------------------------------------------

    def settled(self, connected: bool) -> None:
        """The runner's step ended; ``connected``: logged in, sends may go out."""
        if connected and not self.connected:
            self._paused_until = 0.0  # a new connection ends a not_connected pause
        self.connected = connected
        self._wake.set()

    def kick(self) -> None:
        """A message was queued (the doorbell)."""
        self._wake.set()

    async def on_event(self, event: DriverEvent) -> None:
        """Record one messaging event of the runner's current connection."""
        if isinstance(event, MessageReceived):
            await self._received(event)
        elif isinstance(event, Receipt):
            await self._receipt(event)
        elif isinstance(event, MessageSent):
            flight = self.in_flight
            if flight is not None and flight.ref == event.ref and not flight.answered.done():
                # The pump records it, with the next take (one commit for both).
                metrics.message_send.observe(time.perf_counter() - flight.started)
                flight.answered.set_result(event)
            else:  # a late ack (the message is unknown by now)
                await self._sent(event)
        elif isinstance(event, SendFailed):
            await self._failed(event)

    async def connection_closed(self) -> None:
        """The runner closed the connection: no answer will come for a send under way."""
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
            self._answered(flight.ref, row, "unknown")

    def close(self) -> None:
        """Stop the pump: no send starts after this call (the runner calls it before it
        closes the connection). A send under way stays ``sending`` under this epoch
        unless the connection's close marks it ``unknown``; else the next owner does."""
        self._closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self.task.cancel()

    async def aclose(self, timeout: float = 5.0) -> None:
        """:meth:`close`, then wait up to ``timeout`` s for the pump's last writes."""
        self.close()
        # asyncio.wait: neither raises the pump's cancellation nor swallows ours.
        await asyncio.wait({self.task}, timeout=timeout)

    # -- events --------------------------------------------------------------------------

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
        rows = await _apply_receipt(
            self.lease, list(event.message_ids), event.status, event.timestamp, timezone.now()
        )
        for row in rows:
            metrics.message_receipts.labels(row.status).inc()
        await live.publish(rows)

    async def _sent(self, event: MessageSent) -> None:
        row = await _mark_sent(
            self.lease, event.ref, event.message_id, event.timestamp, timezone.now()
        )
        await self._recorded_sent(event, row)

    async def _recorded_sent(self, event: MessageSent, row: Message | None) -> None:
        self._answered(event.ref, row, "sent")
        if row is not None:
            await live.publish([row])

    async def _failed(self, event: SendFailed) -> None:
        row = await _mark_failed(
            self.lease, event.ref, event.outcome, event.reason, event.detail, timezone.now()
        )
        if row is not None and row.status == Status.QUEUED:
            metrics.messages_requeued.inc()
            self._paused_until = asyncio.get_running_loop().time() + NOT_CONNECTED_PAUSE
            self._answered(event.ref, None, "")
        else:
            self._answered(event.ref, row, str(row.status) if row is not None else "")
        if row is not None:
            logger.info(
                "message %s %s: %s",
                row.ref,
                row.status,
                event.reason,
                extra=self._extra(),
            )
            await live.publish([row])

    def _answered(self, ref: str, row: Message | None, outcome: str) -> None:
        """The send of ``ref`` has its outcome (``row`` None: nothing changed)."""
        if row is not None and outcome in metrics.SEND_OUTCOMES:
            metrics.messages_sent.labels(outcome).inc()
        flight = self.in_flight
        if flight is not None and flight.ref == ref and not flight.answered.done():
            flight.answered.set_result(None)

    # -- the sending loop ----------------------------------------------------------------

    async def _loop(self) -> None:
        last = None
        started = False
        while not self._closed:
            try:
                if not started:
                    stale = await _mark_stale(self.lease, timezone.now())
                    self._count_unknown(stale)
                    await live.publish(stale)
                    last = await _last_send_at(self.session_id)
                    started = True
                await self._wake.wait()
                self._wake.clear()
                last = await self._send_queued(last)
                if not self.connected:
                    await self._arm_deadline()
            except asyncio.CancelledError:
                raise
            except Exception:
                # E.g. the database dropped our connection. The runner goes on (its
                # next step finds a lost lease, if that was it); so do we, shortly.
                logger.warning("message pump pass failed", exc_info=True, extra=self._extra())
                await asyncio.sleep(RETRY_AFTER_ERROR)
                self._wake.set()

    async def _send_queued(self, last: Any) -> Any:
        """Send queued messages while connected, one at a time, paced; return the time
        the last send started.

        WhatsApp's ack of one message is recorded together with the take of the
        next (:func:`messaging.outbound.sent_and_take`) when the next may go at
        once; alone, before any wait, otherwise (and always before returning).
        """
        loop = asyncio.get_running_loop()
        acked: MessageSent | None = None
        try:
            while self.connected and not self._closed:
                pause = self._paused_until - loop.time()
                if pause > 0:
                    loop.call_later(pause, self._wake.set)
                    return last
                delay = pacing_delay(last, timezone.now(), self.config.send_interval)
                if delay > 0:
                    if acked is not None:
                        await self._sent(acked)
                        acked = None
                    await asyncio.sleep(delay)
                    continue
                sent = None if acked is None else (acked.ref, acked.message_id, acked.timestamp)
                row, taken = await _sent_and_take(self.lease, sent, timezone.now())
                if acked is not None:
                    acked, done = None, acked
                    await self._recorded_sent(done, row)
                self._count_unknown(taken.stale)
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
                await self._sent(acked)

    async def _send(self, message: Message) -> MessageSent | None:
        """Ask the driver and wait for its answer: WhatsApp's ack (for the caller
        to record), or None (any other outcome, recorded here)."""
        flight = _InFlight(
            message.ref, time.perf_counter(), asyncio.get_running_loop().create_future()
        )
        self.in_flight = flight
        try:
            if self._closed or not self.connected:
                # Closed or disconnected during the take: never asked, so back in the
                # queue. No await between this check and the driver call below.
                row = await _mark_failed(
                    self.lease, message.ref, "refused", "not_connected", "", timezone.now()
                )
                await live.publish([row] if row is not None else [])
                return None
            flight.asked = True
            try:
                await self.driver.send_text(  # type: ignore[attr-defined]
                    self.session_id, message.ref, message.chat, message.text
                )
            except DriverError as exc:
                # The driver could not do it (no connection open): not sent, queued again.
                logger.info("driver refused the send: %s", exc, extra=self._extra())
                row = await _mark_failed(
                    self.lease, message.ref, "refused", "not_connected", str(exc), timezone.now()
                )
                metrics.messages_requeued.inc()
                self._paused_until = asyncio.get_running_loop().time() + NOT_CONNECTED_PAUSE
                await live.publish([row] if row is not None else [])
                return None
            except Exception as exc:
                # It may or may not have left: never resend, record unknown.
                logger.warning("driver send raised: %r", exc, extra=self._extra())
                row = await _mark_unknown(
                    self.lease,
                    message.ref,
                    "error",
                    f"the driver failed: {exc}"[:500],
                    timezone.now(),
                )
                self._answered(message.ref, row, "unknown")
                await live.publish([row] if row is not None else [])
                return None
            try:
                async with asyncio.timeout(self.config.answer_timeout):
                    return await flight.answered
            except TimeoutError:
                row = await _mark_unknown(
                    self.lease,
                    message.ref,
                    outbound.NO_ANSWER,
                    f"no answer from the driver within {self.config.answer_timeout:g} s",
                    timezone.now(),
                )
                self._answered(message.ref, row, "unknown")
                await live.publish([row] if row is not None else [])
                return None
        finally:
            self.in_flight = None

    def _count_unknown(self, rows: list[Message]) -> None:
        if rows:
            metrics.messages_sent.labels("unknown").inc(len(rows))

    # -- deadlines -----------------------------------------------------------------------

    async def _arm_deadline(self) -> None:
        """While nothing is sent, expire queued messages at their deadline."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        due = await _next_deadline(self.session_id)
        if due is None or self._closed:
            return
        delay = max(0.0, (due - timezone.now()).total_seconds())
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_later(delay, self._expire_now)

    def _expire_now(self) -> None:
        self._deadline_timer = None
        if not self._closed:
            asyncio.get_running_loop().create_task(
                self._expire(), name=f"waconnect-expire-{self.session_id}"
            )

    async def _expire(self) -> None:
        try:
            await publish_expired(await _expire(timezone.now(), self.session_id))
        except Exception:
            logger.warning("could not expire overdue messages", exc_info=True, extra=self._extra())
        self._wake.set()  # re-arm for the next deadline


async def publish_expired(rows: list[Message]) -> None:
    if rows:
        metrics.messages_sent.labels("expired").inc(len(rows))
        await live.publish(rows)


async def periodic(owner: str, pumps: dict[int, MessagePump]) -> None:
    """The supervisor's periodic pass: expire overdue messages of every session, and
    wake the pumps of ``owner``'s sessions that have messages queued (a lost ring
    leaves a message queued until then, never longer)."""
    await sweep_expired()
    for session_id in await _sessions_with_queued(owner, timezone.now()):
        pump = pumps.get(session_id)
        if pump is not None:
            pump.kick()


async def sweep_expired(limit: int = 500, now: dt.datetime | None = None) -> int:
    """Expire overdue queued messages of every session (the reconcile's safety net,
    for sessions nobody owns or that never come back); returns how many."""
    rows = await _expire(now or timezone.now(), None, limit)
    await publish_expired(rows)
    return len(rows)
