"""The owner's hot path for many sessions at once: record WhatsApp's acks of the
messages just sent and take each session's next message, in a few statements for
every session of the batch (the way lease renewal extends all leases in one).

:func:`sent_and_take_many` is :func:`messaging.outbound.sent_and_take` for a
list of sessions (each at most once), in one transaction:

1. on PostgreSQL, the batch's session rows (two or more) are locked ``FOR SHARE`` in id order
   (``SELECT … ORDER BY id FOR SHARE``): the fence of every statement below takes
   the same locks, and taking them in one order, as the lease renewal does
   (:func:`sessions_app.leases.renew`), keeps a batch and a renewal from
   deadlocking;
2. one ``UPDATE … FROM v`` for every ack (``sending``/``unknown`` → ``sent``);
3. one ``UPDATE … FROM v`` for every take: each session's oldest queued message
   whose deadline has not passed → ``sending`` under its lease's epoch, unless the
   session has a message ``sending`` already (one at a time);
4. only for sessions that got nothing: one ``UPDATE`` marking ``unknown`` what an
   older epoch left ``sending`` (:func:`messaging.outbound.mark_stale_sending`),
   and the take once more for the sessions where it found some.

``v`` is a ``WITH v(…) AS (VALUES …)`` of the batch's rows (session, owner,
epoch, and for an ack its ref, WhatsApp's id and time); every statement is
fenced per row, ``EXISTS (SELECT 1 FROM session s WHERE s.id = v.session AND
s.lease_owner = v.owner AND s.lease_epoch = v.epoch [FOR SHARE])``, so a lost
lease writes nothing for its session and does not disturb the others.
``messages_changed`` is sent once per statement with all its rows, inside the
transaction (the webhooks outbox writes there).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction

from messaging import signals
from messaging.models import Message
from messaging.outbound import OWNER_LOST, Taken, _dt, _lit, _messages, _q, fence_sql
from messaging.states import Direction, Status, Trigger, sources
from sessions_app.leases import Lease
from sessions_app.models import WaSession

#: ``(ref, wa_id, wa_timestamp)`` of WhatsApp's ack of a message.
Ack = tuple[str, str, dt.datetime]


@dataclasses.dataclass(frozen=True)
class Step:
    """One session's part of a batch: its lease, and the ack to record (or None)."""

    lease: Lease
    sent: Ack | None = None


def _columns() -> list[str]:
    return [f.column for f in Message._meta.concrete_fields]


def _rows(sql: str, params: Sequence[Any]) -> list[Message]:
    """Run an ``UPDATE … RETURNING <every column>``; the rows as messages.

    One cursor and :meth:`Model.from_db` (with the backend's converters: SQLite
    returns datetimes as text) instead of a ``RawQuerySet`` per statement, whose
    per-query set-up was a third of the pumps' CPU in a profile.
    """
    fields = Message._meta.concrete_fields
    table = Message._meta.db_table
    converters = [
        (i, [*connection.ops.get_db_converters(col), *f.get_db_converters(connection)], col)
        for i, (f, col) in enumerate((f, f.get_col(table)) for f in fields)
    ]
    converters = [(i, convs, col) for i, convs, col in converters if convs]
    names = [f.attname for f in fields]
    out = []
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for raw in cursor.fetchall():
            values = list(raw)
            for i, convs, col in converters:
                for convert in convs:
                    values[i] = convert(values[i], col, connection)
            out.append(Message.from_db(connection.alias, names, values))
    return out


def _values(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """``WITH v(names) AS (VALUES (...), ...)`` and its parameters."""
    one = "(" + ", ".join(["%s"] * len(names)) + ")"
    params = [value for row in rows for value in row]
    values = ", ".join([one] * len(rows))
    return f"WITH v({', '.join(names)}) AS (VALUES {values})", params


def _returning() -> str:
    table = _messages()
    return "RETURNING " + ", ".join(f"{table}.{_q(c)}" for c in _columns())


def _set(assignments: dict[str, str]) -> str:
    return ", ".join(f"{_q(column)} = {value}" for column, value in assignments.items())


def _update(
    trigger: Trigger,
    head: tuple[str, list[Any]],
    assignments: dict[str, str],
    set_params: list[Any],
    where: str,
    where_params: list[Any],
    source: str = "v",
) -> list[Message]:
    """``UPDATE`` outbound rows in a source status of ``trigger`` joined to ``v``
    (``head``), fenced per row of ``v``; signalled."""
    from_ = _lit(*(str(s) for s in sources(trigger)))
    fence = fence_sql("v.v_session", "v.v_owner", "v.v_epoch")  # per row of v
    sql = (
        f"{head[0]} UPDATE {_messages()} SET {_set(assignments)}, version = version + 1 "
        f"FROM {source} "
        f"WHERE session_id = v.v_session AND direction = {_lit(Direction.OUT)} "
        f"AND status IN ({from_}) AND ({where}) AND {fence} {_returning()}"
    )
    rows = _rows(sql, [*head[1], *set_params, *where_params])
    rows.sort(key=lambda m: m.session_id)  # emitters lock per-session rows in one order
    if rows:
        signals.messages_changed.send(sender=Message, messages=rows, change=signals.STATUS)
    return rows


def _lock_sessions(leases: Sequence[Lease]) -> None:
    if connection.vendor != "postgresql" or len(leases) < 2:
        return  # SQLite: the transaction holds the one write lock; one row: no order
    sessions = _q(WaSession._meta.db_table)
    ids = sorted(lease.session_id for lease in leases)
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {sessions} WHERE id IN ({marks}) ORDER BY id FOR SHARE", ids
        )


