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

    PAIR = "pair"  # open a new-device connection: a QR round the admin asked for
    RESUME = "resume"  # open a connection with the stored credentials
    CLOSE = "close"  # close any connection and record `stopped`
    LOGOUT = "logout"  # unlink the device, forget its credentials, record `logged_out`
    DELETE = "delete"  # close, unlink and forget the device, delete the session row
    WAIT = "wait"  # keep the current connection, or wait for the retry time
    RELEASE = "release"  # nothing to run: give the lease back


@dataclasses.dataclass(frozen=True)
class SessionView:
    """Everything :func:`plan` needs to know about one session."""

    desired: Desired
    state: State
    has_credentials: bool
    pair_pending: bool = False  # the admin asked for a QR round not served yet
    connect_pending: bool = False  # the admin pressed start/reconnect, not served yet
    connection_open: bool = False  # this owner has a driver connection open
    retry_due: bool = True  # the backoff delay (if any) has passed
    ban_over: bool = True  # no temporary ban, or it has expired


def plan(view: SessionView) -> Action:
    """Decide the next step; total over every combination of inputs."""
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
    if view.connection_open:
        # Never reconnect on top of a live connection: only a new QR round the
        # admin asked for replaces it, and a driver that said it reconnects by
        # itself is restarted once its time to do so has run out.
        if view.pair_pending:
            return Action.PAIR
        if view.state is State.DISCONNECTED and view.retry_due and view.has_credentials:
            return Action.RESUME
        return Action.WAIT
    if view.pair_pending:
        if view.state in RECONNECTING_STATES and not view.retry_due:
            return Action.WAIT
        return Action.PAIR
    if view.state is State.BANNED and not view.ban_over:
        return Action.RELEASE
    if view.state in WAITS_FOR_ADMIN:
        if view.connect_pending and view.has_credentials:
            return Action.RESUME
        return Action.RELEASE
    if view.has_credentials:
        if view.state in RECONNECTING_STATES and not view.retry_due:
            return Action.WAIT
        return Action.RESUME
    if view.state in LIVE_STATES:
        # A stale live state with nothing to connect with: record the truth.
        return Action.CLOSE
    return Action.RELEASE


def needs_owner(view: SessionView) -> bool:
    """Whether some supervisor should hold this session's lease right now.

    Seen from outside (no connection open, any retry treated as due): exactly the
    sessions for which :func:`plan` has something to do.
    """
    outside = dataclasses.replace(view, connection_open=False, retry_due=True)
    return plan(outside) is not Action.RELEASE


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


def pick_to_shed(sessions: Sequence[tuple[int, State | str, bool]], count: int) -> list[int]:
    """Which of ``(id, state, has_credentials)`` to hand over: linked devices only
    (the next owner resumes them without a QR), never one in a QR round, newest first."""
    movable = [
        sid for sid, state, linked in sessions if linked and State(state) not in _NOT_HANDED_OVER
    ]
    return sorted(movable, reverse=True)[: max(0, count)]
