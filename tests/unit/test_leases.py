"""Lease SQL on SQLite: claim, renew, fenced writes, release (PostgreSQL: tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from sessions_app import leases
from sessions_app.leases import EventRecord
from sessions_app.models import PhoneAction, SessionEvent, SupervisorPresence, WaSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def sessions() -> list[WaSession]:
    return [WaSession.objects.create(name=f"l{i}", pair_request=1) for i in range(5)]


def test_claim_takes_each_session_once_and_grows_the_epoch(sessions: list[WaSession]) -> None:
    first = leases.claim("a", 10, 3)
    second = leases.claim("b", 10, 10)
    assert len(first) == 3 and len(second) == 2
    assert not {x.session_id for x in first} & {x.session_id for x in second}
    assert all(lease.epoch == 1 for lease in first + second)
    assert leases.claim("c", 10, 10) == []


def test_claim_by_id_takes_only_the_named_sessions_that_are_claimable(
    sessions: list[WaSession],
) -> None:
    named = [sessions[3].pk, sessions[1].pk]
    WaSession.objects.filter(pk=sessions[2].pk).update(desired_state="stopped", pair_request=0)
    got = leases.claim("a", 10, 5, [*named, sessions[2].pk])
    assert sorted(lease.session_id for lease in got) == sorted(named)
    assert leases.claim("b", 10, 5, named) == []  # held by "a" now
    assert {x.session_id for x in leases.claim("b", 10, 5)} == {sessions[0].pk, sessions[4].pk}


def test_a_claim_brings_each_row_as_it_left_it_and_whether_gestures_wait(
    sessions: list[WaSession],
) -> None:
    """The new runner decides from the claim's row without reading it again: it is
    the row as a read right after the claim would give it, every column converted
    (dates included); gestures waiting are said, and taken by that runner's read."""
    PhoneAction.objects.create(session=sessions[1], gesture="scan")
    WaSession.objects.filter(pk=sessions[1].pk).update(qr_issued_at=timezone.now())
    got = {lease.session_id: lease for lease in leases.claim("a", 10, 2)}
    assert set(got) == {sessions[0].pk, sessions[1].pk}
    for session_id, lease in got.items():
        row = WaSession.objects.get(pk=session_id)
        assert lease.claimed_row is not None
        assert lease.claimed_row.lease_owner == "a" and lease.claimed_row.lease_epoch == 1
        for field in WaSession._meta.concrete_fields:
            assert getattr(lease.claimed_row, field.attname) == getattr(row, field.attname), field
        assert not hasattr(lease.claimed_row, "gestures_waiting")
    assert not got[sessions[0].pk].gestures_waiting
    assert got[sessions[1].pk].gestures_waiting
    # Compared, kept and logged as the proof alone.
    proof = leases.Lease(sessions[0].pk, "a", 1)
    assert got[sessions[0].pk] == proof and got[sessions[0].pk].proof().claimed_row is None
    assert repr(got[sessions[0].pk]) == repr(proof)


def test_renew_returns_exactly_the_leases_still_held(sessions: list[WaSession]) -> None:
    held = leases.claim("a", 10, 5)
    WaSession.objects.filter(pk=held[0].session_id).update(lease_owner="b")
    renewed = leases.renew("a", 10)
    assert {x.session_id for x in renewed} == {x.session_id for x in held[1:]}


def test_fenced_write_rejects_a_stale_epoch(sessions: list[WaSession]) -> None:
    (lease,) = leases.claim("a", 10, 1)
    assert leases.write(
        lease, {"state": "connecting"}, EventRecord("state", "go", "stopped", "connecting")
    )
    WaSession.objects.filter(pk=lease.session_id).update(lease_owner="", lease_expires_at=None)
    (newer,) = [x for x in leases.claim("b", 10, 5) if x.session_id == lease.session_id]
    assert newer.epoch == lease.epoch + 1
    assert not leases.write(lease, {"state": "error"}, EventRecord("state", "zombie"))
    session = WaSession.objects.get(pk=lease.session_id)
    assert session.state == "connecting"
    assert list(SessionEvent.objects.filter(session=session).values_list("message", flat=True)) == [
        "go"
    ]


def test_release_frees_the_session_for_the_next_claimer(sessions: list[WaSession]) -> None:
    (lease,) = leases.claim("a", 10, 1)
    assert leases.release(lease)
    assert not leases.release(lease), "a second release finds nothing"
    assert lease.session_id in {x.session_id for x in leases.claim("b", 10, 5)}
    assert leases.release_all("b") == 5


def test_the_census_counts_live_peers_and_the_work(sessions: list[WaSession]) -> None:
    leases.announce("a", 10, 1000, 0)
    leases.announce("b", 10, 7, 0)
    leases.announce("gone", 10, 5, 0)
    SupervisorPresence.objects.filter(owner="gone").update(expires_at=timezone.now())
    leases.announce("a", 10, 1000, 2)  # a renewal updates the row
    assert SupervisorPresence.objects.get(owner="a").sessions == 2

    census = leases.census("a")
    assert census.wanted == len(sessions)
    assert census.other_caps == [7], "only the others that are alive count"
    assert census.next_expiry is not None and 0 < census.next_expiry <= 10

    leases.claim("b", 4, 2)
    assert 0 < leases.census("a").next_expiry <= 4, "b's leases run out first"  # type: ignore[operator]
    leases.withdraw("b")
    assert leases.census("a").other_caps == []


