"""Every SQL statement the owner runs about outbound messages, in the style of
:mod:`sessions_app.leases`: take the next one, record what happened to it.

Fencing: every write but :func:`expire_overdue` carries the session's lease
(owner and epoch) in the same statement, as ``EXISTS (SELECT 1 FROM session WHERE
id = s AND lease_owner = me AND lease_epoch = e)``; on PostgreSQL that subquery
takes the session row ``FOR SHARE``, so a concurrent claim (which updates the row)
either waits for this statement's transaction or makes it match nothing. A
statement that matches nothing changed nothing: the lease was lost, or the message
is no longer in a status the change applies to (a receipt that would go
backwards, a late answer for a message a successor marked ``unknown``).

The allowed changes are :data:`messaging.states.TRANSITIONS`: each statement's
``status IN (...)`` is :func:`messaging.states.sources` of its trigger.

Each function is one statement (two for a take that finds stale ``sending``
rows), run in one transaction whenever someone listens to
:data:`messaging.signals.messages_changed` or the caller has opened one
(:func:`messaging.signals.changing`), sends that signal inside it, and returns the rows it
changed as they now are (for live pushes). Synchronous: the supervisor calls them
in its database thread. Times are aware datetimes from the caller (``now``), so
a test can pass its own clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction
from django.db.models import Q

from messaging import signals
from messaging.models import Message
from messaging.states import Direction, Status, Trigger, failure_trigger, receipt_trigger, sources
from sessions_app.leases import Lease
from sessions_app.models import WaSession

#: ``failure_reason`` of a message found ``sending`` under an older lease epoch.
OWNER_LOST = "owner_lost"
#: ``failure_reason`` of a message whose driver never answered, or whose connection
#: closed while it was under way.
NO_ANSWER = "timeout"
#: ``failure_reason`` of a message whose outcome its owner could not record (the
#: database failed meanwhile): the driver was asked, so it may have gone out.
LOST_TRACK = "error"
#: What a message ``sending`` becomes when it never reached WhatsApp: queued again,
#: as if never taken.
REQUEUED: dict[str, Any] = {
    "status": str(Status.QUEUED),
    "send_epoch": None,
    "sending_at": None,
    "failure_reason": "",
    "failure_detail": "",
}
#: ``failure_reason`` of an expired message.
DEADLINE = "deadline"


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _messages() -> str:
    return _q(Message._meta.db_table)


def fence_sql(session: str = "%s", owner: str = "%s", epoch: str = "%s") -> str:
    """The lease check, for a statement's WHERE; params: :func:`fence_params` (or, for
    a batch, the SQL expressions naming each row's session, owner and epoch)."""
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    sessions = _q(WaSession._meta.db_table)
    return (
        f"EXISTS (SELECT 1 FROM {sessions} s WHERE s.id = {session} "
        f"AND s.lease_owner = {owner} AND s.lease_epoch = {epoch}{lock})"
    )


def fence_params(lease: Lease) -> list[Any]:
    return [lease.session_id, lease.owner, lease.epoch]


def fence_holds(lease: Lease) -> bool:
    """Whether ``lease`` is still the session's (to tell "lost" from "nothing to do")."""
    return WaSession.objects.filter(
        pk=lease.session_id, lease_owner=lease.owner, lease_epoch=lease.epoch
    ).exists()


