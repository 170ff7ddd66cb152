"""Every metric waconnect exports, defined once: the per-process ones in the default
registry, the database-wide gauges as :data:`DATABASE_GAUGES` (names and help texts).

Names follow Prometheus' conventions: the ``waconnect_`` prefix, the unit in the
name (``_seconds``), ``_total`` on counters, histograms for latencies. This module
imports nothing but prometheus-client, so the supervisor, the lease code and the
drivers can count with a one-line call (``metrics.claims.inc(n)``) without
pulling Django or each other in.

These are *per process* (each ``run_supervisor`` on its ``--metrics-port``; the
web process too when the supervisor runs inside ``runserver``). What the database
says about all sessions is counted at scrape time by the web tier instead
(:mod:`ops.collector`), so that N supervisors do not report it N times.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No ``*_created`` series beside every counter and histogram: Prometheus does not
# need them, and they would double what a scrape carries.
disable_created_metrics()

#: Why a connection ended, as the driver reported it (the ``cause`` label).
DISCONNECT_CAUSES = (
    "network",  # dropped; the driver (whatsmeow) reconnects by itself
    "disconnected",  # dropped; the supervisor reconnects after a backoff
    "error",  # failed or broke (a crashed neonize worker is one); backoff
    "logged_out",  # the phone removed the device
    "replaced",  # another connection took the device over
    "banned",  # a temporary ban
    "qr_timeout",  # every QR code of a round expired unscanned
)

#: Causes a reconnect follows (the subset of :data:`DISCONNECT_CAUSES` that is retried).
RECONNECT_CAUSES = ("network", "disconnected", "error", "replaced", "banned")

#: How a QR round ended (the ``outcome`` label).
QR_OUTCOMES = (
    "paired",  # the phone scanned a code
    "timeout",  # every code expired unscanned
    "failed",  # the connection broke during the round
    "cancelled",  # closed by the supervisor: stopped, logged out, handed over
)

# -- leases ----------------------------------------------------------------------------

sessions_held = Gauge(
    "waconnect_supervisor_sessions_held",
    "Sessions this process's supervisors run now (one lease and one runner each).",
)
claims = Counter(
    "waconnect_lease_claims_total",
    "Sessions claimed: a lease taken with a new fencing number (start, take-over, failover).",
)
handovers = Counter(
    "waconnect_lease_handovers_total",
    "Sessions handed over to other supervisors (clean shutdown, or shed to balance the load).",
)
self_fences = Counter(
    "waconnect_self_fences_total",
    "Times a supervisor dropped all its connections because it could not renew its leases "
    "within the lease TTL minus the self-fence margin.",
)
lease_renewal = Histogram(
    "waconnect_lease_renewal_duration_seconds",
    "Duration of one renewal statement of all of a supervisor's leases. Past "
    "WACONNECT_LEASE_TTL - WACONNECT_SELF_FENCE_MARGIN (13 s by default) the supervisor "
    "fences itself.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 13),
)
lease_renewal_failures = Counter(
    "waconnect_lease_renewal_failures_total",
    "Renewal statements that raised (database unreachable, connection dropped).",
)
lease_last_renewal = Gauge(
    "waconnect_lease_last_renewal_timestamp_seconds",
    "Unix time of the last successful lease renewal in this process.",
)

# -- connections -----------------------------------------------------------------------

disconnects = Counter(
    "waconnect_disconnects_total",
    "Connections that ended without being asked to, by cause (see DISCONNECT_CAUSES).",
    ["cause"],
)
reconnects = Counter(
    "waconnect_reconnects_total",
    "Connections opened again after one ended, by the cause of the end; 'network' counts "
    "the driver's own reconnects (whatsmeow) as well as restarted ones.",
    ["cause"],
)
worker_starts = Counter(
    "waconnect_worker_starts_total",
    "neonize worker processes started (warm pool included).",
)
worker_crashes = Counter(
    "waconnect_worker_crashes_total",
    "neonize worker processes that failed: exited or were killed unasked, fell silent past "
    "the heartbeat deadline, or broke the wire protocol. Each is that session's error.",
)

# -- QR codes --------------------------------------------------------------------------

qr_rounds_started = Counter(
    "waconnect_qr_rounds_started_total",
    "QR rounds started (a connection opened to pair a new device).",
)
qr_rounds_ended = Counter(
    "waconnect_qr_rounds_ended_total",
    "QR rounds ended, by outcome (see QR_OUTCOMES).",
    ["outcome"],
)
qr_codes = Counter(
    "waconnect_qr_codes_total",
    "QR codes issued by WhatsApp (about six per unscanned round).",
)
qr_push_latency = Histogram(
    "waconnect_qr_push_latency_seconds",
    "From a QR code reaching the supervisor to its push to the browsers (written to the "
    "database, snapshot built, sent to the channel layer).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# -- messages --------------------------------------------------------------------------

#: How an outbound message's send ended (the ``outcome`` label of messages_sent).
SEND_OUTCOMES = (
    "sent",  # WhatsApp acknowledged it
    "failed",  # refused (not on WhatsApp, invalid, rate limited, ...): not sent
    "unknown",  # asked, no answer (timeout, connection or owner lost): never resent
    "expired",  # not sent before its deadline
)
#: Receipt statuses that moved a message forward (the ``status`` label).
RECEIPT_STATUSES = ("delivered", "read")

messages_sent = Counter(
    "waconnect_messages_sent_total",
    "Outbound messages by how their send ended (see SEND_OUTCOMES); a late acknowledgement "
    "of an unknown one counts again as sent.",
    ["outcome"],
)
messages_requeued = Counter(
    "waconnect_messages_requeued_total",
    "Sends the driver refused as not connected (never reached WhatsApp): queued again.",
)
messages_received = Counter(
    "waconnect_messages_received_total",
    "Incoming messages stored, each once (redeliveries after a reconnect are not counted).",
)
message_receipts = Counter(
    "waconnect_message_receipts_total",
    "Outbound messages a receipt moved forward, by the status reached.",
    ["status"],
)
message_send = Histogram(
    "waconnect_message_send_seconds",
    "From recording a message sending (before the driver is asked) to WhatsApp's "
    "acknowledgement reaching the supervisor.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 75),
)

# -- webhooks --------------------------------------------------------------------------

#: How a webhook attempt ended (the ``outcome`` label); see webhooks/retry.py.
WEBHOOK_OUTCOMES = ("delivered", "failed", "gone", "refused")

webhook_deliveries = Counter(
    "waconnect_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered (2xx), failed (another status, a timeout, a "
    "refused or reset connection; retried on the schedule), gone (410: the endpoint is "
    "disabled), refused (the SSRF guard refused the address).",
    ["outcome"],
)
webhook_dead = Counter(
    "waconnect_webhook_dead_total",
    "Webhook deliveries that used up the retry schedule (dead letters; redeliverable).",
)
webhook_delivery_latency = Histogram(
    "waconnect_webhook_delivery_latency_seconds",
    "From an event's commit (its created_at) to the receiver's 2xx, retries included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 36000),
)
webhook_attempt_duration = Histogram(
    "waconnect_webhook_attempt_duration_seconds",
    "Duration of one webhook HTTP attempt (connect, send, bounded read), whatever its outcome.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
gc_pause = Histogram(
    "waconnect_gc_pause_seconds",
    "Duration of one garbage collection by generation (0, 1, 2): the whole process "
    "(event loop and threads) stands still meanwhile. See ops/heap.py.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)

for _cause in DISCONNECT_CAUSES:
    disconnects.labels(_cause)
for _cause in RECONNECT_CAUSES:
    reconnects.labels(_cause)
for _outcome in QR_OUTCOMES:
    qr_rounds_ended.labels(_outcome)
for _outcome in SEND_OUTCOMES:
    messages_sent.labels(_outcome)
for _status in RECEIPT_STATUSES:
    message_receipts.labels(_status)
for _outcome in WEBHOOK_OUTCOMES:
    webhook_deliveries.labels(_outcome)
for _generation in ("0", "1", "2"):  # exported (at 0) before the first timed collection
    gc_pause.labels(_generation)

# -- database-wide gauges (web tier only) ----------------------------------------------

#: Read from the database at scrape time by :class:`ops.collector.DatabaseCollector`,
#: served by the web tier's ``/metrics`` only: name -> (help, label names).
DATABASE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "waconnect_database_up": (
        "1 if the web tier could read the session counts from the database at this scrape.",
        (),
    ),
    "waconnect_sessions": ("Sessions by observed state (what their owner last saw).", ("state",)),
    "waconnect_sessions_desired": (
        "Sessions by desired state (what an admin asked for).",
        ("desired_state",),
    ),
    "waconnect_sessions_awaiting_owner": (
        "Sessions that need a supervisor and have none (no lease, or an expired one). "
        "Above 0 for long: no supervisor is running, or all are at their cap.",
        (),
    ),
    "waconnect_qr_request_oldest_age_seconds": (
        "Age of the oldest QR round asked for that shows no QR code yet (0 if none).",
        (),
    ),
    "waconnect_supervisors_alive": (
        "Supervisors whose presence row has not expired (renewed with their leases).",
        (),
    ),
    "waconnect_messages_outbound": (
        "Outbound messages not finished, by status: queued (waiting for their session's "
        "connection, their turn or the pacing) and sending (asked for, WhatsApp's answer "
        "not recorded yet).",
        ("status",),
    ),
    "waconnect_messages_oldest_queued_age_seconds": (
        "Age of the oldest outbound message still queued, from its request (0 if none).",
        (),
    ),
    "waconnect_webhook_backlog": (
        "Webhook deliveries by status: pending (waiting for their turn or a retry), "
        "delivering (claimed, in flight) and dead (schedule used up; redeliverable).",
        ("status",),
    ),
    "waconnect_webhook_backlog_oldest_age_seconds": (
        "Age of the oldest pending or delivering webhook delivery (0 if none).",
        (),
    ),
}

# -- the supervisors in this process ---------------------------------------------------

_supervisors: weakref.WeakSet[Any] = weakref.WeakSet()


def track(supervisor: Any) -> Any:
    """Count ``supervisor``'s runners in :data:`sessions_held` while it lives; returns it."""
    _supervisors.add(supervisor)
    return supervisor


sessions_held.set_function(lambda: sum(len(s.runners) for s in list(_supervisors)))

# -- QR code → push --------------------------------------------------------------------

_qr_seen: dict[int, float] = {}


def qr_arrived(session_id: int, at: float) -> None:
    """A QR code for ``session_id`` reached the supervisor at ``at`` (perf_counter)."""
    _qr_seen[session_id] = at


def pushed(snapshot: dict[str, Any], at: float) -> None:
    """A snapshot was pushed at ``at``: if it shows the QR code last seen, time it."""
    if snapshot.get("qr_code"):
        seen = _qr_seen.pop(snapshot.get("id"), None)  # type: ignore[arg-type]
        if seen is not None:
            qr_push_latency.observe(max(0.0, at - seen))


# -- lease renewal ---------------------------------------------------------------------


@contextlib.contextmanager
def renewing() -> Iterator[None]:
    """Time one renewal statement; count it as failed if it raises, else note when."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        lease_renewal_failures.inc()
        raise
    finally:
        lease_renewal.observe(time.perf_counter() - started)
    lease_last_renewal.set_to_current_time()
