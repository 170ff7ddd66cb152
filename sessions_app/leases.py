"""Every SQL statement a supervisor runs about ownership: claim, renew, release and
fenced writes of observed state.

A lease is three columns on the session row: ``lease_owner``, ``lease_expires_at``
and ``lease_epoch`` (the fencing number, grown by every claim). Every write a
supervisor makes about a session ends in ``AND lease_owner = me AND lease_epoch =
e``; an update that matches no row means the lease was lost, and the caller must
drop that session's connection at once.

These functions are synchronous (they run in Django's thread pool through
``database_sync_to_async``) and hold no state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from ops import metrics
from sessions_app import compiled_sql, fenced_sql
from sessions_app.models import PhoneAction, SessionEvent, SupervisorPresence, WaSession
from sessions_app.states import LIVE_STATES, State, Trigger, is_allowed, transition
from webhooks import session_events

#: Observed columns that describe a QR round; cleared whenever the round is over.
QR_CLEARED: dict[str, Any] = {
    "qr_code": "",
    "qr_issued_at": None,
    "qr_expires_at": None,
    "pairing_code": "",
}


@dataclasses.dataclass(frozen=True)
class Lease:
    """Proof of ownership: carry it into every write about the session.

    A lease from :func:`claim` also brings the row as the claim left it
    (``claimed_row``) and whether the simulated phone had gestures waiting for it
    (``gestures_waiting``): the new runner's first step decides from them without
    a read. Neither takes part in comparing leases; any other lease has no row and
    ``gestures_waiting`` true (unknown: look).
    """

    session_id: int
    owner: str
    epoch: int
    claimed_row: WaSession | None = dataclasses.field(default=None, compare=False, repr=False)
    gestures_waiting: bool = dataclasses.field(default=True, compare=False, repr=False)

    def proof(self) -> Lease:
        """The lease without what its claim brought (a runner keeps this one)."""
        return Lease(self.session_id, self.owner, self.epoch)


@dataclasses.dataclass(frozen=True)
class EventRecord:
    """An event-log line written in the same transaction as a fenced update."""

    kind: str
    message: str
    from_state: str = ""
    to_state: str = ""


def _table() -> str:
    return connection.ops.quote_name(WaSession._meta.db_table)


def _expiry(ttl: float) -> tuple[str, list[Any]]:
    """SQL for "now + ttl" on the database's clock, so hosts need not agree on time.

    SQLite serves one host, whose clock is the only one: it gets the value.
    """
    if connection.vendor == "postgresql":
        return "statement_timestamp() + make_interval(secs => %s)", [float(ttl)]
    return "%s", [timezone.now() + dt.timedelta(seconds=ttl)]


def claim(
    owner: str, ttl: float, limit: int, session_ids: Collection[int] | None = None
) -> list[Lease]:
    """Take up to ``limit`` sessions that need an owner and have none, in one statement
    (with ``session_ids``: only among those). Each lease brings its row as the
    claim left it and whether a simulated phone gesture waits for it (the
    statement's ``RETURNING``): the new runner needs no read of its own on the way
    from "create" to the QR code.

    On PostgreSQL the inner SELECT is ``FOR UPDATE SKIP LOCKED``, so concurrent
    claimers never wait on each other and never take the same row; on SQLite
    (one process) the statement is serialised by the database lock instead. The
    filter is :meth:`~sessions_app.models.SessionQuerySet.claimable`'s, compiled
    once (:mod:`sessions_app.compiled_sql`): every supervisor runs this on every ring.
    """
    ids = None if session_ids is None else list(session_ids)
    if limit <= 0 or ids == []:
        return []
    table = _table()
    where, where_params = compiled_sql.where("claimable", WaSession.objects.claimable)
    among = "" if ids is None else f" AND id IN ({', '.join(['%s'] * len(ids))})"
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    expiry_sql, expiry_params = _expiry(ttl)
    gestures = connection.ops.quote_name(PhoneAction._meta.db_table)
    sql = (
        f"UPDATE {table} SET lease_owner = %s, lease_epoch = lease_epoch + 1, "
        f"lease_expires_at = {expiry_sql} WHERE id IN (SELECT id FROM {table} "
        f"WHERE {where}{among} ORDER BY lease_expires_at ASC, id ASC LIMIT %s{lock}) "
        f"RETURNING *, EXISTS (SELECT 1 FROM {gestures} WHERE session_id = {table}.id) "
        "AS gestures_waiting"
    )
    params = [owner, *expiry_params, *where_params, *(ids or []), limit]
    # In a transaction of its own, not autocommit: a claim whose answer is lost (the
    # connection cut, the call cancelled) is rolled back when the server ends the
    # transaction, instead of leaving a lease that its claimer never learnt of and
    # renews for good (the chaos test's partition found one without it). Manager.raw
    # runs the statement as it is read (inside the transaction) and converts each
    # column as a SELECT's would be.
    with transaction.atomic():
        rows = list(WaSession.objects.raw(sql, params))
    metrics.claims.inc(len(rows))
    return [_claimed(row, owner) for row in rows]


def _claimed(row: WaSession, owner: str) -> Lease:
    waiting = bool(vars(row).pop("gestures_waiting"))
    return Lease(row.pk, owner, row.lease_epoch, claimed_row=row, gestures_waiting=waiting)


def renew(owner: str, ttl: float) -> list[Lease]:
    """Extend every lease ``owner`` still holds, in one statement; return them."""
    expiry_sql, expiry_params = _expiry(ttl)
    where = "lease_owner = %s"
    if connection.vendor == "postgresql":
        # Rows locked in id order, as the message pumps' batches lock theirs
        # (messaging.outbound_batch): two transactions that lock many session rows
        # in one order cannot deadlock.
        where = f"id IN (SELECT id FROM {_table()} WHERE lease_owner = %s ORDER BY id FOR UPDATE)"
    sql = (
        f"UPDATE {_table()} SET lease_expires_at = {expiry_sql} WHERE {where} "
        f"RETURNING id, lease_epoch"
    )
    with metrics.renewing(), connection.cursor() as cursor:
        cursor.execute(sql, [*expiry_params, owner])
        rows = cursor.fetchall()
    return [Lease(session_id=row[0], owner=owner, epoch=row[1]) for row in rows]


def _fenced(lease: Lease) -> Any:
    return WaSession.objects.filter(
        pk=lease.session_id, lease_owner=lease.owner, lease_epoch=lease.epoch
    )


def write(lease: Lease, fields: Mapping[str, Any], event: EventRecord | None = None) -> bool:
    """Update observed columns if ``lease`` is still current; log ``event`` with it.

    Returns False when the lease was lost (or the session deleted): nothing was
    written, and the caller must stop the connection.
    """
    return _fenced_update(lease, fields, event)


def release(
    lease: Lease, fields: Mapping[str, Any] | None = None, event: EventRecord | None = None
) -> bool:
    """Give the lease back with a last fenced write (and its event), in one statement;
    False if it was already lost."""
    return _fenced_update(
        lease, {**(fields or {}), "lease_owner": "", "lease_expires_at": None}, event
    )


def _fenced_update(lease: Lease, fields: Mapping[str, Any], event: EventRecord | None) -> bool:
    if fenced_sql.applies():  # PostgreSQL: one statement, unless a webhook listens
        written = fenced_sql.write(lease, fields, event)
        if written is not None:
            return written
    listened = None
    with transaction.atomic():
        updated = _fenced(lease).update(**fields, version=F("version") + 1)
        if updated and event is not None:
            SessionEvent.objects.create(
                session_id=lease.session_id,
                kind=event.kind,
                message=event.message[:500],
                from_state=event.from_state,
                to_state=event.to_state,
                actor=f"supervisor:{lease.owner}",
                epoch=lease.epoch,
            )
        if updated:  # webhooks: in this transaction (the outbox)
            listened = session_events.fenced_write(
                lease.session_id,
                fields,
                event.kind if event else None,
                event.from_state if event else "",
                event.to_state if event else "",
                event.message if event else "",
                f"supervisor:{lease.owner}",
                lease.epoch,
            )
    fenced_sql.heard(lease.session_id, listened)
    return bool(updated)


def delete(lease: Lease) -> bool:
    """Delete the session row (and its log) if ``lease`` is still current."""
    with transaction.atomic():
        row = _fenced(lease).select_for_update().values_list("name", "state").first()
        if row is None:
            return False
        session_events.deleted(
            lease.session_id, row[0], row[1], f"supervisor:{lease.owner}", lease.epoch
        )
        deleted, _ = _fenced(lease).delete()
    fenced_sql.heard(lease.session_id, False)  # nothing of it to remember
    return bool(deleted)


def hand_over(owner: str, session_ids: Collection[int], why: str) -> list[int]:
    """Release these sessions for another supervisor, in one transaction: a live one
    is recorded as ``disconnected`` (with ``why`` in its log) first.

    The caller closed their connections already. One transaction for all of them,
    rather than one per session, is what keeps a shutdown with hundreds of sessions
    within a second or two: the others can claim only what was released.
    """
    now = timezone.now()
    with transaction.atomic():
        # Locked in id order, as the renewal locks them (the model's default order
        # is by name): two transactions that lock many session rows in one order
        # cannot deadlock.
        held = list(
            WaSession.objects.select_for_update()
            .filter(lease_owner=owner, pk__in=list(session_ids))
            .order_by("id")
            .values_list("id", "state", "lease_epoch")
        )
        events = []
        by_target: dict[State, list[int]] = {}
        for pk, state, epoch in held:
            if State(state) in LIVE_STATES and is_allowed(state, Trigger.DISCONNECTED):
                target = transition(state, Trigger.DISCONNECTED)
                by_target.setdefault(target, []).append(pk)
                events.append(
                    SessionEvent(
                        session_id=pk,
                        at=now,
                        kind=SessionEvent.Kind.STATE,
                        message=why[:500],
                        from_state=state,
                        to_state=target,
                        actor=f"supervisor:{owner}",
                        epoch=epoch,
                    )
                )
        for target, pks in by_target.items():
            WaSession.objects.filter(pk__in=pks).update(
                state=target, state_changed_at=now, **QR_CLEARED
            )
        SessionEvent.objects.bulk_create(events)
        for line in events:  # webhooks: in this transaction (the outbox)
            session_events.status_changed(
                line.session_id, line.from_state, line.to_state, why, line.actor, line.epoch, now
            )
        released = [pk for pk, _, _ in held]
        WaSession.objects.filter(pk__in=released).update(
            lease_owner="", lease_expires_at=None, version=F("version") + 1
        )
    metrics.handovers.inc(len(released))
    return released


def release_leases(owner: str, held: Collection[Lease]) -> int:
    """Give back exactly these leases (each fenced by its epoch), in one statement.

    For leases whose runner ended without releasing (self-fenced, crashed): only
    the epoch tells them from a lease claimed again a moment ago, whose runner may
    not be registered yet.
    """
    if not held:
        return 0
    match = Q()
    for lease in held:
        match |= Q(pk=lease.session_id, lease_epoch=lease.epoch)
    return WaSession.objects.filter(match, lease_owner=owner).update(
        lease_owner="", lease_expires_at=None
    )


def release_all(owner: str) -> int:
    """Give back every lease ``owner`` holds: a clean shutdown's last statement (its
    rows locked in id order, as :func:`renew` locks them)."""
    where = "lease_owner = %s"
    if connection.vendor == "postgresql":
        where = f"id IN (SELECT id FROM {_table()} WHERE lease_owner = %s ORDER BY id FOR UPDATE)"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_table()} SET lease_owner = '', lease_expires_at = NULL WHERE {where}",
            [owner],
        )
        return cursor.rowcount


def load(session_id: int) -> WaSession | None:
    """The session row as it is now, or None once it was deleted.

    One plain SELECT (``Manager.raw``): a runner's first step reads the row on the
    way from "create" to the QR code, and the ORM's compiling of ``filter().first()``
    took 0.46 ms of CPU against 0.17 ms for this (docs/benchmarks.md).
    """
    rows = WaSession.objects.raw(f"SELECT * FROM {_table()} WHERE id = %s", [session_id])
    return next(iter(rows), None)


# -- presence: who is there to share the work ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Census:
    """What a supervisor needs to know to take its fair share."""

    wanted: int  # sessions that need an owner, owned or not
    other_caps: list[int]  # the caps of the other live supervisors
    next_expiry: float | None  # seconds until another's lease or presence runs out


def announce(owner: str, ttl: float, max_sessions: int, held: int) -> None:
    """Say (again) that ``owner`` is alive until now + ``ttl``, on the database's clock."""
    table = connection.ops.quote_name(SupervisorPresence._meta.db_table)
    expiry_sql, expiry_params = _expiry(ttl)
    sql = (
        f"INSERT INTO {table} (owner, started_at, expires_at, max_sessions, sessions) "
        f"VALUES (%s, %s, {expiry_sql}, %s, %s) ON CONFLICT (owner) DO UPDATE SET "
        f"expires_at = excluded.expires_at, max_sessions = excluded.max_sessions, "
        f"sessions = excluded.sessions"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [owner, timezone.now(), *expiry_params, max_sessions, held])