def test_events_carry_the_epoch_they_were_written_under(sessions: list[WaSession]) -> None:
    (lease,) = leases.claim("a", 10, 1)
    leases.write(lease, {}, EventRecord("info", "hello"))
    assert SessionEvent.objects.get(session_id=lease.session_id).epoch == lease.epoch


def test_release_leases_gives_back_only_the_epochs_named(sessions: list[WaSession]) -> None:
    old, other = leases.claim("a", 10, 2)
    WaSession.objects.filter(pk=old.session_id).update(lease_owner="", lease_expires_at=None)
    (again,) = [x for x in leases.claim("a", 10, 5) if x.session_id == old.session_id]
    # The old epoch of a session claimed again is not released; the other one is.
    assert leases.release_leases("a", [old, other]) == 1
    assert WaSession.objects.get(pk=again.session_id).lease_owner == "a"
    assert WaSession.objects.get(pk=other.session_id).lease_owner == ""
    assert leases.release_leases("a", []) == 0


def test_hand_over_records_disconnected_and_releases_in_one_go(
    sessions: list[WaSession],
) -> None:
    mine = leases.claim("a", 10, 3)
    (theirs,) = leases.claim("b", 10, 1)
    live, idle, untouched = (lease.session_id for lease in mine)
    WaSession.objects.filter(pk=live).update(state="connected", qr_code="x")
    WaSession.objects.filter(pk=idle).update(state="error")

    released = leases.hand_over("a", [live, idle, theirs.session_id], "deploying")

    assert sorted(released) == sorted([live, idle]), "only ours, only those named"
    rows = {s.pk: s for s in WaSession.objects.all()}
    assert (rows[live].state, rows[live].qr_code, rows[live].lease_owner) == (
        "disconnected",
        "",
        "",
    )
    assert (rows[idle].state, rows[idle].lease_owner) == ("error", "")
    assert rows[untouched].lease_owner == "a" and rows[theirs.session_id].lease_owner == "b"
    [event] = SessionEvent.objects.filter(session_id=live)
    assert (event.from_state, event.to_state, event.message, event.epoch) == (
        "connected",
        "disconnected",
        "deploying",
        mine[0].epoch,
    )
    assert not SessionEvent.objects.filter(session_id=idle).exists()


@pytest.mark.django_db(transaction=True)  # the supervisor's own database thread reads
def test_a_runner_that_lost_its_lease_takes_none_of_the_gestures() -> None:
    """Simulated phone gestures are taken under the lease, like every owner's write."""
    from sessions_app.models import PhoneAction
    from sessions_app.owner_db import take_gestures

    session = WaSession.objects.create(name="gestured", lease_owner="b", lease_epoch=2)
    PhoneAction.objects.create(session=session, gesture="scan")
    stale = leases.Lease(session.pk, "a", 1)
    assert async_to_sync(take_gestures)(stale) == []
    assert PhoneAction.objects.filter(session=session).exists()
    assert async_to_sync(take_gestures)(leases.Lease(session.pk, "b", 2)) == [("scan", {})]


@pytest.mark.django_db(transaction=True)
def test_census_and_claim_claims_within_the_fair_share_in_one_call(
    sessions: list[WaSession],
) -> None:
    """The ring's first claim goes out with the census (owner_db.census_and_claim)."""
    from sessions_app import owner_db

    leases.announce("b", 10, 1000, 0)  # one other live supervisor: a share of 3 of 5
    census, share, got = async_to_sync(owner_db.census_and_claim)("a", 10, 1000, 0, 2)
    assert (census.wanted, share) == (5, 3)
    assert got is not None and len(got) == 2, "the batch limits the first claim"

    _, share, more = async_to_sync(owner_db.census_and_claim)("a", 10, 1000, 3, 10)
    assert share == 3 and more is None, "no room left within the share: no claim"

    _, _, shedding = async_to_sync(owner_db.census_and_claim)("a", 10, 1000, 9, 10)
    assert shedding is None, "holding more than the share: shed first, claim after"


def test_a_claim_whose_answer_is_lost_leaves_no_lease(
    sessions: list[WaSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's UPDATE ran but its rows never reached the claimer (the connection
    cut, the call cancelled): the claim is rolled back, or the claimer would renew
    a lease it never learnt of, and no runner would ever act on the session."""
    from django.db import OperationalError
    from django.db.backends.utils import CursorWrapper

    def lost(self: CursorWrapper) -> Iterator[Any]:
        raise OperationalError("the connection was cut")
        yield  # a generator, as CursorWrapper.__iter__ is: fails as the rows are read

    # However the rows are read: fetched, or iterated (Manager.raw).
    monkeypatch.setattr(CursorWrapper, "fetchall", lambda self: list(lost(self)), raising=False)
    monkeypatch.setattr(CursorWrapper, "__iter__", lost)
    with pytest.raises(OperationalError):
        leases.claim("a", 10, 5)
    monkeypatch.undo()
    assert not WaSession.objects.exclude(lease_owner="").exists()
    assert len(leases.claim("b", 10, 5)) == 5
