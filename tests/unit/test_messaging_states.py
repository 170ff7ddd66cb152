"""The outbound message state machine, pacing and deadlines: pure rules."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from messaging import states
from messaging.states import Status, TransitionRefused, Trigger

S, T = Status, Trigger
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)

#: The whole machine, written out again by hand: every allowed edge.
EXPECTED = {
    (S.QUEUED, T.TAKE): S.SENDING,
    (S.QUEUED, T.DEADLINE): S.EXPIRED,
    (S.SENDING, T.ACK): S.SENT,
    (S.SENDING, T.REFUSED): S.FAILED,
    (S.SENDING, T.REQUEUE): S.QUEUED,
    (S.SENDING, T.UNKNOWN): S.UNKNOWN,
    (S.SENT, T.DELIVERED): S.DELIVERED,
    (S.SENT, T.READ): S.READ,
    (S.DELIVERED, T.READ): S.READ,
    (S.UNKNOWN, T.ACK): S.SENT,
    (S.UNKNOWN, T.DELIVERED): S.DELIVERED,
    (S.UNKNOWN, T.READ): S.READ,
}


@pytest.mark.parametrize(("status", "trigger"), list(itertools.product(Status, Trigger)))
def test_every_edge_is_allowed_or_refused_as_written(status: Status, trigger: Trigger) -> None:
    """Each (status, trigger) pair is either an edge of the machine, or refused."""
    if (status, trigger) in EXPECTED:
        assert states.is_allowed(status, trigger)
        assert states.transition(status, trigger) is EXPECTED[(status, trigger)]
    else:
        assert not states.is_allowed(status, trigger)
        with pytest.raises(TransitionRefused):
            states.transition(status, trigger)


def test_receipts_only_move_forward() -> None:
    """delivered → read is a step; read never goes back to delivered, nor sent."""
    assert states.transition(S.DELIVERED, T.READ) is S.READ
    assert not states.is_allowed(S.READ, T.DELIVERED)
    assert not states.is_allowed(S.READ, T.READ)
    assert not states.is_allowed(S.DELIVERED, T.DELIVERED)
    for status in (S.QUEUED, S.SENDING, S.FAILED, S.EXPIRED, S.RECEIVED):
        assert not states.is_allowed(status, T.DELIVERED), status
        assert not states.is_allowed(status, T.READ), status
    assert states.receipt_trigger("played") is T.READ
    assert states.receipt_trigger("delivered") is T.DELIVERED
    assert states.receipt_trigger("sender") is None


def test_failed_and_expired_are_final_and_unknown_moves_only_on_evidence() -> None:
    for status in (S.FAILED, S.EXPIRED, S.RECEIVED, S.READ):
        assert not any(states.is_allowed(status, t) for t in Trigger), status
    allowed = {t for t in Trigger if states.is_allowed(S.UNKNOWN, t)}
    assert allowed == {T.ACK, T.DELIVERED, T.READ}, "never taken to send again"


def test_send_failures_map_to_their_trigger() -> None:
    assert states.failure_trigger("refused", "not_connected") is T.REQUEUE
    assert states.failure_trigger("refused", "not_on_whatsapp") is T.REFUSED
    assert states.failure_trigger("refused", "rate_limited") is T.REFUSED
    assert states.failure_trigger("unknown", "timeout") is T.UNKNOWN


def test_sources_are_the_statuses_a_trigger_leaves() -> None:
    assert set(states.sources(T.READ)) == {S.SENT, S.DELIVERED, S.UNKNOWN}
    assert states.sources(T.TAKE) == [S.QUEUED]


def test_sending_under_an_older_epoch_is_stale() -> None:
    """A successor (a higher epoch) finds it sending: unknown, never resent."""
    assert states.is_stale_sending(S.SENDING, 4, 5)
    assert states.is_stale_sending(S.SENDING, None, 5)
    assert not states.is_stale_sending(S.SENDING, 5, 5), "our own send under way"
    assert not states.is_stale_sending(S.SENT, 4, 5)
    assert not states.is_stale_sending(S.QUEUED, None, 5)


def test_pacing_waits_out_the_interval_since_the_last_send() -> None:
    assert states.pacing_delay(None, NOW, 1.0) == 0.0
    assert states.pacing_delay(NOW - dt.timedelta(seconds=0.25), NOW, 1.0) == pytest.approx(0.75)
    assert states.pacing_delay(NOW - dt.timedelta(seconds=5), NOW, 1.0) == 0.0
    assert states.pacing_delay(NOW, NOW, 0.0) == 0.0, "0 turns pacing off"
    later = NOW + dt.timedelta(hours=1)  # a clock that went back: at most one interval
    assert states.pacing_delay(later, NOW, 2.0) == 2.0


def test_the_deadline_is_the_requested_one_or_now_plus_the_ttl() -> None:
    assert states.deadline_for(NOW, 60) == NOW + dt.timedelta(seconds=60)
    wanted = NOW + dt.timedelta(minutes=5)
    assert states.deadline_for(NOW, 60, wanted) == wanted
    with pytest.raises(ValueError, match="past"):
        states.deadline_for(NOW, 60, NOW)
    with pytest.raises(ValueError, match="time zone"):
        states.deadline_for(NOW, 60, dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        states.deadline_for(NOW, 0)
    assert states.is_past_deadline(NOW, NOW)
    assert not states.is_past_deadline(None, NOW)
    assert not states.is_past_deadline(wanted, NOW)
