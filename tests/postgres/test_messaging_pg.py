"""Messages on the real PostgreSQL: the lease fence against a concurrent claim, and
races between stores, sweeps and the owner's take."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from messaging import inbound, outbound
from messaging.models import Message
from messaging.states import Direction, Status
from sessions_app import leases
from sessions_app.drivers.base import MessageReceived
from sessions_app.leases import Lease
from sessions_app.models import WaSession

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

NOW = timezone.now()


def claimed(name: str = "pg-msg") -> Lease:
    WaSession.objects.create(name=name, pair_request=1)
    (lease,) = leases.claim(f"owner-{name}", 60, 1)
    return lease


def queue(lease: Lease, n: int, deadline: dt.datetime | None = None) -> list[int]:
    Message.objects.bulk_create(
        Message(
            session_id=lease.session_id,
            direction=Direction.OUT,
            chat="491700000001@s.whatsapp.net",
            text="x",
            status=Status.QUEUED,
            deadline=deadline or NOW + dt.timedelta(hours=1),
        )
        for _ in range(n)
    )
    return list(Message.objects.filter(session_id=lease.session_id).values_list("pk", flat=True))


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(target())
        except BaseException as exc:  # reported by the test
            result.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def until_someone_waits_for_a_lock(timeout: float = 10.0) -> None:
    """Until another connection of this database waits for a row lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.01)
    raise AssertionError("nobody waited for the session row's lock")


def test_a_zombie_cannot_take_a_message_once_a_claim_is_under_way() -> None:
    """The fence locks the session row FOR SHARE: a claim that updated the row
    (not committed yet) makes the old owner's take wait, then match nothing. A
    plain EXISTS would read the row as it was and mark the message sending under
    the old epoch after the successor claimed."""
    zombie = claimed()
    (message_id,) = queue(zombie, 1)
    claim_done = threading.Event()
    commit = threading.Event()

    def successor_claims() -> None:
        with transaction.atomic():
            WaSession.objects.filter(pk=zombie.session_id).update(
                lease_owner="successor", lease_epoch=zombie.epoch + 1
            )
            claim_done.set()
            assert commit.wait(20)

    claimer, claim_result = in_thread(successor_claims)
    assert claim_done.wait(20)
    taker, taken = in_thread(lambda: outbound.take_next(zombie, timezone.now()))
    until_someone_waits_for_a_lock()
    commit.set()
    claimer.join(20)
    taker.join(20)
    assert claim_result == [None]
    (result,) = taken
    assert not isinstance(result, BaseException), result
    assert result.message is None
    assert Message.objects.get(pk=message_id).status == Status.QUEUED


def test_the_same_incoming_message_stored_at_once_by_many_is_stored_once() -> None:
    lease = claimed()
    event = MessageReceived(
        lease.session_id, "RACE-1", "491700000001@s.whatsapp.net", "491700000001@s.whatsapp.net",
        "", False, NOW, "P", "text", "hi",
    )  # fmt: skip
    start = threading.Barrier(6)

    def store() -> bool:
        start.wait()
        return inbound.store(lease, event, timezone.now()) is not None

    threads = [in_thread(store) for _ in range(6)]
    for thread, _ in threads:
        thread.join(30)
    outcomes = [result[0] for _, result in threads]
    assert sorted(outcomes) == [False] * 5 + [True]
    assert Message.objects.filter(direction=Direction.IN, wa_id="RACE-1").count() == 1


def test_sweeps_racing_the_owner_never_both_win() -> None:
    """Each overdue-or-not message ends taken or expired, never both, never lost."""
    lease = claimed()
    due = timezone.now() + dt.timedelta(milliseconds=200)
    ids = queue(lease, 60, deadline=due)
    start = threading.Barrier(4)
    taken: list[int] = []

    def owner() -> int:
        start.wait()
        while True:
            result = outbound.take_next(lease, timezone.now())
            if result.message is None:
                if not outbound.has_queued(lease.session_id, timezone.now()):
                    return len(taken)
                continue
            taken.append(result.message.pk)
            outbound.mark_sent(lease, result.message.ref, f"W{result.message.pk}", NOW, NOW)

    def sweeper() -> int:
        start.wait()
        expired = 0
        while Message.objects.filter(status=Status.QUEUED).exists():
            expired += len(outbound.expire_overdue(timezone.now(), limit=5))
        return expired

    threads = [in_thread(owner)] + [in_thread(sweeper) for _ in range(3)]
    for thread, _ in threads:
        thread.join(60)
    results = [result[0] for _, result in threads]
    assert not any(isinstance(r, BaseException) for r in results), results
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert set(statuses) == set(ids)
    assert {pk for pk, s in statuses.items() if s == Status.SENT} == set(taken)
    assert all(s in (Status.SENT, Status.EXPIRED) for s in statuses.values())
    assert results[0] + sum(results[1:]) == len(ids)
