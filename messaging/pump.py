"""The owner's side of messages: one pump per session runner, while its lease holds.

The session runner (:mod:`sessions_app.runner`) owns the connection; the pump
owns what goes over it. The runner calls:

- :meth:`MessagePump.settled` after each step, saying whether the session is
  connected (logged in) now, or has a connection opening; a connected session's
  queue is sent;
- :meth:`MessagePump.kick` for a doorbell ring about a queued message;
- :meth:`MessagePump.on_event` for the messaging events of its connection
  (:data:`EVENTS`: ``MessageSent``, ``SendFailed``, ``MessageReceived``,
  ``Receipt``), in the runner's task, in order;
- :meth:`MessagePump.connection_closed` when it closed the connection itself (a
  driver reports nothing after ``stop``, so a send under way is ``unknown``);
- :meth:`MessagePump.close` when the runner ends (before it closes the connection),
  then :meth:`MessagePump.aclose` to wait for the pump's last writes.

The pump is the runner's face and the loop; the work is in three parts:

- :class:`messaging.sender.Sender`: in order, one at a time, paced (the last
  send's time is read from the database at start, so pacing survives a
  take-over); ``sending`` recorded under the lease's epoch before the driver is
  asked; no answer in time → ``unknown``, never resent; the takes of all
  sessions ready at once batched (:mod:`messaging.batcher`);
- :class:`messaging.pump_events.EventRecorder`: what the driver reports;
- deadlines (here): while nothing can be sent, a timer expires the session's
  queued messages at their deadline; the supervisors' reconcile sweeps the rest
  (:func:`sweep_expired`), sessions nobody owns included.

Every change is pushed to the session's message watchers (:mod:`messaging.live`)
and counted (:mod:`ops.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

from django.utils import timezone

from messaging import live, outbound
from messaging.conf import MessagingConfig
from messaging.dbthreads import message_db
from messaging.models import Message
from messaging.pump_events import EVENTS, EventRecorder
from messaging.sender import NOT_CONNECTED_PAUSE, Sender, count_unknown
from ops import metrics
from sessions_app.drivers.base import Driver, DriverEvent
from sessions_app.leases import Lease

logger = logging.getLogger(__name__)

__all__ = ["EVENTS", "NOT_CONNECTED_PAUSE", "MessagePump", "handles", "periodic", "sweep_expired"]

#: Seconds before the pump tries again after a pass failed (a database error).
RETRY_AFTER_ERROR = 1.0

#: Seconds the pump's start-up (its first database calls: the old epochs' sends
#: marked ``unknown``, the last send's time) waits at most for the runner's first
#: step that neither ends with a connection opening nor shows a code to scan, or
#: for a queued message. While a connection opens, WhatsApp's first answer (a QR
#: code, the login) is due, and its writes are on the path to the admin's page;
#: while a code waits for its scan, nothing can be sent, and the first code's push
#: is on that path. The start-up's calls ran beside them, in the same process, at
#: the same moment (create → QR on the production shape 4–7 ms slower at p50 with
#: them; the first code's issued → visible 4–7 ms slower at p50: docs/benchmarks.md).
#: The price: a message queued before this owner (no ring announces it) has its
#: deadline looked at up to this much later while nobody scans.
START_HOLD = 2.0

_mark_stale = message_db(outbound.mark_stale_sending)
_expire = message_db(outbound.expire_overdue)
_next_deadline = message_db(outbound.next_deadline)
_last_send_at = message_db(outbound.last_send_at)
_sessions_with_queued = message_db(outbound.sessions_with_queued)


def handles(event: DriverEvent) -> bool:
    """Whether ``event`` is the pump's (else it is the lifecycle's)."""
    return isinstance(event, EVENTS)


class MessagePump:
    """Sends a session's queued messages and stores what arrives, under one lease."""

    def __init__(self, lease: Lease, driver: Driver, config: MessagingConfig) -> None:
        self.lease = lease
        self.session_id = lease.session_id
        self.driver = driver
        self.sender = Sender(lease, driver, config)
        self.events = EventRecorder(lease, driver, self.sender)
        self._deadline_timer: asyncio.TimerHandle | None = None
        #: The start-up's calls are done (see :data:`START_HOLD`).
        self.started = False
        self.task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"waconnect-messages-{self.session_id}"
        )

    @property
    def config(self) -> MessagingConfig:
        return self.sender.config

    @config.setter
    def config(self, value: MessagingConfig) -> None:
        self.sender.config = value

    @property
    def connected(self) -> bool:
        return self.sender.connected

    def _extra(self) -> dict[str, Any]:
        return {"session": self.session_id}

    # -- called by the runner ---------------------------------------------------------

    def settled(
        self, connected: bool, *, connecting: bool = False, awaiting_scan: bool = False
    ) -> None:
        """The runner's step ended; ``connected``: logged in, sends may go out;
        ``connecting``: a connection is opening, WhatsApp's first answer is due, so
        the pump makes no database call for this step; ``awaiting_scan``: WhatsApp
        showed a QR or pairing code, so a pump not yet started goes on holding its
        start-up (see :data:`START_HOLD`), and one already started looks at its
        queue and deadlines as after any step."""
        hold = connecting or (awaiting_scan and not self.started)
        self.sender.settled(connected, wake=not hold)

    def kick(self) -> None:
        """A message was queued (the doorbell)."""
        self.sender.wake.set()

    async def on_event(self, event: DriverEvent) -> None:
        """Record one messaging event of the runner's current connection."""
        await self.events.on_event(event)

    async def connection_closed(self) -> None:
        """The runner closed the connection: no answer will come for a send under way."""
        await self.sender.connection_closed()

    def close(self) -> None:
        """Stop the pump: no send starts after this call (the runner calls it before it
        closes the connection). A send under way stays ``sending`` under this epoch
        unless the connection's close marks it ``unknown``; else the next owner does."""
        self.sender.closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self.task.cancel()

    async def aclose(self, timeout: float = 5.0) -> None:
        """:meth:`close`, then wait up to ``timeout`` s for the pump's last writes."""
        self.close()
        # asyncio.wait: neither raises the pump's cancellation nor swallows ours.
        await asyncio.wait({self.task}, timeout=timeout)

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        sender = self.sender
        last = None
        while not sender.closed:
            try:
                if not self.started:
                    await self._hold_start()
                    stale = await _mark_stale(self.lease, timezone.now())
                    count_unknown(stale)
                    await live.publish(stale)
                    last = await _last_send_at(self.session_id)
                    self.started = True
                if sender.lost_track:
                    await sender.settle_lost_track()
                await sender.wake.wait()
                sender.wake.clear()
                last = await sender.send_queued(last)
                if not sender.connected:
                    await self._arm_deadline()
            except asyncio.CancelledError:
                raise
            except Exception:
                # E.g. the database dropped our connection. The runner goes on (its
                # next step finds a lost lease, if that was it); so do we, shortly.
                logger.warning("message pump pass failed", exc_info=True, extra=self._extra())
                sender.lost_track = self.started  # what it took or asked may be left sending
                await asyncio.sleep(RETRY_AFTER_ERROR)
                sender.wake.set()

    async def _hold_start(self) -> None:
        """Wait (at most :data:`START_HOLD` s) until the pump is woken: a step that
        neither ended with a connection opening nor showed a code, or a queued
        message. The loop's first pass follows either way (the wake is left set): it
        arms the deadline of a message queued before this owner, which no ring will
        announce."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_HOLD):
                await self.sender.wake.wait()
        self.sender.wake.set()

    # -- deadlines -----------------------------------------------------------------------

    async def _arm_deadline(self) -> None:
        """While nothing is sent, expire queued messages at their deadline."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        due = await _next_deadline(self.session_id)
        if due is None or self.sender.closed:
            return
        delay = max(0.0, (due - timezone.now()).total_seconds())
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_later(delay, self._expire_now)

    def _expire_now(self) -> None:
        self._deadline_timer = None
        if not self.sender.closed:
            asyncio.get_running_loop().create_task(
                self._expire(), name=f"waconnect-expire-{self.session_id}"
            )

    async def _expire(self) -> None:
        try:
            await publish_expired(await _expire(timezone.now(), self.session_id))
        except Exception:
            logger.warning("could not expire overdue messages", exc_info=True, extra=self._extra())
        self.sender.wake.set()  # re-arm for the next deadline


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
