"""The lease owner's database calls, each run in the supervisor's own threads.

Every call a supervisor or its session runners make to the database goes
through this module, awaited as ``owner_db.load(...)``, ``owner_db.renew(...)``
and so on (a test replaces one of them in one place: ``monkeypatch.setattr(
owner_db, "renew", ...)``). Session work runs in the supervisor's database
threads (:func:`~sessions_app.dbthread.supervisor_db`), each caller's calls in
the order it awaits them; renewal and presence in the lease thread
(:func:`~sessions_app.dbthread.lease_db`), never behind session writes. The
SQL itself is in :mod:`sessions_app.leases`; the functions here add what the
owner publishes afterwards (a snapshot and a list row for the browsers, see
:mod:`sessions_app.snapshots`).

Every write is fenced by the lease (owner and epoch): a call that matched no row
returns ``None`` (or ``False``), and the caller raises :class:`LeaseLost`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection, connections
from django.utils import timezone

from sessions_app import leases, policy, snapshots
from sessions_app.dbthread import lease_db, supervisor_db
from sessions_app.leases import EventRecord, Lease
from sessions_app.models import PhoneAction, WaSession

#: A published change: (the session's snapshot, its list row), both JSON-ready dicts
#: for :func:`sessions_app.doorbell.publish`.
Published = tuple[dict[str, Any], dict[str, Any]]


class LeaseLost(Exception):
    """A fenced write matched no row: someone else owns the session now (or it is gone)."""


#: Simulated phone gestures older than this are dropped unapplied.
GESTURE_MAX_AGE = dt.timedelta(seconds=30)

#: The columns whose change a runner must act on that it did not write itself:
#: intent (the web side's) and lease. The periodic pass compares them in one query.
WATCHED_FIELDS = ("desired_state", "pair_request", "connect_request", "lease_owner", "lease_epoch")


def watched(session: WaSession) -> tuple[Any, ...]:
    """The :data:`WATCHED_FIELDS` of ``session``, in order."""
    return tuple(getattr(session, name) for name in WATCHED_FIELDS)


@supervisor_db
def write(
    lease: Lease,
    fields: dict[str, Any],
    event: EventRecord | None,
    row: WaSession | None = None,
) -> Published | None:
    """Fenced write; on success the snapshot and list row to publish.

    With ``row`` (the session as just read by this owner, the only writer of
    observed columns) the snapshot is built from it plus ``fields`` instead of
    reading the row again; the event log is sent only when it changed. This
    keeps a QR rotation to two statements on the path to the browser.
    """
    if not leases.write(lease, fields, event):
        return None
    session = row if row is not None else leases.load(lease.session_id)
    if session is None:
        return None
    if row is not None:
        for name, value in fields.items():
            if not hasattr(value, "resolve_expression"):  # SQL expressions stay unread
                setattr(row, name, value)
        row.version += 1
    with_events = event is not None or row is None
    return snapshots.snapshot(session, with_events=with_events), snapshots.row(session)


@supervisor_db
def release(
    lease: Lease, fields: dict[str, Any], event: EventRecord | None = None
) -> Published | None:
    """Fenced release of one lease with ``fields``; the snapshot and list row to publish."""
    if not leases.release(lease, fields, event):
        return None
    session = leases.load(lease.session_id)
    if session is None:
        return None
    return snapshots.snapshot(session), snapshots.row(session)


@supervisor_db
def hand_over(owner: str, session_ids: list[int], why: str) -> list[Published]:
    """Hand sessions over; the snapshots and list rows to publish."""
    released = leases.hand_over(owner, session_ids, why)
    sessions = WaSession.objects.filter(pk__in=released)
    return [(snapshots.snapshot(s, with_events=False), snapshots.row(s)) for s in sessions]


#: A simulated phone gesture and its payload (a peer's message: sender and text,
#: never logged; empty for the others).
Gesture = tuple[str, dict[str, Any]]


@supervisor_db
def load_taking_gestures(lease: Lease) -> tuple[WaSession | None, list[Gesture]]:
    """:func:`sessions_app.leases.load` and :func:`take_gestures` in one call of the
    thread: a runner's first step (simulated driver) is on the way from "create" to
    the QR code, and each call is a thread hop."""
    return leases.load(lease.session_id), _take_gestures(lease)


@supervisor_db
def take_gestures(lease: Lease) -> list[Gesture]:
    """Take the simulated phone's pending gestures, with their payloads, fenced like
    every owner's write (a runner that lost its lease takes none of its
    successor's); stale ones are dropped unapplied."""
    return _take_gestures(lease)


def _take_gestures(lease: Lease) -> list[Gesture]:
    # One plain SELECT (it runs in the first step of every simulated session, on the
    # way to the QR code; the ORM's join compiled in 0.5 ms); a DELETE only if any.
    quote = connection.ops.quote_name
    actions = list(
        PhoneAction.objects.raw(
            f"SELECT a.* FROM {quote(PhoneAction._meta.db_table)} a "
            f"JOIN {quote(WaSession._meta.db_table)} s ON s.id = a.session_id "
            "WHERE a.session_id = %s AND s.lease_owner = %s AND s.lease_epoch = %s "
            "ORDER BY a.id",
            [lease.session_id, lease.owner, lease.epoch],
        )
    )
    if actions:
        PhoneAction.objects.filter(pk__in=[a.pk for a in actions]).delete()
    fresh_since = timezone.now() - GESTURE_MAX_AGE
    return [(a.gesture, a.payload) for a in actions if a.created_at >= fresh_since]


@supervisor_db
def owned_changes(owner: str) -> tuple[dict[int, tuple[Any, ...]], set[int]]:
    """For the periodic pass, in two queries: the watched columns of every session
    ``owner`` holds, and the sessions with a simulated phone gesture waiting."""
    rows = WaSession.objects.filter(lease_owner=owner).values_list("id", *WATCHED_FIELDS)
    gestured = PhoneAction.objects.filter(session__lease_owner=owner).values_list(
        "session_id", flat=True
    )
    return {row[0]: tuple(row[1:]) for row in rows}, set(gestured)


@supervisor_db
def census_and_claim(
    owner: str, ttl: float, my_cap: int, running: int, batch: int
) -> tuple[leases.Census, int, list[Lease] | None]:
    """The census, this supervisor's fair share of the work, and a first claim of up to
    ``batch`` sessions within it, in one call of the thread (two on the way from
    "create" to the QR code before). ``running``: the sessions it runs now. ``None``
    instead of a claim when there is no room or it holds enough to shed some (the
    caller sheds first, then claims as before).
    """
    census = leases.census(owner)
    share = policy.fair_share(census.wanted, my_cap, census.other_caps)
    room = min(share - running, batch)
    if room <= 0 or policy.shed_count(running, share):
        return census, share, None
    return census, share, leases.claim(owner, ttl, room)


# The lease SQL as it is, in the thread it belongs to (see sessions_app.leases).
load = supervisor_db(leases.load)
claim = supervisor_db(leases.claim)
delete = supervisor_db(leases.delete)
release_all = supervisor_db(leases.release_all)
withdraw = supervisor_db(leases.withdraw)
census = supervisor_db(leases.census)
held = supervisor_db(leases.held_sessions)
renew = lease_db(leases.renew)
release_leases = lease_db(leases.release_leases)
announce = lease_db(leases.announce)
#: Give back a kept SQLite connection at shutdown (one thread there); on PostgreSQL
#: every call has given its pooled connection back already.
close = supervisor_db(connections.close_all)
close_lease = lease_db(connections.close_all)
