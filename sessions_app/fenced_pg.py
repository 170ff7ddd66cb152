"""A fenced write and the reads its push needs, in one round trip (PostgreSQL).

The runner's writes are on the way from WhatsApp to the browser (``connecting``,
every QR code). Written statement by statement, one was six round trips to the
server: ``BEGIN`` with the fenced ``UPDATE``, the event-log ``INSERT``, the
webhook endpoints' ``SELECT``, ``COMMIT``, then the snapshot's events ``SELECT``
(4.8–5.4 ms p50 on a 2-core machine, docs/benchmarks.md). Here the statements go
in psycopg's pipeline mode and are answered together: one round trip, then the
webhook events only when an endpoint listens, then ``COMMIT``.

Called by :func:`sessions_app.leases.fenced_write` on PostgreSQL, with its rules:
the ``UPDATE`` is the ORM's (compiled, not run by it: the ORM reads its row count
at once, which a pipeline gives only once synced), fenced by owner and epoch; the
event is inserted only if the fence still matches (the ``UPDATE`` just locked
that row, and an epoch only grows), and the webhooks' outbox is written in the
same transaction. The events are read after the ``INSERT``, in the transaction:
they include this write's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import F
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from sessions_app import snapshots
from sessions_app.models import SessionEvent, WaSession
from webhooks import outbox, session_events

if TYPE_CHECKING:  # sessions_app.leases calls this module
    from sessions_app.leases import EventRecord, Lease


def write(
    lease: Lease, fields: Mapping[str, Any], event: EventRecord | None, *, with_events: bool
) -> list[SessionEvent] | None:
    """Update observed ``fields`` if ``lease`` is current, log ``event`` with it, and
    read the snapshot's events (``with_events``; else ``[]``): None when the lease
    was lost (nothing written)."""
    update_sql, update_params = _update(lease, fields)
    with transaction.atomic():
        cursor = connection.cursor  # one each: every statement's answer is kept
        update = cursor()
        inserted = endpoints = events = None
        with connection.wrap_database_errors, connection.connection.pipeline():
            update.execute(update_sql, update_params)
            if event is not None:
                inserted = cursor()
                inserted.execute(*_insert_event(lease, event))
            if session_events.emits(fields, event.kind if event else None, _to(event)):
                endpoints = cursor()
                endpoints.execute(*outbox.session_endpoints_query(lease.session_id))
            if with_events:
                events = cursor()
                events.execute(*snapshots.latest_events_query(lease.session_id))
        if update.rowcount != 1:
            return None
        if endpoints is not None:
            session_events.fenced_write(
                lease.session_id,
                fields,
                event.kind if event else None,
                event.from_state if event else "",
                _to(event),
                event.message if event else "",
                f"supervisor:{lease.owner}",
                lease.epoch,
                candidates=outbox.endpoints_from_rows(endpoints.fetchall()),
            )
        return snapshots.events_from_rows(events.fetchall()) if events is not None else []


def _to(event: EventRecord | None) -> str:
    return event.to_state if event else ""


def _update(lease: Lease, fields: Mapping[str, Any]) -> tuple[str, Any]:
    """The fenced ``UPDATE`` of ``fields`` (and the row's version) as the ORM's
    ``QuerySet.update`` would run it."""
    rows = WaSession.objects.filter(
        pk=lease.session_id, lease_owner=lease.owner, lease_epoch=lease.epoch
    )
    query = rows.query.chain(UpdateQuery)
    query.add_update_values({**fields, "version": F("version") + 1})
    return query.get_compiler(connection.alias).as_sql()


def _insert_event(lease: Lease, event: EventRecord) -> tuple[str, list[Any]]:
    """The event-log line, inserted only while the fence matches."""
    quote = connection.ops.quote_name
    table, sessions = quote(SessionEvent._meta.db_table), quote(WaSession._meta.db_table)
    sql = (
        f"INSERT INTO {table} (session_id, at, kind, message, from_state, to_state, actor, "
        f"epoch) SELECT %s, %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM "
        f"{sessions} WHERE id = %s AND lease_owner = %s AND lease_epoch = %s)"
    )
    params = [
        lease.session_id,
        timezone.now(),
        event.kind,
        event.message[:500],
        event.from_state,
        event.to_state,
        f"supervisor:{lease.owner}",
        lease.epoch,
        lease.session_id,
        lease.owner,
        lease.epoch,
    ]
    return sql, params
