"""The observed-state machine of a WhatsApp session: pure, no Django, no I/O.

Only the supervisor that holds a session's lease moves a session through these
states, and only through :func:`transition`, so every state the database can hold
was reached by an edge listed in ``TRANSITIONS``.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """What the owning supervisor last saw of the WhatsApp connection."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    QR_REQUIRED = "qr_required"
    PAIRING = "pairing"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    LOGGED_OUT = "logged_out"
    QR_TIMEOUT = "qr_timeout"
    REPLACED = "replaced"
    BANNED = "banned"


class Desired(enum.StrEnum):
    """What an admin asked for; written only by the web side."""

    RUNNING = "running"
    STOPPED = "stopped"
    LOGGED_OUT = "logged_out"
    DELETED = "deleted"  # unlink, forget the credentials, then remove the row


class Trigger(enum.StrEnum):
    """Why a session changes state: a supervisor decision or a driver event."""

    CONNECT = "connect"  # the supervisor starts a connection
    TAKE_OVER = "take_over"  # a new lease owner restarts what the previous owner left
    QR = "qr"  # WhatsApp issued a QR code
    PAIR_SUCCESS = "pair_success"  # the phone scanned the code; finishing
    CONNECTED = "connected"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    KEEPALIVE_RESTORED = "keepalive_restored"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    QR_TIMEOUT = "qr_timeout"  # every code of the round expired unscanned
    LOGGED_OUT = "logged_out"  # the phone (or an admin) removed the device
    REPLACED = "replaced"  # another connection took this device over
    BANNED = "banned"
    STOP = "stop"  # the admin asked to stop


S = State
T = Trigger

#: Every state a live connection can be in: a session in one of these has a driver
#: connection open, so it must be owned by exactly one supervisor.
LIVE_STATES: frozenset[State] = frozenset(
    {S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED, S.DISCONNECTED}
)

#: States that end a connection and wait for an admin to act.
WAITS_FOR_ADMIN: frozenset[State] = frozenset({S.LOGGED_OUT, S.QR_TIMEOUT, S.REPLACED})

_ANY: frozenset[State] = frozenset(State)

_EDGES: dict[Trigger, tuple[frozenset[State], State]] = {
    T.CONNECT: (
        frozenset(
            {
                S.STOPPED,
                S.DISCONNECTED,
                S.ERROR,
                S.LOGGED_OUT,
                S.QR_TIMEOUT,
                S.REPLACED,
                S.BANNED,
                S.QR_REQUIRED,  # an admin asked for a new QR round mid-round
                S.CONNECTING,  # ... or while the round's connection was still opening
            }
        ),
        S.CONNECTING,
    ),
    T.TAKE_OVER: (_ANY, S.CONNECTING),
    T.QR: (frozenset({S.CONNECTING, S.QR_REQUIRED}), S.QR_REQUIRED),
    T.PAIR_SUCCESS: (frozenset({S.CONNECTING, S.QR_REQUIRED}), S.PAIRING),
    T.CONNECTED: (
        frozenset({S.CONNECTING, S.PAIRING, S.DISCONNECTED, S.DEGRADED}),
        S.CONNECTED,
    ),
    T.KEEPALIVE_TIMEOUT: (frozenset({S.CONNECTED}), S.DEGRADED),
    T.KEEPALIVE_RESTORED: (frozenset({S.DEGRADED}), S.CONNECTED),
    T.DISCONNECTED: (
        frozenset({S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED}),
        S.DISCONNECTED,
    ),
    T.ERROR: (LIVE_STATES, S.ERROR),
    # From qr_required: WhatsApp ended the round. From the others: a round that was
    # interrupted (crash, deploy, failed connection) ran out of time meanwhile.
    T.QR_TIMEOUT: (
        frozenset({S.QR_REQUIRED, S.CONNECTING, S.DISCONNECTED, S.ERROR}),
        S.QR_TIMEOUT,
    ),
    T.LOGGED_OUT: (_ANY - {S.LOGGED_OUT}, S.LOGGED_OUT),
    T.REPLACED: (
        frozenset({S.CONNECTING, S.PAIRING, S.CONNECTED, S.DEGRADED, S.DISCONNECTED}),
        S.REPLACED,
    ),
    T.BANNED: (
        frozenset({S.CONNECTING, S.PAIRING, S.CONNECTED, S.DEGRADED, S.DISCONNECTED}),
        S.BANNED,
    ),
    T.STOP: (_ANY - {S.STOPPED}, S.STOPPED),
}

#: The whole machine as ``{(state, trigger): next_state}``; anything absent is invalid.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (source, trigger): target for trigger, (sources, target) in _EDGES.items() for source in sources
}


class InvalidTransition(ValueError):
    """The trigger is not allowed from the session's current state."""

    def __init__(self, state: State, trigger: Trigger) -> None:
        self.state = State(state)
        self.trigger = Trigger(trigger)
        allowed = sorted(t.value for (s, t) in TRANSITIONS if s == self.state)
        super().__init__(
            f"cannot apply {self.trigger.value!r} to a session in state "
            f"{self.state.value!r} (allowed: {', '.join(allowed) or 'none'})"
        )


def transition(state: State | str, trigger: Trigger | str) -> State:
    """Return the state after ``trigger``, or raise :class:`InvalidTransition`."""
    key = (State(state), Trigger(trigger))
    try:
        return TRANSITIONS[key]
    except KeyError:
        raise InvalidTransition(*key) from None


def is_allowed(state: State | str, trigger: Trigger | str) -> bool:
    """Whether ``trigger`` is a valid edge out of ``state``."""
    return (State(state), Trigger(trigger)) in TRANSITIONS
