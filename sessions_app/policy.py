"""What the owner of a session should do next: pure decisions, no Django, no I/O.

The supervisor feeds :func:`plan` a :class:`SessionView` (intent from the web side,
observation from itself) and carries out the :class:`Action` it returns. The same
rules decide whether a session needs an owner at all (:func:`needs_owner`), and the
database query that claims sessions is tested against that function.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Sequence

from sessions_app.states import LIVE_STATES, WAITS_FOR_ADMIN, Desired, State

#: The only states that reconnect by themselves (after a backoff delay).
RECONNECTING_STATES: frozenset[State] = frozenset({State.DISCONNECTED, State.ERROR})


def should_reconnect(state: State | str) -> bool:
    """Whether a session in ``state`` reconnects without an admin asking.

    ``qr_required`` is never reconnected on top of itself; ``logged_out``,
    ``replaced`` and ``qr_timeout`` wait for the admin; ``banned`` waits for the
    ban to expire.
    """
    return State(state) in RECONNECTING_STATES


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter" and a cap.

    The delay for attempt *n* (1-based) is drawn from ``[d/2, d]`` where
    ``d = min(cap, base * factor ** (n - 1))``: never more than ``cap``, never
    less than half the nominal step, so retries spread out without collapsing to
    zero.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor < 1 or self.cap < self.base:
            raise ValueError("need base > 0, factor >= 1 and cap >= base")

    def nominal(self, attempt: int) -> float:
        """The un-jittered ceiling for ``attempt``."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # Cap the exponent first so huge attempt numbers cannot overflow.
        exponent = min(attempt - 1, 64)
        return min(self.cap, self.base * self.factor**exponent)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before ``attempt``."""
        ceiling = self.nominal(attempt)
        draw = (rng or random).random()
        return ceiling / 2 + draw * ceiling / 2


class Action(enum.StrEnum):
    """One step the session's owner takes."""

    PAIR = "pair"  # open a new-device connection: a QR round asked for, or its continuation
    RESUME = "resume"  # open a connection with the stored credentials
    SERVE = "serve"  # mark the admin's request served without connecting: nothing to do
    EXPIRE_ROUND = "expire_round"  # an interrupted QR round ran out: record `qr_timeout`
    CLOSE = "close"  # close any connection and record `stopped`
    LOGOUT = "logout"  # unlink the device, forget its credentials, record `logged_out`
    DELETE = "delete"  # close, unlink and forget the device, delete the session row
    WAIT = "wait"  # keep the current connection, or wait for the retry time
    RELEASE = "release"  # nothing to run: give the lease back


class Round(enum.StrEnum):
    """The QR round the row records (``qr_round_started_at``), seen at one moment."""

    NONE = "none"  # no round under way
    LIVE = "live"  # under way, and WhatsApp would still be issuing codes for it
    OVER = "over"  # under way when it was interrupted, but its time has run out


@dataclasses.dataclass(frozen=True)
class SessionView:
    """Everything :func:`plan` needs to know about one session.

    ``pair_pending`` and ``connect_pending`` are admin requests the row shows as not
    yet served; they are the only inputs that skip a backoff.
    """

    desired: Desired
    state: State
    has_credentials: bool
    pair_pending: bool = False  # the admin asked for a QR round not started yet
    connect_pending: bool = False  # the admin pressed start, not served yet
    connection_open: bool = False  # this owner has a driver connection open
    retry_due: bool = True  # the backoff delay in the row (if any) has passed
    ban_over: bool = True  # no temporary ban, or it has expired
    round: Round = Round.NONE  # the QR round the row records
    rate_ok: bool = True  # under the ceiling of connections a minute


#: The states a QR round can be found in when its connection is gone (a crash, a
#: deploy, a failed connection): it is continued, or recorded as timed out.
ROUND_STATES: frozenset[State] = frozenset(
    {State.CONNECTING, State.QR_REQUIRED, State.DISCONNECTED, State.ERROR}
)

#: States in which an earlier failure no longer applies: entering one clears the
#: row's last error, retry count and retry time (what the page shows).
SETTLED_STATES: frozenset[State] = frozenset(
    {
        State.STOPPED,
        State.QR_REQUIRED,
        State.PAIRING,
        State.CONNECTED,
        State.LOGGED_OUT,
        State.QR_TIMEOUT,
        State.REPLACED,
        State.BANNED,
    }
)

#: States that wait for a request made after they happened: entering one drops any
#: start request made before (it was made for the connection that just ended).
DROPS_REQUESTS: frozenset[State] = WAITS_FOR_ADMIN | {State.BANNED}


def _limited(view: SessionView, action: Action) -> Action:
    """Connect only under the ceiling; otherwise wait for it (by any path)."""
    return action if view.rate_ok else Action.WAIT


