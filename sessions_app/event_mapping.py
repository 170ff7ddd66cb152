"""What a driver event means for the session row: a trigger, a reason, observed fields.

No I/O and no writes: it returns column values (and one SQL expression, see
:func:`round_ended`). The runner
(:class:`sessions_app.runner.SessionRunner`) checks the trigger against the
state machine, closes the connection when asked to, and writes the fields under
its lease.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from django.db.models import Case, F, Value, When

from sessions_app.drivers.base import (
    Banned,
    Connected,
    ConnectError,
    Disconnected,
    DriverEvent,
    KeepAliveRestored,
    KeepAliveTimeout,
    LoggedOut,
    PairingCode,
    PairSuccess,
    QrCode,
    QrTimeout,
    Replaced,
)
from sessions_app.leases import QR_CLEARED
from sessions_app.policy import Backoff
from sessions_app.states import Trigger


@dataclasses.dataclass(frozen=True)
class Mapped:
    """One driver event, seen from the row."""

    trigger: Trigger | None  # None: no state change, only ``fields`` (and ``why`` as info)
    why: str
    fields: dict[str, Any]
    close: bool = False  # close the connection before writing
    ends_round: bool = False  # the QR round under way (if any) is over


def epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def round_ended(served: int) -> dict[str, Any]:
    """Fields that end a QR round whose request was ``served``: the phone number it
    used (``pair_phone``) is cleared, unless a newer request, with its own number,
    is pending. The one intent column the owner writes: a request's payload,
    consumed with it (see docs/architecture.md)."""
    keep_newer = Case(When(pair_request__lte=served, then=Value("")), default=F("pair_phone"))
    return {"qr_round_started_at": None, "pair_phone": keep_newer}


def backoff_fields(
    retry_count: int, now: dt.datetime, message: str, backoff: Backoff
) -> dict[str, Any]:
    """The next retry after a failure: the delay grows with each failure in a row."""
    attempt = retry_count + 1
    return {
        "retry_count": attempt,
        "next_retry_at": now + dt.timedelta(seconds=backoff.delay(attempt)),
        "last_error": message[:1000],
        **QR_CLEARED,
    }


def map_event(
    event: DriverEvent,
    *,
    retry_count: int,
    now: dt.datetime,
    backoff: Backoff,
    reconnect_watch: float,
) -> Mapped:
    """Map ``event``; ``retry_count`` is the row's (failures in a row so far)."""
    if isinstance(event, QrCode):
        expires = now + dt.timedelta(seconds=event.valid_for)
        fields = {"qr_code": event.code, "qr_issued_at": now, "qr_expires_at": expires}
        return Mapped(Trigger.QR, "QR code issued; waiting for a scan", fields)
    if isinstance(event, PairingCode):
        return Mapped(None, "pairing code issued", {"pairing_code": event.code})
    if isinstance(event, PairSuccess):
        fields = {"jid": event.jid, "push_name": event.push_name, **QR_CLEARED}
        return Mapped(Trigger.PAIR_SUCCESS, "the phone scanned the code", fields, ends_round=True)
    if isinstance(event, Connected):
        fields = {"retry_count": 0, "next_retry_at": None, "last_error": "", **QR_CLEARED}
        return Mapped(Trigger.CONNECTED, "connected to WhatsApp", fields)
    if isinstance(event, KeepAliveTimeout):
        return Mapped(Trigger.KEEPALIVE_TIMEOUT, "keep-alives failing", {})
    if isinstance(event, KeepAliveRestored):
        return Mapped(Trigger.KEEPALIVE_RESTORED, "keep-alives restored", {})
    if isinstance(event, Disconnected):
        why = f"disconnected: {event.reason or 'no reason given'}"
        if event.will_retry:
            # Watch, don't reconnect on top: restart only if it stays down.
            watch = now + dt.timedelta(seconds=reconnect_watch)
            fields = {"next_retry_at": watch, **QR_CLEARED}
            return Mapped(Trigger.DISCONNECTED, why + " (the driver reconnects)", fields)
        fields = backoff_fields(retry_count, now, why, backoff)
        return Mapped(Trigger.DISCONNECTED, why, fields, close=True)
    if isinstance(event, LoggedOut):
        fields = {"jid": "", "push_name": "", **QR_CLEARED}
        why = f"logged out: {event.reason or 'by the phone'}"
        return Mapped(Trigger.LOGGED_OUT, why, fields, close=True, ends_round=True)
    if isinstance(event, Replaced):
        why = "another connection took this device over"
        return Mapped(Trigger.REPLACED, why, dict(QR_CLEARED), close=True, ends_round=True)
    if isinstance(event, Banned):
        fields = {"banned_until": event.until, **QR_CLEARED}
        why = f"temporarily banned: {event.reason or 'no reason given'}"
        return Mapped(Trigger.BANNED, why, fields, close=True, ends_round=True)
    if isinstance(event, QrTimeout):
        why = "every QR code expired unscanned"
        return Mapped(Trigger.QR_TIMEOUT, why, dict(QR_CLEARED), close=True, ends_round=True)
    if isinstance(event, ConnectError):
        fields = backoff_fields(retry_count, now, event.message, backoff)
        if not event.retryable:  # retrying soon cannot help: wait the longest
            fields["next_retry_at"] = now + dt.timedelta(seconds=backoff.cap)
        return Mapped(Trigger.ERROR, f"error: {event.message}", fields, close=True)
    raise TypeError(f"unknown driver event {type(event).__name__}")
