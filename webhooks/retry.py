"""What an attempt's outcome means: pure, no I/O.

``schedule[i]`` is the wait in seconds before attempt ``i + 1`` (the first is
usually 0: at once). After attempt ``n`` fails the next comes ``schedule[n]``
seconds later; when the schedule is used up the delivery is dead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence


class Outcome(enum.StrEnum):
    """How one attempt ended (the ``outcome`` label of the deliveries metric)."""

    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410: the receiver asks us to stop; the endpoint is disabled
    FAILED = "failed"  # any other status, a timeout, a refused or reset connection
    REFUSED = "refused"  # the SSRF guard refused the address; retried like a failure


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What to write after an attempt: the new status and, for a retry, when."""

    status: str  # "delivered" | "pending" | "dead"
    next_attempt_at: dt.datetime | None = None


def classify(status_code: int | None) -> Outcome:
    """2xx delivered, 410 gone, anything else (or no answer: None) failed."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code == 410:
        return Outcome.GONE
    return Outcome.FAILED


def next_delay(schedule: Sequence[float], attempts: int) -> float | None:
    """Seconds until the next attempt after ``attempts`` were made; None: give up."""
    if attempts < len(schedule):
        return float(schedule[attempts])
    return None


def verdict(
    outcome: Outcome, attempts: int, schedule: Sequence[float], now: dt.datetime
) -> Verdict:
    """The delivery's next status after its ``attempts``-th attempt ended with ``outcome``.

    A 410 is final for the delivery as for the endpoint: it stays pending (the
    endpoint is disabled, so it waits for an operator to enable it again).
    """
    if outcome is Outcome.DELIVERED:
        return Verdict("delivered")
    if outcome is Outcome.GONE:
        return Verdict("pending", now)
    delay = next_delay(schedule, attempts)
    if delay is None:
        return Verdict("dead")
    return Verdict("pending", now + dt.timedelta(seconds=delay))


def should_disable(
    failing_since: dt.datetime | None, now: dt.datetime, disable_after: float
) -> bool:
    """An endpoint that has only failed for ``disable_after`` seconds is disabled."""
    return failing_since is not None and (now - failing_since).total_seconds() >= disable_after
