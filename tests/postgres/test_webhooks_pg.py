"""Webhook SQL on the real PostgreSQL: SKIP LOCKED claims by concurrent dispatchers,
lane order under them, and gap-free sequence numbers under concurrent emitters."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest
from django.db import connection, connections, transaction

from sessions_app.models import WaSession
from webhooks import delivery, outbox
from webhooks.delivery import Result
from webhooks.models import Delivery, Endpoint, Event

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WEEK = 7 * 86400.0


def world(sessions: int, per_session: int) -> list[int]:
    Endpoint.objects.create(url="http://127.0.0.1:9/a")
    Endpoint.objects.create(url="http://127.0.0.1:9/b")
    ids = [WaSession.objects.create(name=f"pg{i}").pk for i in range(sessions)]
    for _ in range(per_session):
        for sid in ids:
            outbox.emit("session.status", sid, {})
    return ids


def test_the_claim_uses_skip_locked_and_returns_in_one_statement() -> None:
    world(1, 1)
    seen: list[str] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert len(delivery.claim("d1", 60, 10)) == 2
    (claim,) = [sql for sql in seen if sql.startswith("UPDATE")]
    assert "FOR UPDATE OF" in claim and "SKIP LOCKED" in claim and "RETURNING" in claim


def test_a_row_locked_by_another_dispatcher_is_skipped_without_waiting() -> None:
    world(3, 1)
    head = Delivery.objects.order_by("id").first()
    assert head is not None
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                Delivery.objects.select_for_update().filter(pk=head.pk).first()
                locked.set()
                release.wait(20)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(20)
        with connection.cursor() as cursor:  # waiting for the lock would fail the claim
            cursor.execute("SET lock_timeout = '2s'")
        got = delivery.claim("d2", 60, 100)
        assert len(got) == 5 and head.pk not in {c.id for c in got}
    finally:
        release.set()
        thread.join()


def test_two_dispatchers_deliver_everything_once_and_every_lane_in_order() -> None:
    """While an emitter adds to the same lanes: a new delivery and the end of its
    lane's head never leave the lane unscheduled (the counter row orders them)."""
    ids = world(40, 3)
    claims: dict[str, list[int]] = {"d1": [], "d2": []}
    start = threading.Barrier(3)
    errors: list[BaseException] = []
    emitting = threading.Event()
    emitting.set()

    def emitter() -> None:
        try:
            start.wait()
            for _ in range(2):
                for sid in ids:
                    with transaction.atomic():
                        outbox.emit("session.status", sid, {})
        except BaseException as exc:
            errors.append(exc)
        finally:
            emitting.clear()
            connections.close_all()

    def dispatcher(owner: str) -> None:
        try:
            start.wait()
            idle = 0
            while emitting.is_set() or idle < 3:
                got = delivery.claim(owner, 60, 7)
                idle = 0 if got else idle + 1
                for claimed in got:
                    claims[owner].append(claimed.id)
                    assert delivery.finish(owner, claimed, Result(200), (0.0,), WEEK)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=dispatcher, args=(o,)) for o in claims]
    threads.append(threading.Thread(target=emitter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = Delivery.objects.count()
    assert total == 40 * 5 * 2
    assert delivery.repair_lanes() == 0, "a lane was left unscheduled"
    counts = Counter(claims["d1"] + claims["d2"])
    assert len(counts) == total and set(counts.values()) == {1}
    assert claims["d1"] and claims["d2"]  # both took part
    lanes: dict[tuple[int, int], list[tuple[object, int]]] = defaultdict(list)
    for d in Delivery.objects.values("endpoint_id", "session_id", "seq", "delivered_at", "status"):
        assert d["status"] == "delivered"
        lanes[(d["endpoint_id"], d["session_id"])].append((d["delivered_at"], d["seq"]))
    for lane in lanes.values():
        assert [seq for _, seq in sorted(lane)] == [1, 2, 3, 4, 5]


def test_concurrent_emitters_of_one_session_get_gap_free_numbers() -> None:
    Endpoint.objects.create(url="http://127.0.0.1:9/a")
    sid = WaSession.objects.create(name="busy").pk
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def emitter() -> None:
        try:
            start.wait()
            for _ in range(25):
                with transaction.atomic():
                    outbox.emit("message.received", sid, {})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=emitter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    seqs = sorted(Event.objects.filter(session_id=sid).values_list("seq", flat=True))
    assert seqs == list(range(1, 101))
