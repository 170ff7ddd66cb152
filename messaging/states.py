"""The message state machine, pacing and deadlines: pure rules, no Django, no I/O.

Outbound statuses and every allowed change (anything else is refused)::

    queued ──take──▶ sending ──ack──▶ sent ──receipt──▶ delivered ──receipt──▶ read
       │               │  │  │                 └──────────receipt (read)──────────▲
       │ deadline      │  │  └─refused(not_connected)─▶ queued   (was never sent)
       ▼               │  └─refused─▶ failed                       (terminal)
    expired (terminal) └─unknown / older epoch─▶ unknown ──late ack/receipt──▶ sent, delivered, read

- ``sending`` is written (with the lease epoch) *before* the driver is asked, so a
  crash leaves evidence: a later owner that finds a message ``sending`` under an
  older epoch marks it ``unknown`` and never sends it again. neonize 0.5.2 cannot
  send with a message id of our choosing, so WhatsApp could not drop a resend as a
  duplicate: a resend of a message that did go out would reach the person twice.
  At most once is the rule for messages a person reads.
- ``unknown`` means "asked, and no answer": it may or may not have gone out. It is
  terminal for *us* (never resent), but evidence may still move it forward: a late
  acknowledgement (``sent``) or a receipt (``delivered``, ``read``) proves it went
  out. ``failed`` (WhatsApp or the driver refused it: it was not sent) and
  ``expired`` (never sent before its deadline) are terminal: nothing moves them.
- Receipts only move forward (``sent < delivered < read``); a receipt that would
  move backwards (``read`` then ``delivered``, they may arrive out of order) or
  sideways is ignored, not an error. ``played`` (a voice note) counts as ``read``.
- ``sending → queued`` only when the driver refused with ``not_connected``: it
  never reached WhatsApp (the connection dropped between our check and the send),
  so it waits for the next connection like any queued message.

Inbound messages are ``received`` and never change.

Pacing: the owner starts a session's sends at least ``interval`` seconds apart
(``WACONNECT_SEND_INTERVAL``); deadlines: :func:`deadline_for`.
"""

from __future__ import annotations