def mark_sent_many(steps: Sequence[Step], now: dt.datetime) -> list[Message]:
    """Every step's ack: ``sending`` (or ``unknown``: a late ack proves it went
    out) → ``sent`` with WhatsApp's id and time."""
    acked = [s for s in steps if s.sent is not None]
    if not acked:
        return []
    head = _values(
        ["v_session", "v_owner", "v_epoch", "v_ref", "v_wa_id", "v_wa_ts"],
        [
            [s.lease.session_id, s.lease.owner, s.lease.epoch, s.sent[0], s.sent[1][:128]]
            + [_dt(s.sent[2])]
            for s in acked
            if s.sent is not None
        ],
    )
    assignments = {
        "status": _lit(Status.SENT),
        "wa_id": "v.v_wa_id",
        "wa_timestamp": "v.v_wa_ts",
        "sent_at": "%s",
        "failure_reason": "''",
        "failure_detail": "''",
        "status_changed_at": "%s",
    }
    return _update(Trigger.ACK, head, assignments, [_dt(now), _dt(now)], "ref = v.v_ref", [])


def _lease_values(leases: Sequence[Lease]) -> tuple[str, list[Any]]:
    return _values(
        ["v_session", "v_owner", "v_epoch"],
        [[lease.session_id, lease.owner, lease.epoch] for lease in leases],
    )


def take_many(leases: Sequence[Lease], now: dt.datetime) -> list[Message]:
    """Each session's oldest queued message whose deadline has not passed →
    ``sending`` under its lease's epoch, before anyone asks the driver; nothing
    for a session that has a message ``sending`` (one at a time)."""
    if not leases:
        return []
    table = _messages()
    queued, sending = _lit(Status.QUEUED), _lit(Status.SENDING)
    head_sql, head_params = _lease_values(leases)
    # The pick is a CTE of its own: one index probe per session, then a join on id.
    head_sql += (
        f", p(v_session, v_owner, v_epoch, v_id) AS (SELECT v.v_session, v.v_owner, "
        f"v.v_epoch, (SELECT m.id FROM {table} m WHERE m.session_id = v.v_session "
        f"AND m.status = {queued} AND (m.deadline IS NULL OR m.deadline > %s) "
        f"ORDER BY m.id LIMIT 1) FROM v) "
    )
    assignments = {
        "status": sending,
        "send_epoch": "v.v_epoch",
        "sending_at": "%s",
        "failure_reason": "''",
        "failure_detail": "''",
        "status_changed_at": "%s",
    }
    where = (
        f"id = v.v_id AND NOT EXISTS (SELECT 1 FROM {table} b "
        f"WHERE b.session_id = v.v_session AND b.status = {sending})"
    )
    return _update(
        Trigger.TAKE,
        (head_sql, [*head_params, _dt(now)]),
        assignments,
        [_dt(now), _dt(now)],
        where,
        [],
        source="p AS v",
    )


def mark_stale_many(leases: Sequence[Lease], now: dt.datetime) -> list[Message]:
    """:func:`messaging.outbound.mark_stale_sending` for every lease: ``sending``
    under an older epoch → ``unknown``, never sent again."""
    if not leases:
        return []
    assignments = {
        "status": _lit(Status.UNKNOWN),
        "failure_reason": "%s",
        "failure_detail": "%s",
        "status_changed_at": "%s",
    }
    return _update(
        Trigger.UNKNOWN,
        _lease_values(leases),
        assignments,
        [OWNER_LOST, "its owner stopped while sending it; it may have gone out", _dt(now)],
        "send_epoch IS NULL OR send_epoch < v.v_epoch",
        [],
    )


def sent_and_take_many(
    steps: Sequence[Step], now: dt.datetime
) -> list[tuple[Message | None, Taken]]:
    """Record every step's ack and take every step's session's next message, in one
    transaction (see the module doc); for each step, in order: its ``sent`` row
    (None: no ack, or nothing changed) and what the take did."""
    if len({s.lease.session_id for s in steps}) != len(steps):
        raise ValueError("a session may appear once in a batch")
    leases = [s.lease for s in steps]
    with transaction.atomic():
        _lock_sessions(leases)
        sent = {m.ref: m for m in mark_sent_many(steps, now)}
        taken = {m.session_id: m for m in take_many(leases, now)}
        idle = [lease for lease in leases if lease.session_id not in taken]
        stale: dict[int, list[Message]] = {}
        for row in mark_stale_many(idle, now):
            stale.setdefault(row.session_id, []).append(row)
        retry = [lease for lease in idle if lease.session_id in stale]
        taken.update((m.session_id, m) for m in take_many(retry, now))
    return [
        (
            sent.get(s.sent[0]) if s.sent is not None else None,
            Taken(taken.get(s.lease.session_id), stale.get(s.lease.session_id, [])),
        )
        for s in steps
    ]
