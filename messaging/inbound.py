"""The owner's store of incoming messages: each one once per (session, WhatsApp id).

whatsmeow redelivers messages after a reconnect (and a new owner's connection may
see again what the old one saw), so :func:`store` is ``INSERT ... SELECT ... WHERE
<lease> ON CONFLICT DO NOTHING RETURNING *``: one statement, fenced by the lease
like every owner's write (see :mod:`messaging.outbound`), that inserts the row
only if the unique constraint ``message_inbound_once`` has no row for it yet.

Runs in one transaction when someone listens (:func:`messaging.signals.changing`) and sends
:data:`messaging.signals.messages_changed` (``received``) inside it, once per
message stored: a redelivery sends nothing.
"""

from __future__ import annotations

import datetime as dt

from django.db import connection, models

from messaging import signals
from messaging.models import Message
from messaging.outbound import fence_params, fence_sql
from messaging.states import Direction, Status
from sessions_app.drivers.base import MessageReceived
from sessions_app.leases import Lease


def _row(lease: Lease, event: MessageReceived, now: dt.datetime) -> Message:
    """The unsaved row for ``event``; over-long strings cut to their column."""
    message = Message(
        session_id=lease.session_id,
        direction=Direction.IN,
        wa_id=event.message_id,
        chat=event.chat,
        sender=event.sender,
        sender_phone=event.sender_phone,
        from_me=event.from_me,
        push_name=event.push_name,
        kind=event.kind or "other",
        text=event.text,
        status=Status.RECEIVED,
        wa_timestamp=event.timestamp,
        created_at=now,
        status_changed_at=now,
    )
    for field in Message._meta.concrete_fields:
        if isinstance(field, models.CharField) and field.max_length:
            value = getattr(message, field.attname)
            if isinstance(value, str) and len(value) > field.max_length:
                setattr(message, field.attname, value[: field.max_length])
    return message


def store(lease: Lease, event: MessageReceived, now: dt.datetime) -> Message | None:
    """Store ``event`` unless the session has it already; the new row, or None (a
    redelivery, or the lease was lost: :func:`messaging.outbound.fence_holds`
    tells which)."""
    if not event.message_id:
        raise ValueError("an incoming message without WhatsApp's id cannot be stored once")
    message = _row(lease, event, now)
    fields = [f for f in Message._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = [f.get_db_prep_save(getattr(message, f.attname), connection) for f in fields]
    table = connection.ops.quote_name(Message._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT {', '.join(['%s'] * len(fields))} "
        f"WHERE {fence_sql()} ON CONFLICT DO NOTHING RETURNING *"
    )
    with signals.changing():
        rows = list(Message.objects.raw(sql, [*values, *fence_params(lease)]))
        if rows:
            signals.messages_changed.send(sender=Message, messages=rows, change=signals.RECEIVED)
    return rows[0] if rows else None
