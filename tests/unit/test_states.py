"""The observed-state machine: every edge allowed, every other one rejected."""

from __future__ import annotations

import itertools

import pytest

from sessions_app.states import (
    LIVE_STATES,
    TRANSITIONS,
    InvalidTransition,
    State,
    Trigger,
    is_allowed,
    transition,
)

S, T = State, Trigger

# The machine written out edge by edge, independently of the module's own table.
EXPECTED: dict[tuple[State, Trigger], State] = {}
for source in (
    S.STOPPED,
    S.DISCONNECTED,
    S.ERROR,
    S.LOGGED_OUT,
    S.QR_TIMEOUT,
    S.REPLACED,
    S.BANNED,
    S.QR_REQUIRED,
    S.CONNECTING,
):
    EXPECTED[source, T.CONNECT] = S.CONNECTING
for source in State:
    EXPECTED[source, T.TAKE_OVER] = S.CONNECTING
    if source is not S.STOPPED:
        EXPECTED[source, T.STOP] = S.STOPPED
    if source is not S.LOGGED_OUT:
        EXPECTED[source, T.LOGGED_OUT] = S.LOGGED_OUT
EXPECTED |= {
    (S.CONNECTING, T.QR): S.QR_REQUIRED,
    (S.QR_REQUIRED, T.QR): S.QR_REQUIRED,
    (S.CONNECTING, T.PAIR_SUCCESS): S.PAIRING,
    (S.QR_REQUIRED, T.PAIR_SUCCESS): S.PAIRING,
    (S.CONNECTING, T.CONNECTED): S.CONNECTED,
    (S.PAIRING, T.CONNECTED): S.CONNECTED,
    (S.DISCONNECTED, T.CONNECTED): S.CONNECTED,
    (S.DEGRADED, T.CONNECTED): S.CONNECTED,
    (S.CONNECTED, T.KEEPALIVE_TIMEOUT): S.DEGRADED,
    (S.DEGRADED, T.KEEPALIVE_RESTORED): S.CONNECTED,
    (S.QR_REQUIRED, T.QR_TIMEOUT): S.QR_TIMEOUT,
    # an interrupted round whose time ran out
    (S.CONNECTING, T.QR_TIMEOUT): S.QR_TIMEOUT,
    (S.DISCONNECTED, T.QR_TIMEOUT): S.QR_TIMEOUT,
    (S.ERROR, T.QR_TIMEOUT): S.QR_TIMEOUT,
}
for source in (S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED):
    EXPECTED[source, T.DISCONNECTED] = S.DISCONNECTED
for source in (S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED, S.DISCONNECTED):
    EXPECTED[source, T.ERROR] = S.ERROR
for source in (S.CONNECTING, S.PAIRING, S.CONNECTED, S.DEGRADED, S.DISCONNECTED):
    EXPECTED[source, T.REPLACED] = S.REPLACED
    EXPECTED[source, T.BANNED] = S.BANNED

ALL_PAIRS = list(itertools.product(State, Trigger))


def test_the_table_is_exactly_the_expected_machine() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("state", "trigger"), sorted(EXPECTED))
def test_allowed_transition(state: State, trigger: Trigger) -> None:
    assert transition(state, trigger) is EXPECTED[state, trigger]
    assert is_allowed(state, trigger)


@pytest.mark.parametrize(("state", "trigger"), [pair for pair in ALL_PAIRS if pair not in EXPECTED])
def test_rejected_transition(state: State, trigger: Trigger) -> None:
    assert not is_allowed(state, trigger)
    with pytest.raises(InvalidTransition, match=f"cannot apply '{trigger}'") as info:
        transition(state, trigger)
    assert info.value.state is state
    assert f"state '{state}'" in str(info.value)


def test_strings_are_accepted_and_unknown_values_are_not() -> None:
    assert transition("connecting", "qr") is State.QR_REQUIRED
    with pytest.raises(ValueError, match="not a valid State"):
        transition("sleeping", "qr")
    with pytest.raises(ValueError, match="not a valid Trigger"):
        transition("connecting", "teleport")


def test_qr_required_never_reconnects_on_its_own_edges() -> None:
    # Only an admin's new QR round (CONNECT) leaves qr_required for connecting.
    assert {
        t for (s, t) in TRANSITIONS if s is S.QR_REQUIRED and TRANSITIONS[s, t] is S.CONNECTING
    } == {T.CONNECT, T.TAKE_OVER}


def test_live_states_are_the_ones_with_an_open_connection() -> None:
    assert LIVE_STATES == {
        S.CONNECTING,
        S.QR_REQUIRED,
        S.PAIRING,
        S.CONNECTED,
        S.DEGRADED,
        S.DISCONNECTED,
    }
