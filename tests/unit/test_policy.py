"""Reconnect policy and the owner's next step: pure, exhaustive."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from sessions_app.policy import (
    DROPS_REQUESTS,
    RECONNECTING_STATES,
    ROUND_STATES,
    SETTLED_STATES,
    Action,
    Backoff,
    ConnectCeiling,
    Round,
    SessionView,
    fair_share,
    needs_owner,
    pick_to_shed,
    plan,
    round_status,
    shed_count,
    should_reconnect,
)
from sessions_app.states import LIVE_STATES, WAITS_FOR_ADMIN, Desired, State


def all_views() -> list[SessionView]:
    flags = [False, True]
    return [
        SessionView(d, s, creds, pair, connect, open_, due, ban_over, round_, rate_ok)
        for d, s, creds, pair, connect, open_, due, ban_over, round_, rate_ok in itertools.product(
            Desired, State, flags, flags, flags, flags, flags, flags, Round, flags
        )
    ]


VIEWS = all_views()


class TestBackoff:
    def test_nominal_grows_exponentially_up_to_the_cap(self) -> None:
        b = Backoff(base=1, factor=2, cap=60)
        assert [b.nominal(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
        assert b.nominal(10_000) == 60

    def test_delay_is_jittered_within_half_to_full_step(self) -> None:
        b = Backoff(base=1, factor=2, cap=300)
        rng = random.Random(7)
        for attempt in range(1, 20):
            draws = [b.delay(attempt, rng) for _ in range(200)]
            ceiling = b.nominal(attempt)
            assert all(ceiling / 2 <= d <= ceiling for d in draws)
            assert len({round(d, 6) for d in draws}) > 100, "jitter must spread retries"

    def test_invalid_configuration_and_attempts_are_rejected(self) -> None:
        with pytest.raises(ValueError, match="base > 0"):
            Backoff(base=0)
        with pytest.raises(ValueError, match="cap >= base"):
            Backoff(base=10, cap=1)
        with pytest.raises(ValueError, match="count from 1"):
            Backoff().nominal(0)


@pytest.mark.parametrize("state", list(State))
def test_only_disconnected_and_error_reconnect_by_themselves(state: State) -> None:
    assert should_reconnect(state) is (state in {State.DISCONNECTED, State.ERROR})


def test_plan_is_total() -> None:
    assert {plan(v) for v in VIEWS} == set(Action)


def test_never_a_second_connection_without_a_new_qr_round() -> None:
    closing = {Action.WAIT, Action.SERVE, Action.EXPIRE_ROUND, Action.CLOSE, Action.LOGOUT}
    for view in VIEWS:
        if view.connection_open and not view.pair_pending:
            allowed = closing | {Action.DELETE}
            if view.state is State.DISCONNECTED and (view.retry_due or view.connect_pending):
                allowed.add(Action.RESUME)  # the runner closes the stale one first
            assert plan(view) in allowed, view


def test_qr_rounds_only_when_asked_for_or_interrupted() -> None:
    for view in VIEWS:
        if plan(view) is Action.PAIR:
            assert view.desired is Desired.RUNNING and not view.has_credentials, view
            continued = view.round is Round.LIVE and view.state in ROUND_STATES
            assert view.pair_pending or continued, view


def test_qr_required_is_never_reconnected_on_top_of_itself() -> None:
    for view in VIEWS:
        if (
            view.state is State.QR_REQUIRED
            and view.connection_open
            and view.desired is Desired.RUNNING
            and not view.has_credentials
        ):
            expected = Action.WAIT
            if view.pair_pending:
                expected = Action.PAIR if view.rate_ok else Action.WAIT
            elif view.connect_pending:
                expected = Action.SERVE
            elif view.round is Round.OVER:
                expected = Action.EXPIRE_ROUND
            assert plan(view) is expected, view


def test_waiting_states_need_the_admin() -> None:
    for view in VIEWS:
        if (
            view.state in WAITS_FOR_ADMIN
            and view.desired is Desired.RUNNING
            and not view.connection_open
            and not view.pair_pending
            and not view.connect_pending
        ):
            assert plan(view) is Action.RELEASE, view


def test_backoff_binds_unless_an_admin_request_is_not_served_yet() -> None:
    # Whoever owns the session: the view has no notion of a fresh owner at all.
    for view in VIEWS:
        if (
            view.state in RECONNECTING_STATES
            and not view.retry_due
            and not (view.pair_pending or view.connect_pending)
        ):
            assert plan(view) not in {Action.RESUME, Action.PAIR}, view


def test_an_admin_request_not_served_yet_skips_the_backoff() -> None:
    for state, creds in itertools.product(RECONNECTING_STATES, [False, True]):
        waiting = SessionView(Desired.RUNNING, state, creds, retry_due=False)
        if creds:
            assert plan(dataclasses.replace(waiting, connect_pending=True)) is Action.RESUME
        else:
            assert plan(dataclasses.replace(waiting, pair_pending=True)) is Action.PAIR


def test_the_ceiling_binds_every_path() -> None:
    for view in VIEWS:
        if not view.rate_ok:
            assert plan(view) not in {Action.PAIR, Action.RESUME}, view
    for view in VIEWS:
        if plan(view) is Action.WAIT and not view.rate_ok:
            assert plan(dataclasses.replace(view, rate_ok=True)) in {
                Action.WAIT,
                Action.PAIR,
                Action.RESUME,
            }, view


def test_a_linked_session_is_never_paired_on_top() -> None:
    for view in VIEWS:
        if view.has_credentials:
            assert plan(view) is not Action.PAIR, view
        if view.has_credentials and view.pair_pending and view.desired is Desired.RUNNING:
            assert plan(view) is Action.SERVE, view  # dropped, with a reason


def test_a_start_while_running_is_served_not_kept() -> None:
    for view in VIEWS:
        if (
            view.desired is Desired.RUNNING
            and view.connection_open
            and view.connect_pending
            and not view.pair_pending
            and not (view.state is State.DISCONNECTED and view.has_credentials)
        ):
            assert plan(view) is Action.SERVE, view


def test_an_interrupted_round_goes_on_only_while_whatsapp_would_run_it() -> None:
    for view in VIEWS:
        if (
            view.desired is Desired.RUNNING
            and not view.pair_pending
            and not view.has_credentials
            and view.state in ROUND_STATES
            and view.round is not Round.NONE
        ):
            action = plan(view)
            if view.round is Round.OVER:
                assert action in {Action.EXPIRE_ROUND, Action.SERVE, Action.WAIT}, view
                if not view.connect_pending:
                    assert action is Action.EXPIRE_ROUND, view
            elif not view.connection_open:
                expected = Action.PAIR
                if (view.state in RECONNECTING_STATES and not view.retry_due) or not view.rate_ok:
                    expected = Action.WAIT
                assert action is expected, view


def test_a_driver_reconnecting_by_itself_is_watched_not_doubled() -> None:
    view = SessionView(Desired.RUNNING, State.DISCONNECTED, True, connection_open=True)
    assert plan(dataclasses.replace(view, retry_due=False)) is Action.WAIT
    assert plan(view) is Action.RESUME


def test_delete_wins_over_everything() -> None:
    for view in VIEWS:
        assert (plan(view) is Action.DELETE) is (view.desired is Desired.DELETED)


def test_banned_waits_for_the_ban_to_expire() -> None:
    base = SessionView(Desired.RUNNING, State.BANNED, has_credentials=True)
    assert plan(dataclasses.replace(base, ban_over=False)) is Action.RELEASE
    assert plan(dataclasses.replace(base, ban_over=False, connect_pending=True)) is Action.RELEASE
    assert plan(base) is Action.RESUME


def test_states_that_settle_and_states_that_wait_for_a_new_request() -> None:
    assert DROPS_REQUESTS == {State.REPLACED, State.LOGGED_OUT, State.QR_TIMEOUT, State.BANNED}
    # An old failure is cleared on reaching any state that is neither retrying
    # (its count drives the backoff) nor on the way to a connection.
    assert SETTLED_STATES == set(State) - {
        State.CONNECTING,
        State.DEGRADED,
        State.DISCONNECTED,
        State.ERROR,
    }
    assert ROUND_STATES <= LIVE_STATES | RECONNECTING_STATES


def test_round_status_follows_the_rounds_clock() -> None:
    assert round_status(None, 1000.0, 160) is Round.NONE
    assert round_status(1000.0, 1159.9, 160) is Round.LIVE
    assert round_status(1000.0, 1160.0, 160) is Round.OVER


class TestConnectCeiling:
    def test_allows_limit_attempts_in_any_window(self) -> None:
        ceiling = ConnectCeiling(limit=3, window=60)
        log: list[float] = []
        for t in (0.0, 1.0, 2.0):
            assert ceiling.next_at(log, t) == t
            log = ceiling.record(log, t)
        assert ceiling.next_at(log, 3.0) == 60.0  # the oldest leaves the window
        assert ceiling.next_at(log, 60.5) == 60.5
        assert ceiling.record(log, 61.0) == [2.0, 61.0], "only what it still needs"

    def test_an_eager_caller_never_exceeds_the_limit_in_any_window(self) -> None:
        ceiling = ConnectCeiling(limit=6, window=60)
        rng = random.Random(3)
        log: list[float] = []
        attempts: list[float] = []
        now = 0.0
        while now < 1000:
            now = max(now + rng.random() * 3, ceiling.next_at(log, now))
            log = ceiling.record(log, now)
            attempts.append(now)
        for start in attempts:
            assert sum(1 for t in attempts if start <= t < start + 60) <= 6
        assert len(attempts) > 1000 / 60 * 6 * 0.9, "and it does not throttle below the limit"

    def test_attempts_stamped_ahead_by_another_clock_count(self) -> None:
        ceiling = ConnectCeiling(limit=2, window=60)
        assert ceiling.next_at([100.0, 130.0], 90.0) == 160.0

    def test_invalid_configuration_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="limit >= 1"):
            ConnectCeiling(limit=0)


@pytest.mark.parametrize(
    ("view", "action"),
    [
        (SessionView(Desired.RUNNING, State.STOPPED, has_credentials=True), Action.RESUME),
        (SessionView(Desired.RUNNING, State.STOPPED, False, pair_pending=True), Action.PAIR),
        (SessionView(Desired.RUNNING, State.CONNECTED, True, connection_open=True), Action.WAIT),
        (SessionView(Desired.RUNNING, State.CONNECTED, True), Action.RESUME),  # take over
        (SessionView(Desired.RUNNING, State.QR_REQUIRED, False), Action.CLOSE),  # stale
        (SessionView(Desired.RUNNING, State.ERROR, True, retry_due=False), Action.WAIT),
        (
            SessionView(Desired.RUNNING, State.ERROR, True, False, True, retry_due=False),
            Action.RESUME,
        ),
        (SessionView(Desired.RUNNING, State.CONNECTED, True, pair_pending=True), Action.SERVE),
        (
            SessionView(
                Desired.RUNNING, State.CONNECTED, True, connect_pending=True, connection_open=True
            ),
            Action.SERVE,
        ),
        (SessionView(Desired.RUNNING, State.DISCONNECTED, False, round=Round.LIVE), Action.PAIR),
        (
            SessionView(Desired.RUNNING, State.QR_REQUIRED, False, round=Round.OVER),
            Action.EXPIRE_ROUND,
        ),
        (SessionView(Desired.RUNNING, State.STOPPED, True, rate_ok=False), Action.WAIT),
        (SessionView(Desired.RUNNING, State.REPLACED, True, connect_pending=True), Action.RESUME),
        (
            SessionView(Desired.RUNNING, State.QR_TIMEOUT, False, connect_pending=True),
            Action.RELEASE,
        ),
        (SessionView(Desired.STOPPED, State.CONNECTED, True, connection_open=True), Action.CLOSE),
        (SessionView(Desired.STOPPED, State.STOPPED, True), Action.RELEASE),
        (
            SessionView(Desired.LOGGED_OUT, State.CONNECTED, True, connection_open=True),
            Action.LOGOUT,
        ),
        (SessionView(Desired.LOGGED_OUT, State.LOGGED_OUT, False), Action.RELEASE),
    ],
)
def test_plan_examples(view: SessionView, action: Action) -> None:
    assert plan(view) is action


def test_needs_owner_ignores_the_local_connection_and_timers() -> None:
    for view in VIEWS:
        outside = dataclasses.replace(view, connection_open=False, retry_due=True, rate_ok=True)
        assert needs_owner(view) is (plan(outside) is not Action.RELEASE)


# -- sharing sessions between supervisors -------------------------------------------

CAP_SETS = [caps for n in range(1, 5) for caps in itertools.product((1, 3, 7, 50), repeat=n)]


def test_fair_shares_cover_the_work_within_every_cap() -> None:
    for caps, wanted in itertools.product(CAP_SETS, range(60)):
        shares = [
            fair_share(wanted, cap, [c for j, c in enumerate(caps) if j != i])
            for i, cap in enumerate(caps)
        ]
        assert all(0 <= share <= cap for share, cap in zip(shares, caps, strict=True))
        assert sum(shares) >= min(wanted, sum(caps)), "some sessions would have no owner"
        uncapped = {share for share, cap in zip(shares, caps, strict=True) if share < cap}
        assert len(uncapped) <= 1, "supervisors below their cap get the same share"
        assert sum(shares) < wanted + len(caps), "rounding up gives at most one extra each"


def test_a_third_supervisor_gets_a_third() -> None:
    assert fair_share(300, 1000, [1000, 1000]) == 100
    assert shed_count(150, 100) == 50


def test_small_differences_do_not_move_sessions() -> None:
    assert shed_count(100, 99) == 0
    assert shed_count(110, 100) == 0
    assert shed_count(111, 100) == 11
    assert shed_count(2, 1) == 0 and shed_count(3, 1) == 2
    assert shed_count(0, 0) == 0


def test_only_linked_devices_outside_a_qr_round_are_handed_over() -> None:
    sessions = [
        (1, State.CONNECTED, True),
        (2, State.QR_REQUIRED, False),
        (3, State.PAIRING, True),
        (4, State.CONNECTING, False),
        (5, State.DISCONNECTED, True),
        (6, State.CONNECTED, True),
    ]
    assert sorted(pick_to_shed(sessions, 10)) == [1, 5, 6]
    assert pick_to_shed(sessions, 0) == []


def test_sessions_not_up_are_handed_over_before_those_up() -> None:
    """A supervisor still reconnecting what it took over gives a newcomer that work
    first, instead of taking down sessions that are up; then the newest."""
    sessions = [
        (1, State.CONNECTED, True),
        (2, State.CONNECTING, True),
        (3, State.DEGRADED, True),
        (4, State.DISCONNECTED, True),
        (5, State.ERROR, True),
        (6, State.CONNECTED, True),
    ]
    assert pick_to_shed(sessions, 10) == [5, 4, 2, 6, 3, 1]
    assert pick_to_shed(sessions, 4) == [5, 4, 2, 6]