def plan(view: SessionView) -> Action:
    """Decide the next step; total over every combination of inputs.

    Invariants (each checked over every input in tests/unit/test_policy.py): no
    connection above the ceiling; a backoff is skipped only by an admin request not
    served yet; a linked device is never paired on top; an open connection is
    replaced only by a new QR round or a start while it is down; a round runs only
    while WhatsApp would still run it.
    """
    if view.desired is Desired.DELETED:
        return Action.DELETE

    if view.desired is Desired.STOPPED:
        if view.connection_open or view.state is not State.STOPPED:
            return Action.CLOSE
        return Action.RELEASE

    if view.desired is Desired.LOGGED_OUT:
        if view.has_credentials or view.connection_open or view.state is not State.LOGGED_OUT:
            return Action.LOGOUT
        return Action.RELEASE

    # desired is RUNNING
    if view.pair_pending and view.has_credentials:
        # Pairing again would leave the old device linked (a slot on the phone):
        # the request is dropped; the admin logs out first.
        return Action.SERVE
    in_round = view.round is not Round.NONE and not view.has_credentials
    if view.connection_open:
        # Never reconnect on top of a live connection: only a new QR round the
        # admin asked for replaces it, and a driver that said it reconnects by
        # itself is restarted once its time to do so has run out (or on a start).
        if view.pair_pending:
            return _limited(view, Action.PAIR)
        restart = view.retry_due or view.connect_pending
        if view.state is State.DISCONNECTED and view.has_credentials and restart:
            return _limited(view, Action.RESUME)
        if view.connect_pending:
            return Action.SERVE  # already connected, or in a round: nothing to restart
        if in_round and view.round is Round.OVER and view.state in ROUND_STATES:
            return Action.EXPIRE_ROUND
        return Action.WAIT
    if view.pair_pending:
        return _limited(view, Action.PAIR)
    if in_round and view.state in ROUND_STATES:
        if view.round is Round.OVER:
            return Action.EXPIRE_ROUND
        if view.state in RECONNECTING_STATES and not view.retry_due:
            return Action.WAIT
        return _limited(view, Action.PAIR)
    if view.state is State.BANNED and not view.ban_over:
        return Action.RELEASE
    if view.state in WAITS_FOR_ADMIN:
        if view.connect_pending and view.has_credentials:
            return _limited(view, Action.RESUME)
        return Action.RELEASE
    if view.has_credentials:
        if view.state in RECONNECTING_STATES and not (view.retry_due or view.connect_pending):
            return Action.WAIT
        return _limited(view, Action.RESUME)
    if view.state in LIVE_STATES:
        # A stale live state with nothing to connect with: record the truth.
        return Action.CLOSE
    return Action.RELEASE


def needs_owner(view: SessionView) -> bool:
    """Whether some supervisor should hold this session's lease right now.

    Seen from outside (no connection open, any retry treated as due, under the
    ceiling): exactly the sessions for which :func:`plan` has something to do.
    """
    outside = dataclasses.replace(view, connection_open=False, retry_due=True, rate_ok=True)
    return plan(outside) is not Action.RELEASE


# -- clocks: QR rounds and the connection ceiling -------------------------------------


def round_status(started: float | None, now: float, limit: float) -> Round:
    """Where the round begun at ``started`` (epoch seconds, None: none) stands at ``now``."""
    if started is None:
        return Round.NONE
    return Round.LIVE if now < started + limit else Round.OVER


@dataclasses.dataclass(frozen=True)
class ConnectCeiling:
    """At most ``limit`` connection attempts per session in any ``window`` seconds.

    The attempts are kept in the row (epoch seconds, newest last), so the ceiling
    binds whoever owns the session: a takeover, a restart or a Stop and Start does
    not reset it.
    """

    limit: int = 6
    window: float = 60.0

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0:
            raise ValueError("need limit >= 1 and window > 0")

    def next_at(self, recent: Sequence[float], now: float) -> float:
        """The earliest moment a new attempt is allowed (``now`` if it is now)."""
        # Attempts stamped "in the future" (another host's clock) count too.
        inside = sorted(t for t in recent if t > now - self.window)
        if len(inside) < self.limit:
            return now
        return inside[len(inside) - self.limit] + self.window

    def record(self, recent: Sequence[float], now: float) -> list[float]:
        """``recent`` with an attempt at ``now``: only what the ceiling still needs."""
        inside = sorted(t for t in recent if t > now - self.window)
        return sorted([*inside, now])[-self.limit :]


# -- sharing the sessions between supervisors ---------------------------------------


def fair_share(wanted: int, my_cap: int, other_caps: Sequence[int]) -> int:
    """How many of the ``wanted`` sessions this supervisor should own.

    Water-filling over every live supervisor's cap: a capped supervisor takes at
    most its cap and the rest is split evenly (rounded up, so the shares always
    cover ``wanted`` when the caps allow it) over the others.
    """
    caps = sorted([*other_caps, my_cap])
    remaining, left = wanted, len(caps)
    for cap in caps:
        even = -(-remaining // left)  # ceil
        if cap >= even:
            return min(my_cap, even)
        remaining -= cap
        left -= 1
    return my_cap  # every cap is below an even split: everyone runs full


def shed_count(held: int, share: int) -> int:
    """How many sessions to hand over so another supervisor can take its share.

    Only past a slack of a tenth of the share (at least one), so that a few
    sessions stopping or starting do not move sessions around; when it does
    shed, it sheds down to the share.
    """
    slack = max(1, share // 10)
    return held - share if held > share + slack else 0


#: A session in the middle of a QR round is never handed over: its code would change.
_NOT_HANDED_OVER: frozenset[State] = frozenset({State.QR_REQUIRED, State.PAIRING})


#: Sessions up on WhatsApp: handing one over takes it down for a moment.
_UP: frozenset[State] = frozenset({State.CONNECTED, State.DEGRADED})


def pick_to_shed(sessions: Sequence[tuple[int, State | str, bool]], count: int) -> list[int]:
    """Which of ``(id, state, has_credentials)`` to hand over: linked devices only
    (the next owner resumes them without a QR), never one in a QR round; those not
    up first, then the newest.

    Those not up first: a supervisor still reconnecting sessions it took over
    when a newcomer joins hands the newcomer that work (its connects run in
    another process, and nothing up is taken down for them), instead of
    disconnecting sessions that were up while the ones it has not reached yet
    wait behind its queue (the chaos test's clean restart, on a slow machine)."""
    movable = [
        (State(state) in _UP, sid)
        for sid, state, linked in sessions
        if linked and State(state) not in _NOT_HANDED_OVER
    ]
    movable.sort(key=lambda item: (item[0], -item[1]))
    return [sid for _, sid in movable][: max(0, count)]
