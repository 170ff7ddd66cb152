"""Leases on the real PostgreSQL: concurrent claims, fencing, renewal."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from django.db import connection, connections
from django.db.models import F

from sessions_app import leases
from sessions_app.leases import EventRecord
from sessions_app.models import SessionEvent, WaSession

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def make_sessions(count: int) -> list[int]:
    WaSession.objects.bulk_create(WaSession(name=f"pg{i}", pair_request=1) for i in range(count))
    return list(WaSession.objects.values_list("pk", flat=True))


def test_the_claim_uses_skip_locked() -> None:
    make_sessions(1)
    seen: list[str] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert len(leases.claim("one", 10, 5)) == 1
    (claim,) = [sql for sql in seen if sql.startswith("UPDATE")]
    assert "FOR UPDATE SKIP LOCKED" in claim
    assert "RETURNING" in claim


def test_concurrent_claims_never_give_a_session_to_two_owners() -> None:
    ids = make_sessions(300)
    owners = [f"sup{i}" for i in range(8)]
    got: dict[str, list[leases.Lease]] = {owner: [] for owner in owners}
    start = threading.Barrier(len(owners))

    def claimer(owner: str) -> None:
        try:
            start.wait()
            while True:
                batch = leases.claim(owner, 30, 7)
                if not batch:
                    return
                got[owner].extend(batch)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = Counter(lease.session_id for batch in got.values() for lease in batch)
    assert set(claimed) == set(ids)
    assert max(claimed.values()) == 1, "a session was claimed twice"
    assert sum(1 for batch in got.values() if batch) > 1, "the claims did run concurrently"
    db_owner = dict(WaSession.objects.values_list("pk", "lease_owner"))
    for owner, batch in got.items():
        assert all(db_owner[lease.session_id] == owner for lease in batch)


def test_a_zombies_fenced_write_changes_nothing() -> None:
    (session_id,) = make_sessions(1)
    (zombie,) = leases.claim("zombie", 10, 1)
    WaSession.objects.filter(pk=session_id).update(lease_expires_at=None, lease_owner="")
    (successor,) = leases.claim("successor", 10, 1)
    assert successor.epoch == zombie.epoch + 1
    assert not leases.write(zombie, {"state": "error"}, EventRecord("state", "zombie write"))
    assert not leases.release(zombie)
    assert leases.write(successor, {"state": "connecting"}, EventRecord("state", "mine"))
    session = WaSession.objects.get(pk=session_id)
    assert (session.state, session.lease_owner) == ("connecting", "successor")
    assert list(SessionEvent.objects.values_list("message", flat=True)) == ["mine"]


def test_renewal_returns_only_leases_still_held() -> None:
    make_sessions(4)
    held = leases.claim("me", 10, 4)
    WaSession.objects.filter(pk=held[0].session_id).update(lease_owner="other")
    assert {x.session_id for x in leases.renew("me", 10)} == {x.session_id for x in held[1:]}


def test_lease_expiry_comes_from_the_database_clock() -> None:
    make_sessions(1)
    (lease,) = leases.claim("me", 15, 1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM lease_expires_at - statement_timestamp())"
            " FROM sessions_app_wasession WHERE id = %s",
            [lease.session_id],
        )
        (remaining,) = cursor.fetchone()
    assert 14 < float(remaining) <= 15
    assert not WaSession.objects.claimable().exists(), "a live lease is not claimable"
    WaSession.objects.filter(pk=lease.session_id).update(
        lease_expires_at=F("lease_expires_at") - dt.timedelta(seconds=16)
    )
    assert WaSession.objects.claimable().count() == 1, "an expired one is"


def locking_statements(call) -> list[str]:  # type: ignore[no-untyped-def]
    """The statements ``call`` sent that lock rows (FOR UPDATE)."""
    seen: list[str] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        call()
    return [sql for sql in seen if "FOR UPDATE" in sql]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda pks: leases.hand_over("a", pks, "balance"), id="hand_over"),
        pytest.param(lambda pks: leases.release_all("a"), id="release_all"),
        pytest.param(lambda pks: leases.renew("a", 10), id="renew"),
    ],
)
def test_many_rows_are_locked_in_id_order(call) -> None:  # type: ignore[no-untyped-def]
    """The renewal, a hand-over and the last release of a shutdown each lock many
    session rows of one owner, on different threads (and so connections): in one
    order, they cannot deadlock. hand_over locked them in the model's default
    order (by name) and release_all in whatever order the scan met them."""
    pks = make_sessions(3)
    WaSession.objects.filter(pk__in=pks).update(
        lease_owner="a", lease_expires_at=dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    )
    (locking,) = locking_statements(lambda: call(pks))
    assert locking.index("ORDER BY") < locking.index("FOR UPDATE")
    order_by = locking[locking.index("ORDER BY") : locking.index("FOR UPDATE")]
    # By id, named or as the first selected column (Django writes "ORDER BY 1").
    assert "name" not in order_by and ("id" in order_by or order_by.startswith("ORDER BY 1 "))
