"""The session model: the SQL claim filter agrees with the pure policy; the log is append-only."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.utils import timezone

from sessions_app import leases
from sessions_app.models import SessionEvent, WaSession
from sessions_app.policy import Round, SessionView, needs_owner
from sessions_app.states import Desired, State

pytestmark = pytest.mark.django_db


def test_claimable_sql_matches_needs_owner_on_every_combination() -> None:
    now = timezone.now()
    rows, views = [], {}
    flags = [False, True]
    # A QR round: none, under way (seconds ago), or begun long ago (its time ran out).
    rounds = {None: Round.NONE, -10: Round.LIVE, -600: Round.OVER}
    combos = itertools.product(Desired, State, flags, flags, flags, [None, -60, 60], rounds)
    for i, (desired, state, creds, pair, connect, ban, round_) in enumerate(combos):
        name = f"s{i}"
        banned_until = None if ban is None else now + dt.timedelta(seconds=ban)
        started = None if round_ is None else now + dt.timedelta(seconds=round_)
        rows.append(
            WaSession(
                name=name,
                desired_state=desired,
                state=state,
                jid="491234@s.whatsapp.net" if creds else "",
                pair_request=2 if pair else 1,
                pair_served=1,
                connect_request=3 if connect else 0,
                connect_served=0,
                banned_until=banned_until,
                qr_round_started_at=started,
            )
        )
        views[name] = SessionView(
            desired,
            state,
            creds,
            pair_pending=pair,
            connect_pending=connect,
            ban_over=banned_until is None or banned_until <= now,
            round=rounds[round_],
        )
    WaSession.objects.bulk_create(rows)
    claimable = set(WaSession.objects.claimable().values_list("name", flat=True))
    expected = {name for name, view in views.items() if needs_owner(view)}
    assert claimable == expected
    assert 0 < len(expected) < len(views)
    # The census and the claim run the same filter as SQL compiled once and kept.
    assert leases.census("nobody").wanted == len(expected)
    claimed = leases.claim("nobody", 10, len(views))
    names = WaSession.objects.filter(pk__in=[lease.session_id for lease in claimed])
    assert set(names.values_list("name", flat=True)) == expected


def test_a_live_lease_hides_a_session_from_claims() -> None:
    session = WaSession.objects.create(name="x1", jid="1@s.whatsapp.net")
    assert list(WaSession.objects.claimable()) == [session]
    WaSession.objects.filter(pk=session.pk).update(
        lease_owner="other", lease_expires_at=timezone.now() + dt.timedelta(seconds=10)
    )
    assert not WaSession.objects.claimable().exists()
    WaSession.objects.filter(pk=session.pk).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    assert list(WaSession.objects.claimable()) == [session]


def test_events_are_append_only() -> None:
    session = WaSession.objects.create(name="x2")
    event = SessionEvent.objects.create(session=session, kind="info", message="hi", actor="t")
    event.message = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
