"""The delivery SQL on SQLite (PostgreSQL: tests/postgres/test_webhooks_pg.py): lane
order, claims and their expiry, fenced outcomes, dead letters, redelivery."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from sessions_app.models import WaSession
from webhooks import delivery, outbox
from webhooks.delivery import Result
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

SCHEDULE = (0.0, 0.0, 0.0)
WEEK = 7 * 86400.0


@pytest.fixture
def sessions() -> list[WaSession]:
    return [WaSession.objects.create(name=f"s{i}") for i in range(3)]


@pytest.fixture
def hook() -> Endpoint:
    return Endpoint.objects.create(url="http://127.0.0.1:9/hook")


def emit(session: WaSession, n: int = 1) -> None:
    for i in range(n):
        outbox.emit("session.status", session.pk, {"i": i})


def test_only_the_oldest_undelivered_of_a_lane_is_claimed_and_lanes_go_in_parallel(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    for session in sessions:
        emit(session, 3)
    first = delivery.claim("d1", 60, 100)
    assert (
        sorted((c.endpoint_id, Delivery.objects.get(pk=c.id).seq) for c in first)
        == [(hook.pk, 1)] * 3
    )
    assert delivery.claim("d2", 60, 100) == []  # every lane's head is in flight
    for claimed in first:
        delivery.finish("d1", claimed, Result(200), SCHEDULE, WEEK)
    second = delivery.claim("d2", 60, 100)
    assert {Delivery.objects.get(pk=c.id).seq for c in second} == {2}
    assert len(second) == 3


def test_a_failed_head_blocks_its_lane_until_it_is_delivered_or_dead(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0], 2)
    (head,) = delivery.claim("d1", 60, 10)
    assert delivery.finish("d1", head, Result(500), (0.0, 3600.0), WEEK) == ("failed", "pending")
    assert delivery.claim("d1", 60, 10) == []  # retry not due; the next waits behind it
    Delivery.objects.filter(pk=head.id).update(next_attempt_at=timezone.now())
    (again,) = delivery.claim("d1", 60, 10)
    assert again.id == head.id and again.attempts == 2
    assert delivery.finish("d1", again, Result(None, error="reset"), (0.0, 3600.0), WEEK) == (
        "failed",
        "dead",
    )
    (nxt,) = delivery.claim("d1", 60, 10)  # the dead one no longer blocks
    assert Delivery.objects.get(pk=nxt.id).seq == 2
    dead = Delivery.objects.get(pk=head.id)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 2, "reset")


def test_an_expired_claim_is_taken_again_and_the_late_owner_writes_nothing(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0])
    (stale,) = delivery.claim("dead-dispatcher", 60, 10)
    Delivery.objects.filter(pk=stale.id).update(
        claim_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    (fresh,) = delivery.claim("d2", 60, 10)
    assert fresh.id == stale.id and fresh.attempts == 2
    assert delivery.finish("dead-dispatcher", stale, Result(200), SCHEDULE, WEEK) is None
    assert Delivery.objects.get(pk=fresh.id).status == "delivering"
    assert delivery.finish("d2", fresh, Result(204), SCHEDULE, WEEK) == ("delivered", "delivered")


def test_410_disables_the_endpoint_and_its_deliveries_wait(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0], 2)
    (head,) = delivery.claim("d1", 60, 10)
    assert delivery.finish("d1", head, Result(410), SCHEDULE, WEEK) == ("gone", "pending")
    hook.refresh_from_db()
    assert not hook.enabled and "410" in hook.disabled_reason
    assert delivery.claim("d1", 60, 10) == []
    assert delivery.next_due_in() is None
    outbox.emit("session.status", sessions[0].pk, {})  # a disabled endpoint gets no new ones
    assert Delivery.objects.count() == 2


def test_an_endpoint_failing_only_for_the_set_time_is_disabled_with_the_reason(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0])
    (head,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", head, Result(503), (0.0, 0.0, 0.0), 3600)
    hook.refresh_from_db()
    assert hook.enabled and hook.failing_since is not None
    Endpoint.objects.filter(pk=hook.pk).update(failing_since=timezone.now() - dt.timedelta(hours=2))
    (again,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", again, Result(None, error="ConnectError: refused"), (0, 0, 0), 3600)
    hook.refresh_from_db()
    assert not hook.enabled
    assert hook.disabled_reason.startswith("every attempt failed for 1 hours")
    assert "refused" in hook.disabled_reason


def test_a_success_restarts_the_failure_clock(sessions: list[WaSession], hook: Endpoint) -> None:
    emit(sessions[0], 2)
    (head,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", head, Result(500), SCHEDULE, WEEK)
    (head,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", head, Result(200), SCHEDULE, WEEK)
    hook.refresh_from_db()
    assert hook.failing_since is None


def test_redelivery_of_one_and_of_all_dead_since_a_time(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0], 3)
    for _ in range(3):
        (claimed,) = delivery.claim("d1", 60, 10)
        delivery.finish("d1", claimed, Result(500), (0.0,), WEEK)  # one attempt: dead
    assert Delivery.objects.filter(status="dead").count() == 3
    old = Delivery.objects.order_by("seq").first()
    assert old is not None
    Delivery.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=2))

    since = timezone.now() - dt.timedelta(days=1)
    assert delivery.redeliver_dead(hook.pk, since) == 2
    assert Delivery.objects.get(pk=old.pk).status == "dead"
    assert delivery.redeliver([old.pk]) == 1
    again = delivery.claim("d1", 60, 10)
    assert [Delivery.objects.get(pk=c.id).seq for c in again] == [1]  # lane order again
    assert again[0].attempts == 1  # the schedule starts over
    assert again[0].event_id == old.event_id  # same webhook-id
    assert delivery.redeliver([old.pk]) == 0  # never one in flight


def test_a_clean_shutdown_gives_its_claims_back_uncounted(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0])
    (claimed,) = delivery.claim("d1", 60, 10)
    assert delivery.release("d1") == 1
    (again,) = delivery.claim("d2", 60, 10)
    assert again.id == claimed.id and again.attempts == 1


def test_next_due_in_counts_only_claimable_heads(sessions: list[WaSession], hook: Endpoint) -> None:
    assert delivery.next_due_in() is None
    emit(sessions[0], 2)
    assert delivery.next_due_in() == 0.0
    (head,) = delivery.claim("d1", 60, 10)
    due = delivery.next_due_in()  # only the claim's expiry: the second waits behind it
    assert due is not None and 50 < due <= 60
    delivery.finish("d1", head, Result(500), (0.0, 300.0), WEEK)
    due = delivery.next_due_in()
    assert due is not None and 250 < due <= 300


def test_only_lane_heads_are_scheduled_and_each_end_schedules_the_next(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0], 3)
    scheduled = list(Delivery.objects.order_by("seq").values_list("seq", "next_attempt_at"))
    assert [seq for seq, at in scheduled if at is not None] == [1]
    (head,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", head, Result(None, error="reset"), (0.0,), WEEK)  # dead
    assert Delivery.objects.get(seq=2).next_attempt_at is not None
    assert Delivery.objects.get(seq=3).next_attempt_at is None
    assert delivery.repair_lanes() == 0


def test_redelivered_ones_go_first_and_the_lane_waits_behind_them(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0], 3)
    for _ in range(2):
        (claimed,) = delivery.claim("d1", 60, 10)
        delivery.finish("d1", claimed, Result(200), SCHEDULE, WEEK)
    done = list(Delivery.objects.filter(status="delivered").values_list("id", flat=True))
    assert delivery.redeliver(done) == 2
    due = delivery.next_due_in()
    assert due == 0.0
    order = []
    for _ in range(3):
        (claimed,) = delivery.claim("d1", 60, 10)
        assert delivery.claim("d2", 60, 10) == []  # one at a time in the lane
        order.append(Delivery.objects.get(pk=claimed.id).seq)
        delivery.finish("d1", claimed, Result(200), SCHEDULE, WEEK)
    assert order == [1, 2, 3]


def test_a_lane_left_unscheduled_is_repaired_by_the_sweep(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0], 2)
    Delivery.objects.update(next_attempt_at=None)
    assert delivery.claim("d1", 60, 10) == []
    assert delivery.repair_lanes() == 1
    (claimed,) = delivery.claim("d1", 60, 10)
    assert Delivery.objects.get(pk=claimed.id).seq == 1


def test_a_batch_of_outcomes_is_fenced_one_by_one_and_moves_each_finished_lane_on(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    """One ``finish_many`` (on PostgreSQL one UPDATE for all): a lost claim writes
    nothing, a success moves its lane on, a failure keeps its lane waiting."""
    for session in sessions:
        emit(session, 2)
    stale, ok, failing = sorted(delivery.claim("d1", 60, 10), key=lambda c: c.session_id)
    Delivery.objects.filter(pk=stale.id).update(claim_owner="someone-else")
    recorded = delivery.finish_many(
        "d1", [(stale, Result(200)), (ok, Result(204)), (failing, Result(500))], SCHEDULE, WEEK
    )
    assert recorded == [None, ("delivered", "delivered"), ("failed", "pending")]
    assert Delivery.objects.get(pk=stale.id).status == "delivering"
    nxt = {Delivery.objects.get(pk=c.id).session_id: c for c in delivery.claim("d1", 60, 10)}
    # ok's lane: its second; failing's lane: its head again (retry due at once)
    assert Delivery.objects.get(pk=nxt[ok.session_id].id).seq == 2
    assert nxt[failing.session_id].id == failing.id and nxt[failing.session_id].attempts == 2
    hook.refresh_from_db()
    assert hook.failing_since is not None  # the failure started the clock


def test_an_idle_claim_that_finds_nothing_also_says_when_the_next_is_due(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    emit(sessions[0])
    (head,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", head, Result(500), (0.0, 300.0), WEEK)  # retry in 5 minutes
    got, due = delivery.claim_or_due("d1", 60, 10, idle=True)
    assert got == [] and due is not None and 290 < due <= 300
    assert delivery.claim_or_due("d1", 60, 10, idle=False) == ([], None)  # in flight: not asked
    Delivery.objects.filter(pk=head.id).update(next_attempt_at=timezone.now())
    got, due = delivery.claim_or_due("d1", 60, 10, idle=True)
    assert [c.id for c in got] == [head.id] and due is None


def test_a_delivery_made_due_now_is_claimable_in_the_same_millisecond(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    # SQLite's NOW is to the millisecond: a time written from Python a moment ago,
    # in the same millisecond, compared after it and was not due yet. Each round
    # here takes well under a millisecond, so many of them write and ask in one.
    emit(sessions[0])
    (head,) = delivery.claim("d1", 60, 10)
    delivery.finish("d1", head, Result(500), (0.0, 3600.0), WEEK)  # retry in an hour
    not_due = 0
    for _ in range(300):
        Delivery.objects.filter(pk=head.id).update(next_attempt_at=timezone.now())
        not_due += not delivery.claimable().filter(pk=head.id).exists()
    assert not_due == 0, f"{not_due} of 300 not due right after being made due"


@pytest.mark.postgres  # PostgreSQL's batch statements (the second pass of make test)
def test_outcome_batches_of_any_size_run_the_same_statements(
    sessions: list[WaSession], hook: Endpoint
) -> None:
    """One statement text whatever the batch size (arrays, not a VALUES row per
    attempt): psycopg converts each text once instead of parsing every batch anew."""
    for session in sessions:
        emit(session, 2)
    claimed = sorted(delivery.claim("d1", 60, 10), key=lambda c: c.session_id)
    texts: list[str] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if "SAVEPOINT" not in sql:  # (the test's transaction: a new name each time)
            texts.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        delivery.finish_many("d1", [(claimed[0], Result(200))], SCHEDULE, WEEK)
    one, texts[:] = list(texts), []
    with connection.execute_wrapper(record):
        recorded = delivery.finish_many(
            "d1", [(c, Result(200)) for c in claimed[1:]], SCHEDULE, WEEK
        )
    assert recorded == [("delivered", "delivered")] * 2
    assert texts == one
    assert {Delivery.objects.get(pk=c.id).status for c in claimed} == {"delivered"}
    assert len(delivery.claim("d1", 60, 10)) == 3  # every lane moved on
