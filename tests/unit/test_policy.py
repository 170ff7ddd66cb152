"""Reconnect policy and the owner's next step: pure, exhaustive."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from sessions_app.policy import (
    Action,
    Backoff,
    SessionView,
    fair_share,
    needs_owner,
    pick_to_shed,
    plan,
    shed_count,
    should_reconnect,
)
from sessions_app.states import WAITS_FOR_ADMIN, Desired, State


def all_views() -> list[SessionView]:
    flags = [False, True]
    return [
        SessionView(d, s, creds, pair, connect, open_, due, ban_over)
        for d, s, creds, pair, connect, open_, due, ban_over in itertools.product(
            Desired, State, flags, flags, flags, flags, flags, flags
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
    for view in VIEWS:
        if view.connection_open and not view.pair_pending:
            allowed = {Action.WAIT, Action.CLOSE, Action.LOGOUT, Action.DELETE}
            if view.state is State.DISCONNECTED and view.retry_due:
                allowed.add(Action.RESUME)  # the runner closes the stale one first
            assert plan(view) in allowed, view


def test_qr_rounds_only_when_asked_for() -> None:
    for view in VIEWS:
        if plan(view) is Action.PAIR:
            assert view.pair_pending and view.desired is Desired.RUNNING, view


def test_qr_required_is_never_reconnected_on_top_of_itself() -> None:
    for view in VIEWS:
        if (
            view.state is State.QR_REQUIRED
            and view.connection_open
            and view.desired is Desired.RUNNING
        ):
            assert plan(view) is (Action.PAIR if view.pair_pending else Action.WAIT)


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


def test_backoff_is_respected() -> None:
    for view in VIEWS:
        automatic = not view.connection_open  # an open one is replaced only by request
        if view.state in {State.DISCONNECTED, State.ERROR} and not view.retry_due and automatic:
            assert plan(view) not in {Action.RESUME, Action.PAIR}, view


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
    assert plan(base) is Action.RESUME


@pytest.mark.parametrize(
    ("view", "action"),
    [
        (SessionView(Desired.RUNNING, State.STOPPED, has_credentials=True), Action.RESUME),
        (SessionView(Desired.RUNNING, State.STOPPED, False, pair_pending=True), Action.PAIR),
        (SessionView(Desired.RUNNING, State.CONNECTED, True, connection_open=True), Action.WAIT),
        (SessionView(Desired.RUNNING, State.CONNECTED, True), Action.RESUME),  # take over
        (SessionView(Desired.RUNNING, State.QR_REQUIRED, False), Action.CLOSE),  # stale
        (SessionView(Desired.RUNNING, State.ERROR, True, retry_due=False), Action.WAIT),
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
        outside = dataclasses.replace(view, connection_open=False, retry_due=True)
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
    assert pick_to_shed(sessions, 10) == [6, 5, 1]
    assert pick_to_shed(sessions, 2) == [6, 5]
    assert pick_to_shed(sessions, 0) == []