def _dt(value: dt.datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _in(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _lit(*values: str) -> str:
    """Constant status/direction names as SQL literals (so the planner can match the
    partial indexes); only ever our own enum values."""
    for value in values:
        if not value.isidentifier():
            raise ValueError(value)
    return ", ".join(f"'{value}'" for value in values)


def _update(
    lease: Lease,
    trigger: Trigger,
    assignments: dict[str, Any],
    where: str,
    params: Sequence[Any],
    now: dt.datetime,
) -> list[Message]:
    """``UPDATE`` outbound rows of the lease's session that are in a source status of
    ``trigger`` and match ``where``, fenced; set ``assignments`` (values, or
    ``("sql", params)`` tuples for expressions) and ``status_changed_at``."""
    set_parts, set_params = [], []
    for column, value in {**assignments, "status_changed_at": _dt(now)}.items():
        if isinstance(value, tuple):
            set_parts.append(f"{_q(column)} = {value[0]}")
            set_params.extend(value[1])
        else:
            set_parts.append(f"{_q(column)} = %s")
            set_params.append(value)
    from_ = _lit(*(str(s) for s in sources(trigger)))
    sql = (
        f"UPDATE {_messages()} SET {', '.join(set_parts)}, version = version + 1 "
        f"WHERE session_id = %s AND direction = {_lit(Direction.OUT)} AND status IN ({from_}) "
        f"AND ({where}) AND {fence_sql()} RETURNING *"
    )
    all_params = [*set_params, lease.session_id, *params, *fence_params(lease)]
    with signals.changing():
        rows = list(Message.objects.raw(sql, all_params))
        _changed(rows, signals.STATUS)
    return rows


def _changed(rows: list[Message], change: str) -> None:
    if rows:
        signals.messages_changed.send(sender=Message, messages=rows, change=change)


# -- taking the next message ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Taken:
    """What :func:`take_next` did: the message to send now (or None), and messages it
    found ``sending`` under an older epoch and marked ``unknown``."""

    message: Message | None
    stale: list[Message]


def mark_stale_sending(lease: Lease, now: dt.datetime) -> list[Message]:
    """Mark ``unknown`` every message of the session left ``sending`` under an older
    epoch (its owner died or lost the lease mid-send): it may have gone out, and it
    is never sent again (neonize cannot choose the message id, so WhatsApp could
    not drop a resend as a duplicate)."""
    return _update(
        lease,
        Trigger.UNKNOWN,
        {
            "status": str(Status.UNKNOWN),
            "failure_reason": OWNER_LOST,
            "failure_detail": "its owner stopped while sending it; it may have gone out",
        },
        "send_epoch IS NULL OR send_epoch < %s",
        [lease.epoch],
        now,
    )


def take_next(lease: Lease, now: dt.datetime) -> Taken:
    """Take the session's oldest queued message whose deadline has not passed and
    mark it ``sending`` under the lease's epoch, before anyone asks the driver.

    One at a time: nothing is taken while another message of the session is
    ``sending``. When nothing was taken, messages left ``sending`` by an older
    epoch are marked ``unknown`` (they would block the queue) and the take is
    tried once more: the pump marks them when it starts, and on PostgreSQL no
    older owner can write ``sending`` after our claim (the fence locks the
    session row), so this is a second safety net, off the hot path. The
    statements are :mod:`messaging.outbound_batch`'s, for one session.
    """
    return sent_and_take(lease, None, now)[1]


# -- what the driver reported ----------------------------------------------------------


def mark_sent(
    lease: Lease, ref: str, wa_id: str, wa_timestamp: dt.datetime, now: dt.datetime
) -> Message | None:
    """``MessageSent``: WhatsApp acknowledged it (from ``sending``, or from
    ``unknown``: a late acknowledgement proves it went out)."""
    rows = _update(
        lease,
        Trigger.ACK,
        {
            "status": str(Status.SENT),
            "wa_id": wa_id[:128],
            "wa_timestamp": _dt(wa_timestamp),
            "sent_at": _dt(now),
            "failure_reason": "",
            "failure_detail": "",
        },
        "ref = %s",
        [ref],
        now,
    )
    return rows[0] if rows else None


def sent_and_take(
    lease: Lease, sent: tuple[str, str, dt.datetime] | None, now: dt.datetime
) -> tuple[Message | None, Taken]:
    """:func:`mark_sent` for ``sent`` (``(ref, wa_id, wa_timestamp)``, or None) and
    :func:`take_next`, in one transaction: the owner's hot path, for one session
    (:func:`messaging.outbound_batch.sent_and_take_many` does it for many)."""
    from messaging import outbound_batch

    return outbound_batch.sent_and_take_many([outbound_batch.Step(lease, sent)], now)[0]


def mark_failed(
    lease: Lease, ref: str, outcome: str, reason: str, detail: str, now: dt.datetime
) -> Message | None:
    """``SendFailed`` for a message ``sending``: refused → ``failed`` (not sent);
    refused with ``not_connected`` → ``queued`` again (it never reached WhatsApp);
    unknown → ``unknown`` (it may have gone out; never resent)."""
    trigger = failure_trigger(outcome, reason)
    assignments: dict[str, Any]
    if trigger is Trigger.REQUEUE:
        assignments = dict(REQUEUED)
    else:
        target = Status.FAILED if trigger is Trigger.REFUSED else Status.UNKNOWN
        assignments = {
            "status": str(target),
            "failure_reason": reason[:32],
            "failure_detail": detail[:500],
        }
    rows = _update(lease, trigger, assignments, "ref = %s", [ref], now)
    return rows[0] if rows else None


def mark_unknown(
    lease: Lease, ref: str, reason: str, detail: str, now: dt.datetime
) -> Message | None:
    """A message ``sending`` whose outcome the owner can no longer learn (the driver
    did not answer in time, or its connection closed first): ``unknown``."""
    rows = _mark_unknown_many(lease, [ref], reason, detail, now)
    return rows[0] if rows else None


def _mark_unknown_many(
    lease: Lease, refs: Sequence[str], reason: str, detail: str, now: dt.datetime
) -> list[Message]:
    return _update(
        lease,
        Trigger.UNKNOWN,
        {
            "status": str(Status.UNKNOWN),
            "failure_reason": reason[:32],
            "failure_detail": detail[:500],
        },
        f"ref IN ({_in(refs)})",
        list(refs),
        now,
    )


def settle_lost_track(
    lease: Lease,
    acked: Sequence[tuple[str, str, dt.datetime]],
    asked: Sequence[str],
    now: dt.datetime,
) -> list[Message]:
    """Settle what the lease's own pump left ``sending`` when a write about it failed
    (a database error after the take committed, or on the outcome's write), in one
    transaction: ``acked`` (``(ref, wa_id, wa_timestamp)``: WhatsApp's ack came) →
    ``sent``; ``asked`` (the driver was asked, no answer recorded) → ``unknown``
    (reason ``error``, never resent); any other message ``sending`` under this
    epoch was never given to the driver → ``queued`` again. The caller (the pump,
    between passes) has no send under way."""
    known = [ref for ref, _, _ in acked] + list(asked)
    with transaction.atomic():
        rows = [
            row
            for ref, wa_id, wa_timestamp in acked
            if (row := mark_sent(lease, ref, wa_id, wa_timestamp, now)) is not None
        ]
        if asked:
            rows += _mark_unknown_many(
                lease,
                asked,
                LOST_TRACK,
                "its outcome could not be recorded (a database error); it may have gone out",
                now,
            )
        not_known = f"AND ref NOT IN ({_in(known)})" if known else ""
        rows += _update(
            lease,
            Trigger.REQUEUE,
            dict(REQUEUED),
            f"send_epoch = %s {not_known}",
            [lease.epoch, *known],
            now,
        )
    return rows


def apply_receipt(
    lease: Lease,
    wa_ids: Sequence[str],
    receipt_status: str,
    timestamp: dt.datetime,
    now: dt.datetime,
) -> list[Message]:
    """A ``Receipt``: move the outbound messages it names forward, never back.

    Messages are matched by WhatsApp's id; an ``unknown`` one (which has none) also
    by its ``ref``, since a driver that can choose WhatsApp's id uses the ref: such
    a receipt proves it went out. ``delivered`` applies to ``sent`` (and
    ``unknown``); ``read``/``played`` to ``sent``, ``delivered`` (and ``unknown``),
    also filling ``delivered_at`` when no delivered receipt came first. Receipts
    for anything else (inbound, our own read receipts, a ``read`` message seeing
    ``delivered``) change nothing.
    """
    trigger = receipt_trigger(receipt_status)
    ids = [i for i in dict.fromkeys(wa_ids) if i]
    if trigger is None or not ids:
        return []
    assignments: dict[str, Any] = {
        "status": str(Status(trigger.value)),
        "wa_id": ("CASE WHEN wa_id = '' THEN ref ELSE wa_id END", []),
        "failure_reason": "",  # an unknown one is known now
        "failure_detail": "",
    }
    if trigger is Trigger.READ:
        assignments["read_at"] = _dt(timestamp)
    assignments["delivered_at"] = ("COALESCE(delivered_at, %s)", [_dt(timestamp)])
    unknown = _lit(Status.UNKNOWN)
    where = f"wa_id IN ({_in(ids)}) OR (wa_id = '' AND status = {unknown} AND ref IN ({_in(ids)}))"
    return _update(lease, trigger, assignments, where, [*ids, *ids], now)


# -- deadlines -------------------------------------------------------------------------


def expire_overdue(
    now: dt.datetime, session_id: int | None = None, limit: int = 500
) -> list[Message]:
    """Mark ``expired`` up to ``limit`` queued messages past their deadline (of one
    session, or of all), oldest deadline first.

    The one write about messages that is not fenced: a queued message past its
    deadline expires whoever notices, the owner or any supervisor's reconcile (a
    session nobody owns, or that never comes back, must expire too). It is a
    conditional ``UPDATE`` from ``queued``, and the owner takes only messages
    whose deadline has not passed, so the two never both win.
    """
    table = _messages()
    only = " AND m.session_id = %s" if session_id is not None else ""
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    queued = _lit(Status.QUEUED)
    sql = (
        f"UPDATE {table} SET status = {_lit(Status.EXPIRED)}, failure_reason = %s, "
        f"failure_detail = %s, status_changed_at = %s, version = version + 1 "
        f"WHERE id IN (SELECT m.id FROM {table} m WHERE m.status = {queued} "
        f"AND m.deadline <= %s{only} ORDER BY m.deadline LIMIT %s{lock}) "
        f"AND status = {queued} RETURNING *"
    )
    params: list[Any] = [
        DEADLINE,
        "not sent before its deadline",
        _dt(now),
        _dt(now),
        *([session_id] if session_id is not None else []),
        int(limit),
    ]
    with signals.changing():
        rows = list(Message.objects.raw(sql, params))
        _changed(rows, signals.STATUS)
    return rows


# -- reads for the owner -------------------------------------------------------------


def next_deadline(session_id: int) -> dt.datetime | None:
    """The earliest deadline among the session's queued messages (None: none)."""
    return (
        Message.objects.filter(session_id=session_id, status=Status.QUEUED, deadline__isnull=False)
        .order_by("deadline")
        .values_list("deadline", flat=True)
        .first()
    )


def last_send_at(session_id: int) -> dt.datetime | None:
    """When the session's last send started (pacing carries over a take-over)."""
    return (
        Message.objects.filter(
            session_id=session_id, direction=Direction.OUT, sending_at__isnull=False
        )
        .order_by("-sending_at")
        .values_list("sending_at", flat=True)
        .first()
    )


def sessions_with_queued(owner: str, now: dt.datetime) -> set[int]:
    """The sessions ``owner`` holds that have a message it could take now (the
    periodic pass wakes their pumps: a ring may have been lost)."""
    return set(
        Message.objects.filter(
            Q(deadline__isnull=True) | Q(deadline__gt=now),
            status=Status.QUEUED,
            session__lease_owner=owner,
        )
        .values_list("session_id", flat=True)
        .distinct()
    )


def has_queued(session_id: int, now: dt.datetime) -> bool:
    """Whether the session has a message the owner could take now."""
    return Message.objects.filter(
        Q(deadline__isnull=True) | Q(deadline__gt=now), session_id=session_id, status=Status.QUEUED
    ).exists()
