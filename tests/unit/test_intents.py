"""The web side's refusals: decided on the row as it is, in one statement, nothing written."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from sessions_app import intents
from sessions_app.models import SessionEvent, WaSession
from sessions_app.states import Desired, State

pytestmark = pytest.mark.django_db

S = State
RUNNING = {S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED}


@pytest.mark.parametrize("state", list(State))
def test_start_and_new_qr_are_refused_exactly_when_they_would_change_nothing_or_harm(
    state: State,
) -> None:
    for i, (desired, linked, pair_pending) in enumerate(
        itertools.product([Desired.RUNNING, Desired.STOPPED], [False, True], [False, True])
    ):
        row = WaSession.objects.create(
            name=f"{state}-{i}",
            state=state,
            desired_state=desired,
            jid="4915@s.whatsapp.net" if linked else "",
            pair_request=2 if pair_pending else 1,
            pair_served=1,
        )
        running = desired is Desired.RUNNING and (state in RUNNING or pair_pending)
        for action, refused_code in [
            (intents.start, "already_running" if running else ""),
            (intents.new_qr, "linked" if linked else ""),
        ]:
            before = WaSession.objects.filter(pk=row.pk).values().get()
            events = SessionEvent.objects.filter(session=row).count()
            if refused_code:
                with pytest.raises(intents.IntentRefused) as refused:
                    action(row, "ada")
                assert refused.value.code == refused_code, (state, desired, linked, pair_pending)
                assert WaSession.objects.filter(pk=row.pk).values().get() == before
                assert SessionEvent.objects.filter(session=row).count() == events
            else:
                action(row, "ada")
                assert SessionEvent.objects.filter(session=row).count() == events + 1
                WaSession.objects.filter(pk=row.pk).update(**{k: before[k] for k in before})


def test_refusals_read_the_row_not_the_callers_copy() -> None:
    """A page's copy of the session may be stale; the row at the moment decides."""
    row = WaSession.objects.create(
        name="linked-meanwhile", state="connected", jid="4915@s.whatsapp.net"
    )
    stale = WaSession.objects.get(pk=row.pk)
    stale.jid, stale.state = "", "qr_timeout"
    with pytest.raises(intents.IntentRefused) as refused:
        intents.new_qr(stale, "ada")
    assert refused.value.code == "linked"
    with pytest.raises(intents.IntentRefused) as refused:
        intents.pair_by_phone(stale, "+4915112345678", "ada")
    assert refused.value.code == "linked"
    stale.jid, stale.state = "4915@s.whatsapp.net", "stopped"
    with pytest.raises(intents.IntentRefused) as refused:
        intents.start(stale, "ada")
    assert (refused.value.code, refused.value.message) == (
        "already_running",
        "This session is already connected.",
    )
    assert WaSession.objects.get(pk=row.pk).pair_request == 0
    assert WaSession.objects.get(pk=row.pk).connect_request == 0
    assert not SessionEvent.objects.filter(session=row).exists()


def test_start_during_a_round_says_so() -> None:
    row = WaSession.objects.create(name="scanning", state="qr_required", pair_request=1)
    with pytest.raises(intents.IntentRefused) as refused:
        intents.start(row, "ada")
    assert refused.value.code == "already_running"
    assert "QR code round is already under way" in refused.value.message


@pytest.mark.django_db
def test_a_name_taken_in_another_case_meanwhile_is_refused_not_an_error() -> None:
    """Two creates racing past the forms' checks: the constraint decides."""
    WaSession.objects.create(name="Sales")
    with pytest.raises(intents.IntentRefused) as refused:
        intents.create_session("sales", "ada")
    assert refused.value.code == "name_taken"
    assert WaSession.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "action",
    [
        intents.start,
        intents.stop,
        intents.new_qr,
        intents.logout,
        lambda session, actor: intents.pair_by_phone(session, "+4915112345678", actor),
    ],
)
def test_no_action_undoes_a_deletion_under_way(action: Callable[..., None]) -> None:
    """A stop or start racing a delete (the caller read the row before it) is refused."""
    session = WaSession.objects.create(name="sales", state="stopped", desired_state="stopped")
    stale = WaSession.objects.get(pk=session.pk)
    intents.delete(session, "ada")
    with pytest.raises(intents.IntentRefused) as refused:
        action(stale, "bob")
    assert refused.value.code == "deleting"
    assert WaSession.objects.get(pk=session.pk).desired_state == Desired.DELETED


def test_start_with_a_copy_read_before_the_pairing_starts_the_linked_device() -> None:
    """The webhooks chaos test read a session, the phone linked it, then Start was
    refused as "linked ... log it out first": the caller's copy was stale."""
    session = WaSession.objects.create(name="stale-copy", desired_state=Desired.STOPPED)
    WaSession.objects.filter(pk=session.pk).update(jid="4915112345678@s.whatsapp.net")
    intents.start(session, "admin")  # session.jid is still "" in this copy
    row = WaSession.objects.get(pk=session.pk)
    assert (row.desired_state, row.connect_request) == (Desired.RUNNING, 1)