import datetime as dt
import enum


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class Status(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    RECEIVED = "received"


class Trigger(enum.StrEnum):
    TAKE = "take"  # the owner takes it to send (queued → sending)
    DEADLINE = "deadline"  # not taken before its deadline
    ACK = "ack"  # MessageSent: WhatsApp acknowledged it
    REFUSED = "refused"  # SendFailed(refused): not sent
    REQUEUE = "requeue"  # SendFailed(refused, not_connected): not sent, try again later
    UNKNOWN = "unknown"  # SendFailed(unknown), or found sending under an older epoch
    DELIVERED = "delivered"  # a delivered receipt
    READ = "read"  # a read (or played) receipt


S, T = Status, Trigger

#: Every allowed (status, trigger) → new status. Nothing else is allowed.
TRANSITIONS: dict[tuple[Status, Trigger], Status] = {
    (S.QUEUED, T.TAKE): S.SENDING,
    (S.QUEUED, T.DEADLINE): S.EXPIRED,
    (S.SENDING, T.ACK): S.SENT,
    (S.SENDING, T.REFUSED): S.FAILED,
    (S.SENDING, T.REQUEUE): S.QUEUED,
    (S.SENDING, T.UNKNOWN): S.UNKNOWN,
    (S.SENT, T.DELIVERED): S.DELIVERED,
    (S.SENT, T.READ): S.READ,
    (S.DELIVERED, T.READ): S.READ,
    (S.UNKNOWN, T.ACK): S.SENT,
    (S.UNKNOWN, T.DELIVERED): S.DELIVERED,
    (S.UNKNOWN, T.READ): S.READ,
}

#: Outbound statuses nothing we do changes any more (only evidence moves ``unknown``).
FINAL: frozenset[Status] = frozenset({S.READ, S.FAILED, S.EXPIRED, S.UNKNOWN})
#: Outbound statuses of a message on its way out: waiting for its turn (``queued``),
#: or asked for and not answered yet (``sending``). The outbound backlog (the web
#: tier's gauges, the partial index ``message_out_unfinished``) is these.
UNFINISHED: tuple[Status, ...] = (S.QUEUED, S.SENDING)
#: Outbound statuses that say the message went out.
WENT_OUT: frozenset[Status] = frozenset({S.SENT, S.DELIVERED, S.READ})
#: Outbound statuses, in order of progress along the happy path.
OUTBOUND: tuple[Status, ...] = (
    S.QUEUED,
    S.SENDING,
    S.SENT,
    S.DELIVERED,
    S.READ,
    S.FAILED,
    S.EXPIRED,
    S.UNKNOWN,
)

#: Receipt statuses (``Receipt.status``) → the trigger they are.
RECEIPT_TRIGGERS: dict[str, Trigger] = {
    "delivered": T.DELIVERED,
    "read": T.READ,
    "played": T.READ,
}


class TransitionRefused(ValueError):
    """The change is not an edge of the state machine."""


def is_allowed(status: str, trigger: str) -> bool:
    try:
        return (Status(status), Trigger(trigger)) in TRANSITIONS
    except ValueError:
        return False


def transition(status: str, trigger: str) -> Status:
    """The status after ``trigger``; raises :class:`TransitionRefused` if not allowed."""
    if not is_allowed(status, trigger):
        raise TransitionRefused(f"{trigger} is not allowed from {status}")
    return TRANSITIONS[(Status(status), Trigger(trigger))]


def sources(trigger: str) -> list[Status]:
    """Every status ``trigger`` may move a message from (the SQL's ``status IN``)."""
    return [s for (s, t) in TRANSITIONS if t == Trigger(trigger)]


def receipt_trigger(receipt_status: str) -> Trigger | None:
    """The trigger of a receipt (``delivered``/``read``/``played``), None for others."""
    return RECEIPT_TRIGGERS.get(receipt_status)


def failure_trigger(outcome: str, reason: str) -> Trigger:
    """The trigger of a ``SendFailed``: refused with ``not_connected`` is requeued
    (it never reached WhatsApp), refused otherwise failed, anything else unknown."""
    if outcome == "refused":
        return T.REQUEUE if reason == "not_connected" else T.REFUSED
    return T.UNKNOWN


def is_stale_sending(status: str, send_epoch: int | None, current_epoch: int) -> bool:
    """A message left ``sending`` by an earlier lease: its outcome is unknown.

    The owner under ``current_epoch`` marks it ``unknown`` and never resends it.
    """
    return status == S.SENDING and (send_epoch is None or send_epoch < current_epoch)


# -- pacing and deadlines ------------------------------------------------------------

#: Default seconds between the starts of two sends of one session: at most 60 a
#: minute per account. WhatsApp bans accounts that send in bursts; 0 turns pacing off.
DEFAULT_SEND_INTERVAL = 1.0
#: Default seconds a queued message waits for its session before it expires.
DEFAULT_MESSAGE_TTL = 3600.0


def pacing_delay(last_send: dt.datetime | None, now: dt.datetime, interval: float) -> float:
    """Seconds to wait before the next send of a session whose last send started at
    ``last_send`` (None: never), with sends at least ``interval`` seconds apart.

    A clock that went backwards never makes the wait longer than ``interval``.
    """
    if last_send is None or interval <= 0:
        return 0.0
    elapsed = (now - last_send).total_seconds()
    return min(interval, max(0.0, interval - elapsed))


def deadline_for(now: dt.datetime, ttl: float, requested: dt.datetime | None = None) -> dt.datetime:
    """The deadline of a new outbound message: ``requested`` (aware, in the future)
    or ``now + ttl`` seconds. Raises ValueError for a requested deadline that is
    naive or not after ``now``, or a ttl that is not positive."""
    if requested is not None:
        if requested.tzinfo is None:
            raise ValueError("the deadline needs a time zone")
        if requested <= now:
            raise ValueError("the deadline is in the past")
        return requested
    if ttl <= 0:
        raise ValueError("WACONNECT_MESSAGE_TTL must be positive")
    return now + dt.timedelta(seconds=ttl)


def is_past_deadline(deadline: dt.datetime | None, now: dt.datetime) -> bool:
    return deadline is not None and deadline <= now
