"""The fenced write on PostgreSQL (sessions_app.fenced_pg): the same rows as the
statement-by-statement write, in fewer waits for the server."""

from __future__ import annotations

import tempfile
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from sessions_app import leases, snapshots
from sessions_app.leases import EventRecord
from sessions_app.models import SessionEvent, WaSession
from webhooks.models import Delivery, Endpoint, Event

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

QR_FIELDS: dict[str, Any] = {"state": "qr_required", "qr_code": "2@secret-qr"}
QR_EVENT = EventRecord("state", "QR code issued; waiting for a scan", "connecting", "qr_required")


def claimed(name: str) -> leases.Lease:
    session = WaSession.objects.create(name=name, pair_request=1)
    (lease,) = leases.claim("sup-a", 30, 1, [session.pk])
    return lease


def statement_by_statement(lease: leases.Lease, fields: dict[str, Any]) -> list[SessionEvent]:
    """What SQLite runs (and PostgreSQL ran before the pipeline)."""
    assert leases._fenced_update(lease, fields, QR_EVENT)
    return snapshots.latest_events(lease.session_id)


def server_waits(run: Any) -> int:
    """How many times ``run()`` waited for PostgreSQL's answer: the Sync messages (an
    extended-protocol statement or a pipeline) and simple queries the client sent,
    from libpq's trace of this thread's connection."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            run()
        finally:
            pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines()]
    return sum(1 for parts in sent if parts[0] == "F" and parts[2] in ("Sync", "Query"))


def test_a_fenced_write_waits_for_the_server_three_times() -> None:
    """BEGIN, then the UPDATE, the event, the webhook endpoints and the snapshot's
    events answered together, then COMMIT (six waits statement by statement)."""
    lease = claimed("pipelined")
    waits = server_waits(lambda: leases.fenced_write(lease, QR_FIELDS, QR_EVENT, with_events=True))
    assert waits == 3
    before = claimed("one by one")
    assert server_waits(lambda: statement_by_statement(before, QR_FIELDS)) == 6


def test_it_writes_and_reads_what_the_statement_by_statement_write_does() -> None:
    """Row, event-log line, webhook events and deliveries, and the events read for
    the snapshot (this write's included), alike on two sessions written each way."""
    Endpoint.objects.create(
        url="http://127.0.0.1:9/hook", event_types=["session.status", "session.qr"]
    )
    piped, plain = claimed("piped"), claimed("plain")
    fields = QR_FIELDS | {"qr_issued_at": timezone.now(), "recent_connects": [1.5, 2.5]}
    got = leases.fenced_write(piped, fields, QR_EVENT, with_events=True)
    expected = statement_by_statement(plain, fields)

    def row(lease: leases.Lease) -> dict[str, Any]:
        values = WaSession.objects.filter(pk=lease.session_id).values().get()
        made_apart = ("id", "name", "created_at", "state_changed_at", "lease_expires_at")
        return {k: v for k, v in values.items() if k not in made_apart}

    def lines(events: list[SessionEvent]) -> list[tuple[Any, ...]]:
        return [(e.kind, e.message, e.from_state, e.to_state, e.actor, e.epoch) for e in events]

    def outbox(lease: leases.Lease) -> list[tuple[Any, ...]]:
        events = Event.objects.filter(session_id=lease.session_id).order_by("seq")
        return [
            (e.type, e.seq, e.payload["data"] | {"at": None}, e.deliveries.count()) for e in events
        ]

    assert row(piped) == row(plain)
    assert got is not None and lines(got) == lines(expected)
    assert [(e.pk, e.at) for e in got] == [
        (e.pk, e.at) for e in snapshots.latest_events(piped.session_id)
    ]
    assert got[0].message == QR_EVENT.message, "this write's line comes first"
    assert outbox(piped) == outbox(plain) and len(outbox(piped)) == 2
    assert Delivery.objects.count() == 4


def test_under_a_lost_lease_nothing_is_written() -> None:
    Endpoint.objects.create(url="http://127.0.0.1:9/hook")
    lease = claimed("taken")
    WaSession.objects.filter(pk=lease.session_id).update(lease_owner="sup-b")
    before = WaSession.objects.get(pk=lease.session_id)
    assert leases.fenced_write(lease, QR_FIELDS, QR_EVENT, with_events=True) is None
    after = WaSession.objects.get(pk=lease.session_id)
    assert (after.state, after.qr_code, after.version) == (
        before.state,
        before.qr_code,
        before.version,
    )
    assert not SessionEvent.objects.filter(session_id=lease.session_id, kind="state").exists()
    assert not Event.objects.exists()


def test_a_statement_that_fails_in_the_pipeline_is_a_database_error_and_writes_nothing() -> None:
    """The runner hands a session over on Django's DatabaseError: an error raised when
    the pipeline is answered must be one (not psycopg's own), with nothing written
    and the connection usable after it."""
    lease = claimed("too long")
    with pytest.raises(DatabaseError):
        leases.fenced_write(lease, {"state": "x" * 40}, QR_EVENT, with_events=True)
    assert WaSession.objects.get(pk=lease.session_id).version == 0
    assert not SessionEvent.objects.filter(session_id=lease.session_id, kind="state").exists()
    assert leases.fenced_write(lease, QR_FIELDS, QR_EVENT, with_events=False) == []
