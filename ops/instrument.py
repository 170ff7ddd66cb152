"""Counting what a driver reports, at the cut between the supervisor and WhatsApp.

:class:`InstrumentedDriver` wraps any :class:`~sessions_app.drivers.base.Driver`
and counts from the calls and events that pass through it: QR rounds and their
outcome, QR codes (stamped for the QR → push latency), connections that ended and
why, and reconnects with the cause of the end they follow. The supervisor sees
the same driver as before (everything else is delegated), so none of this sits in
its code.
"""

from __future__ import annotations

import time
from typing import Any

from ops import metrics
from sessions_app.drivers.base import (
    Banned,
    Connected,
    ConnectError,
    ConnectSpec,
    Disconnected,
    Driver,
    DriverEvent,
    EventSink,
    LoggedOut,
    PairSuccess,
    QrCode,
    QrTimeout,
    Replaced,
)


def cause_of(event: DriverEvent) -> str | None:
    """The ``cause`` label of an event that ends (or interrupts) a connection."""
    if isinstance(event, Disconnected):
        return "network" if event.will_retry else "disconnected"
    if isinstance(event, ConnectError):
        return "error"
    if isinstance(event, LoggedOut):
        return "logged_out"
    if isinstance(event, Replaced):
        return "replaced"
    if isinstance(event, Banned):
        return "banned"
    if isinstance(event, QrTimeout):
        return "qr_timeout"
    return None


class InstrumentedDriver:
    """A :class:`Driver` that counts what passes through it; everything else delegates."""

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self._rounds: set[int] = set()  # sessions in a QR round
        self._lost: dict[int, str] = {}  # session id → cause of its last connection's end

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- the Driver protocol ------------------------------------------------------------

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        session_id = spec.session_id
        self._end_round(session_id, "cancelled")
        if spec.pairing:
            metrics.qr_rounds_started.inc()
            self._rounds.add(session_id)
            self._lost.pop(session_id, None)  # a new link, not a reconnect
        else:
            cause = self._lost.pop(session_id, None)
            if cause in metrics.RECONNECT_CAUSES:
                metrics.reconnects.labels(cause).inc()

        def counted(event: DriverEvent) -> None:
            self._count(event)
            on_event(event)

        await self.inner.start(spec, counted)

    async def stop(self, session_id: int) -> None:
        self._end_round(session_id, "cancelled")
        await self.inner.stop(session_id)

    async def logout(self, session_id: int, jid: str) -> None:
        self._end_round(session_id, "cancelled")
        self._lost.pop(session_id, None)
        await self.inner.logout(session_id, jid)

    async def request_pairing_code(self, session_id: int, phone: str) -> None:
        await self.inner.request_pairing_code(session_id, phone)

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- counting -----------------------------------------------------------------------

    def _end_round(self, session_id: int, outcome: str) -> None:
        if session_id in self._rounds:
            self._rounds.discard(session_id)
            metrics.qr_rounds_ended.labels(outcome).inc()

    def _count(self, event: DriverEvent) -> None:
        session_id = event.session_id
        if isinstance(event, QrCode):
            metrics.qr_codes.inc()
            metrics.qr_arrived(session_id, time.perf_counter())
            return
        if isinstance(event, PairSuccess):
            self._end_round(session_id, "paired")
            return
        if isinstance(event, Connected):
            if self._lost.get(session_id) == "network":  # whatsmeow reconnected by itself
                del self._lost[session_id]
                metrics.reconnects.labels("network").inc()
            return
        cause = cause_of(event)
        if cause is None:
            return
        metrics.disconnects.labels(cause).inc()
        self._end_round(session_id, "timeout" if cause == "qr_timeout" else "failed")
        if cause in metrics.RECONNECT_CAUSES:
            self._lost[session_id] = cause
        else:
            self._lost.pop(session_id, None)


def instrument(driver: Driver) -> Driver:
    """``driver``, counted (idempotent)."""
    if isinstance(driver, InstrumentedDriver):
        return driver
    return InstrumentedDriver(driver)  # type: ignore[return-value]
