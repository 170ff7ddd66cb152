"""The transactional outbox: :func:`emit` writes an event and its deliveries in the
caller's transaction.

Call it inside the transaction of the write it reports — the runner's fenced write
(:func:`sessions_app.leases.write`), the incoming message's insert — so that the
event commits with the change or not at all::

    with transaction.atomic():
        updated = fenced_queryset.update(...)
        if updated:
            outbox.emit("session.status", session_id, {...})

The deliveries are rung once the transaction commits (``on_commit``): the
dispatchers of this process at once, the others through the channel layer; the
dispatchers' periodic pass catches a lost ring. Nothing is sent from here.

An event no enabled endpoint wants is not stored at all (no statement but the
endpoint query): with no webhooks configured, emitting costs one SELECT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from webhooks import ring
from webhooks.models import Delivery, Endpoint, Event, SessionSequence, wants

logger = logging.getLogger(__name__)

#: The lane and sequence of events that belong to no session (``webhook.test``).
NO_SESSION = 0


def next_sequence(session_id: int) -> int:
    """The next sequence number of ``session_id``'s events, in the caller's transaction.

    One statement that inserts the counter row or increments it, and returns the
    new value. The row stays locked until the caller commits, so concurrent
    emitters for one session take turns (on PostgreSQL the second waits for the
    first's commit and then reads its value); a rollback takes the number back.
    """
    table = connection.ops.quote_name(SessionSequence._meta.db_table)
    sql = (
        f"INSERT INTO {table} (session_id, last) VALUES (%s, 1) "
        f"ON CONFLICT (session_id) DO UPDATE SET last = {table}.last + 1 RETURNING last"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [session_id])
        return int(cursor.fetchone()[0])


def listening_sql() -> str:
    """``FROM … WHERE …`` of the enabled endpoints that listen to one session (any
    event type), aliased ``e``; its one parameter is the session's id.

    :func:`session_endpoints` selects from it, and a fenced write on PostgreSQL
    (:mod:`sessions_app.fenced_sql`) asks whether it has any row.
    """
    quote = connection.ops.quote_name
    link = Endpoint.sessions.through._meta
    endpoints, links = quote(Endpoint._meta.db_table), quote(link.db_table)
    endpoint_id = quote(link.get_field("endpoint").column)
    linked_session = quote(link.get_field("wasession").column)
    return (
        f"FROM {endpoints} e WHERE e.enabled AND (e.all_sessions "
        f"OR EXISTS (SELECT 1 FROM {links} l WHERE l.{endpoint_id} = e.id "
        f"AND l.{linked_session} = %s))"
    )


def session_endpoints(session_id: int) -> list[Endpoint]:
    """Enabled endpoints that listen to this session (any event type): one SELECT,
    each with its ``id`` and ``event_types`` only.

    Give the list to :func:`emit` as ``candidates`` when one write emits events of
    several types (a state change and its QR code): one lookup for all of them.
    Written as SQL: it runs inside every fenced write that changes a state or shows
    a QR code, and the ORM's compiling of the join took 14 times the query's own
    time (0.47 ms against 0.03 ms on a 2-core machine, docs/benchmarks.md).
    """
    sql = f"SELECT e.id, e.event_types {listening_sql()} ORDER BY e.id"
    return list(Endpoint.objects.raw(sql, [session_id]))


def matching_endpoints(
    event_type: str, session_id: int, candidates: Sequence[Endpoint] | None = None
) -> list[Endpoint]:
    """Enabled endpoints that want this type of event from this session (from
    ``candidates``, :func:`session_endpoints`' answer, when given)."""
    if candidates is None:
        candidates = session_endpoints(session_id)
    return [e for e in candidates if wants(e.event_types or [], event_type)]


def envelope(event: Event, data: dict[str, Any]) -> dict[str, Any]:
    """The body every receiver gets (Standard Webhooks' ``type``/``timestamp``/``data``,
    plus the event id, its session and its sequence number)."""
    session = None
    if event.session_id is not None:
        session = {"id": event.session_id, "name": event.session_name}
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "session": session,
        "sequence": event.seq,
        "data": data,
    }


def _busy_lanes(lane: int, endpoint_ids: list[int]) -> set[int]:
    """The endpoints whose lane for ``lane`` has an unfinished delivery: one index
    probe per endpoint (``webhooks_lane``), however long the lane's queue."""
    table = connection.ops.quote_name(Delivery._meta.db_table)
    probes = " UNION ALL ".join(
        f"SELECT %s FROM (SELECT 1 FROM {table} WHERE endpoint_id = %s AND session_id = %s "
        f"AND status IN ('pending', 'delivering') LIMIT 1) AS p{i}"
        for i in range(len(endpoint_ids))
    )
    params: list[int] = []
    for endpoint_id in endpoint_ids:
        params += [endpoint_id, endpoint_id, lane]
    with connection.cursor() as cursor:
        cursor.execute(probes, params)
        return {row[0] for row in cursor.fetchall()}


def _store(
    event_type: str,
    session_id: int | None,
    data: dict[str, Any],
    endpoints: list[Endpoint],
    session_name: str,
) -> Event:
    lane = NO_SESSION if session_id is None else session_id
    seq = next_sequence(lane)
    event = Event(
        type=event_type,
        session_id=session_id,
        session_name=session_name,
        seq=seq,
        created_at=timezone.now(),
    )
    event.payload = envelope(event, data)
    event.save(force_insert=True)
    # Only a lane's head is scheduled (next_attempt_at set); the rest wait unscheduled
    # until their turn (webhooks.delivery.finish promotes the next one). The lane's
    # counter row, locked above, orders this with that promotion.
    busy = _busy_lanes(lane, [e.pk for e in endpoints])
    Delivery.objects.bulk_create(
        Delivery(
            event=event,
            endpoint_id=endpoint.pk,
            session_id=lane,
            seq=seq,
            next_attempt_at=None if endpoint.pk in busy else event.created_at,
            created_at=event.created_at,
        )
        for endpoint in endpoints
    )
    if len(busy) < len(endpoints):
        transaction.on_commit(ring.ring_dispatchers)
    return event


def emit(
    event_type: str,
    session_id: int,
    data: dict[str, Any],
    *,
    session_name: str | None = None,
    candidates: Sequence[Endpoint] | None = None,
) -> Event | None:
    """Write an event of ``session_id`` and one delivery per endpoint that wants it,
    in the caller's transaction; None if no endpoint wants it (nothing written).

    ``data`` must be JSON-serialisable; it becomes the body's ``data``. Without
    ``session_name`` it is read from the session row (only when someone listens).
    ``candidates``: :func:`session_endpoints` read in the same transaction, for a
    caller emitting several events at once (otherwise looked up here).
    """
    endpoints = matching_endpoints(event_type, session_id, candidates)
    if not endpoints:
        return None
    if session_name is None:
        from sessions_app.models import WaSession

        session_name = (
            WaSession.objects.filter(pk=session_id).values_list("name", flat=True).first() or ""
        )
    with transaction.atomic(savepoint=False):  # the caller's transaction, or one of its own
        return _store(event_type, session_id, data, endpoints, session_name)


def emit_many(event_type: str, items: Sequence[tuple[int, dict[str, Any]]]) -> list[Event]:
    """:func:`emit` for several events of one type (``(session_id, data)`` each, in
    order), in the caller's transaction: the endpoints are looked up once for all
    of them (with none enabled, one SELECT for the whole batch — the owner's hot
    path records the messages of many sessions in one transaction), the session
    names once; then each event is stored as :func:`emit` stores it."""
    if not items:
        return []
    enabled = [
        e
        for e in Endpoint.objects.filter(enabled=True).only("id", "event_types", "all_sessions")
        if wants(e.event_types or [], event_type)
    ]
    if not enabled:
        return []
    session_ids = sorted({session_id for session_id, _ in items})
    chosen = [e.pk for e in enabled if not e.all_sessions]
    picked: set[tuple[int, int]] = set()
    if chosen:
        through = Endpoint.sessions.through
        picked = set(
            through.objects.filter(
                endpoint_id__in=chosen, wasession_id__in=session_ids
            ).values_list("endpoint_id", "wasession_id")
        )
    from sessions_app.models import WaSession

    names = dict(WaSession.objects.filter(pk__in=session_ids).values_list("pk", "name"))
    events = []
    with transaction.atomic(savepoint=False):  # the caller's transaction, or one of its own
        for session_id, data in items:
            endpoints = [e for e in enabled if e.all_sessions or (e.pk, session_id) in picked]
            if endpoints:
                events.append(
                    _store(event_type, session_id, data, endpoints, names.get(session_id, ""))
                )
    return events


def emit_test(endpoint: Endpoint) -> Event:
    """A ``webhook.test`` event for this one endpoint (the admin's and the API's test)."""
    data = {"message": "A test event from waconnect.", "endpoint": endpoint.pk}
    with transaction.atomic(savepoint=False):
        return _store("webhook.test", None, data, [endpoint], "")
