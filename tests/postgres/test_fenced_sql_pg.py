"""A supervisor's fenced write on the real PostgreSQL: one statement when no webhook
endpoint listens, the outbox's transaction when one does (sessions_app.fenced_sql)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DataError, connection, transaction
from django.db.models import F
from django.utils import timezone

from sessions_app import fenced_sql, leases
from sessions_app.leases import EventRecord, Lease
from sessions_app.models import SessionEvent, WaSession
from webhooks.models import Delivery, Endpoint, Event

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CONNECTING = EventRecord("state", "connecting to WhatsApp", "disconnected", "connecting")


@pytest.fixture(autouse=True)
def no_hint() -> Iterator[None]:
    fenced_sql._listened.clear()
    yield
    fenced_sql._listened.clear()


def claimed() -> Lease:
    WaSession.objects.create(name="pg", pair_request=1)
    (lease,) = leases.claim("me", 30, 1)
    return lease


def statements(call: Callable[[], Any]) -> tuple[Any, list[str]]:
    """What ``call`` returned, and the statements it sent (psycopg's own ``BEGIN``
    and ``COMMIT`` are not among them: Django's ``atomic`` is seen as a savepoint-less
    block, so a transaction shows as more than one statement)."""
    seen: list[str] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        result = call()
    return result, seen


def test_a_write_with_its_line_is_one_statement() -> None:
    lease = claimed()
    before = WaSession.objects.get(pk=lease.session_id).version

    written, sent = statements(
        lambda: leases.write(
            lease, {"state": "connecting", "state_changed_at": timezone.now()}, CONNECTING
        )
    )

    assert written is True
    assert len(sent) == 1 and sent[0].startswith("WITH fenced AS (UPDATE"), sent
    session = WaSession.objects.get(pk=lease.session_id)
    assert (session.state, session.version) == ("connecting", before + 1)
    line = SessionEvent.objects.get(session_id=lease.session_id)
    assert (line.kind, line.message, line.from_state, line.to_state) == (
        "state",
        "connecting to WhatsApp",
        "disconnected",
        "connecting",
    )
    assert (line.actor, line.epoch) == ("supervisor:me", lease.epoch)


def test_a_lost_lease_writes_nothing_in_one_statement() -> None:
    lease = claimed()
    WaSession.objects.filter(pk=lease.session_id).update(lease_epoch=lease.epoch + 1)

    written, sent = statements(lambda: leases.write(lease, {"state": "error"}, CONNECTING))

    assert written is False and len(sent) == 1
    assert WaSession.objects.get(pk=lease.session_id).state != "error"
    assert not SessionEvent.objects.exists()


def test_with_an_endpoint_listening_the_events_go_to_the_outbox() -> None:
    lease = claimed()
    Endpoint.objects.create(
        url="http://127.0.0.1:9/hook", event_types=["session.status", "session.qr"]
    )

    written, sent = statements(lambda: leases.write(lease, {"state": "connecting"}, CONNECTING))
    assert written is True
    assert sent[0].startswith("WITH fenced"), "the one statement is tried first"
    (status,) = Event.objects.all()
    assert status.type == "session.status" and status.payload["data"]["state"] == "connecting"
    assert Delivery.objects.count() == 1
    assert SessionEvent.objects.count() == 1, "the statement wrote nothing of its own"

    # Known to be listened: the next write goes to the transaction at once.
    written, sent = statements(lambda: leases.write(lease, {"qr_code": "2@abc"}))
    assert written is True
    assert not any(sql.startswith("WITH fenced") for sql in sent), sent
    assert Event.objects.filter(type="session.qr").count() == 1


def test_a_write_that_emits_nothing_is_one_statement_whoever_listens() -> None:
    lease = claimed()
    Endpoint.objects.create(url="http://127.0.0.1:9/hook")

    written, sent = statements(lambda: leases.write(lease, {"retry_count": 3}))

    assert written is True and len(sent) == 1
    assert WaSession.objects.get(pk=lease.session_id).retry_count == 3
    assert not Event.objects.exists()


def test_once_no_endpoint_listens_the_writes_are_one_statement_again() -> None:
    lease = claimed()
    hook = Endpoint.objects.create(url="http://127.0.0.1:9/hook")
    assert leases.write(lease, {"state": "connecting"}, CONNECTING)
    hook.enabled = False
    hook.save()

    leases.write(
        lease, {"state": "qr_required"}, EventRecord("state", "scan", "connecting", "qr_required")
    )
    written, sent = statements(lambda: leases.write(lease, {"qr_code": "2@abc"}))

    assert written is True and len(sent) == 1 and sent[0].startswith("WITH fenced"), sent
    assert Event.objects.count() == 1, "only the write heard while the endpoint was enabled"


def test_the_line_has_this_hosts_time_as_every_other_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """One clock for the event log on a host (the intents', a hand-over's and the
    transactional path's lines take timezone.now()), not the database's."""
    lease = claimed()
    at = dt.datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=dt.UTC)
    monkeypatch.setattr(fenced_sql.timezone, "now", lambda: at)

    written, sent = statements(lambda: leases.write(lease, {"state": "connecting"}, CONNECTING))

    assert written is True and len(sent) == 1
    assert SessionEvent.objects.get(session_id=lease.session_id).at == at


def test_inside_a_transaction_a_failed_write_leaves_it_usable() -> None:
    """Inside a caller's transaction the write takes the transactional path, whose
    savepoint keeps a failed statement from aborting the caller's transaction."""
    lease = claimed()
    with transaction.atomic():
        with pytest.raises(DataError):
            leases.write(lease, {"push_name": "x" * 200}, CONNECTING)
        assert WaSession.objects.filter(pk=lease.session_id).exists()


def test_values_are_converted_as_django_converts_them() -> None:
    """The SET clause made without Django's compiler writes what ``update()`` would:
    times, JSON, NULLs and an SQL expression (which goes through the compiler)."""
    lease = claimed()
    at = dt.datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=dt.UTC)
    WaSession.objects.filter(pk=lease.session_id).update(qr_expires_at=at, last_error="old")
    fields = {
        "qr_issued_at": at,
        "qr_expires_at": None,
        "recent_connects": [1.5, 2.25],
        "last_error": "50% of 'quotes' \\ kept",
    }

    assert leases.write(lease, fields)
    assert leases.write(lease, {"retry_count": F("retry_count") + 2, "state": "connecting"})

    session = WaSession.objects.get(pk=lease.session_id)
    assert {name: getattr(session, name) for name in fields} == fields
    assert (session.retry_count, session.state) == (2, "connecting")