def withdraw(owner: str) -> None:
    """Leave the census: a clean shutdown's first statement, so others take over all."""
    SupervisorPresence.objects.filter(owner=owner).delete()


def census(owner: str) -> Census:
    """Count the work and the workers; say when someone else's lease runs out next.

    Two statements (it runs on every ring, on the way from "create" to the QR
    code), the work counted with :meth:`~sessions_app.models.SessionQuerySet.
    needing_owner`'s filter compiled once (:mod:`sessions_app.compiled_sql`);
    every time on the database's clock.
    """
    table = _table()
    presence = connection.ops.quote_name(SupervisorPresence._meta.db_table)
    now = compiled_sql.now()
    work, work_params = compiled_sql.where("needing_owner", WaSession.objects.needing_owner)
    others_lease = (
        f"CASE WHEN lease_owner <> '' AND lease_owner <> %s AND lease_expires_at > {now} "
        "THEN lease_expires_at END"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*), {compiled_sql.until(f'MIN({others_lease})')} "
            f"FROM {table} WHERE {work}",
            [owner, *work_params],
        )
        wanted, next_lease = cursor.fetchone()
        cursor.execute(
            f"SELECT max_sessions, {compiled_sql.until('expires_at')} FROM {presence} "
            f"WHERE expires_at > {now} AND owner <> %s",
            [owner],
        )
        alive = cursor.fetchall()
    lefts = [compiled_sql.seconds_left(left) for left in [next_lease, *(a[1] for a in alive)]]
    upcoming = [left for left in lefts if left is not None]
    return Census(
        wanted=int(wanted),
        other_caps=[int(cap) for cap, _ in alive],
        next_expiry=max(0.0, min(upcoming)) if upcoming else None,
    )


def held_sessions(owner: str) -> list[tuple[int, str, bool]]:
    """``(id, state, has_credentials)`` of every session ``owner`` holds."""
    rows = WaSession.objects.filter(lease_owner=owner).values_list("id", "state", "jid")
    return [(sid, state, bool(jid)) for sid, state, jid in rows]
