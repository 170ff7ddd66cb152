"""Every statement a dispatcher runs about deliveries: claim, finish, redeliver, count.

Own SQL rather than a job queue library because the claim is the product's rule,
not a generic queue's: only the head of a lane (the pending or delivering
delivery with the lowest ``seq`` of its (endpoint, session)) may be claimed, so a
receiver sees each session's events in order, while lanes go in parallel.

A claim is one statement, like :func:`sessions_app.leases.claim`: ``UPDATE … SET
status='delivering', claim_owner=me, claim_expires_at=now()+ttl, attempts =
attempts + 1 WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING …``.
Concurrent dispatchers never wait on each other and never take the same row: a
row one of them is claiming is skipped by the others, and the lane's next row is
not a head while that one is pending or delivering. A claim whose owner died
expires and is taken again (that delivery may then arrive twice: the
``webhook-id`` lets the receiver tell). Every finishing write is fenced by
``(claim_owner, attempts)``: a dispatcher whose claim expired and was taken
again writes nothing. On SQLite (one process) the same statement runs without
SKIP LOCKED, serialised by the database lock.

Synchronous functions without state, run in the dispatcher's database thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, F, Min, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from webhooks import delivery_pg, retry
from webhooks.models import Delivery, Endpoint, Event, SessionSequence

S = Delivery.Status
UNFINISHED = (S.PENDING, S.DELIVERING)


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A claimed delivery with what its attempt needs."""

    id: int
    attempts: int  # this attempt's number (1 for the first); with the owner, the fence
    endpoint_id: int
    session_id: int  # the lane is (endpoint_id, session_id)
    url: str
    secrets: tuple[str, ...]
    event_id: str
    body: str  # the exact JSON text sent and signed
    created_at: dt.datetime  # the event's, for the latency metric
    endpoint_failing: bool = False  # its failure clock ran when claimed


def _table() -> str:
    return connection.ops.quote_name(Delivery._meta.db_table)


def _expiry(ttl: float) -> tuple[str, list[Any]]:
    """SQL for now + ``ttl`` on the database's clock (SQLite: this host's, the only one)."""
    if connection.vendor == "postgresql":
        return "statement_timestamp() + make_interval(secs => %s)", [float(ttl)]
    return "%s", [
        connection.ops.adapt_datetimefield_value(timezone.now() + dt.timedelta(seconds=ttl))
    ]


class DatabaseNow(Now):
    """Django's ``Now()``, but on SQLite to the end of its millisecond.

    SQLite's ``NOW`` is text to the millisecond (``… HH:MM:SS.SSS``) while a time
    written from Python has microseconds (``….SSSuuu``), which compares after it:
    a delivery made due "now" (a lane's next, a retry at once, a redelivery) was not
    due for the rest of that millisecond, and a claim in it found nothing (the
    dispatcher then waited up to 0.2 s). ``….SSS999`` is at or after every time
    written in that millisecond."""

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        sql, params = super().as_sqlite(compiler, connection, **extra_context)
        return f"({sql} || '999')", params


def _earlier_unfinished() -> Any:
    return Delivery.objects.filter(
        endpoint_id=OuterRef("endpoint_id"),
        session_id=OuterRef("session_id"),
        seq__lt=OuterRef("seq"),
        status__in=UNFINISHED,
    )


def claimable() -> Any:
    """Deliveries that may be attempted now: scheduled and due (only lane heads are
    scheduled), or in flight with an expired claim; of an enabled endpoint; and —
    the guard that keeps a redelivered older one first — with nothing earlier of
    their lane unfinished.

    Reads only due rows (the ``webhooks_due`` index), never a lane's queue.
    """
    return (
        Delivery.objects.filter(endpoint__enabled=True)
        .filter(
            Q(status=S.PENDING, next_attempt_at__lte=DatabaseNow())
            | Q(status=S.DELIVERING, claim_expires_at__lt=Now())
        )
        .filter(~Exists(_earlier_unfinished()))
    )


def claim(owner: str, ttl: float, limit: int) -> list[Claimed]:
    """Claim up to ``limit`` due lane heads, oldest due first, in one statement (on
    PostgreSQL one round trip: the endpoint and the event come back with the claim)."""
    if limit <= 0:
        return []
    if connection.vendor == "sqlite" and not claimable().exists():
        # SQLite's write transactions take the database lock (BEGIN IMMEDIATE): read
        # first, so an idle pass does not hold up the supervisor's writes.
        return []
    inner_sql, inner_params = _claimable_sql(connection.vendor, limit)
    expiry_sql, expiry_params = _expiry(ttl)
    update = (
        f"UPDATE {_table()} SET status = %s, claim_owner = %s, "
        f"claim_expires_at = {expiry_sql}, attempts = attempts + 1 "
    )
    params = [S.DELIVERING, owner, *expiry_params, *inner_params]
    if connection.vendor == "postgresql":
        return _claim_joined(update, inner_sql, params)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"{update} WHERE id IN ({inner_sql}) "
                f"RETURNING id, attempts, endpoint_id, event_id, session_id",
                params,
            )
            rows = cursor.fetchall()
        if not rows:
            return []
        endpoints = {e.pk: e for e in Endpoint.objects.filter(pk__in={r[2] for r in rows})}
        events = {
            e["id"]: e
            for e in Event.objects.filter(pk__in={r[3] for r in rows}).values(
                "id", "payload", "created_at"
            )
        }
    now = timezone.now()
    signing = {pk: _signing(e, now) for pk, e in endpoints.items()}
    return [
        _claimed(
            row,
            endpoints[row[2]].url,
            signing[row[2]],
            _dumps(events[row[3]]["payload"]),
            events[row[3]]["created_at"],
        )
        for row in rows
    ]


@functools.lru_cache(maxsize=64)
def _claimable_sql(vendor: str, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The inner SELECT of a claim, compiled once per database kind and batch size
    (it depends on nothing else: times are the database's ``now()``); on PostgreSQL
    written out (:func:`webhooks.delivery_pg.claimable_sql`)."""
    if vendor == "postgresql":
        return delivery_pg.claimable_sql(limit), ()
    inner = (
        claimable()
        .order_by("next_attempt_at", "id")
        .select_for_update(skip_locked=True, of=("self",))
        .values("id")[:limit]
    )
    with transaction.atomic():  # Django compiles FOR UPDATE only inside one
        return inner.query.sql_with_params()


def _claim_joined(update: str, inner_sql: str, params: list[Any]) -> list[Claimed]:
    """PostgreSQL: the claim, its endpoints and its events in one autocommitted
    statement (``UPDATE … FROM`` may return the joined rows' columns)."""
    rows = delivery_pg.claim_rows(update, inner_sql, params)
    now = timezone.now()
    # A batch is mostly one endpoint's: its secrets are worked out once per batch.
    endpoints: dict[tuple[Any, ...], Signing] = {}
    out = []
    for row in rows:
        url, secret, previous, previous_expires, failing_since, payload, created_at = row[5:]
        key = (row[2], url, secret, previous, previous_expires, failing_since)
        known = endpoints.get(key)
        if known is None:
            endpoint = Endpoint(
                pk=row[2],
                url=url,
                secret=secret,
                previous_secret=previous,
                previous_secret_expires_at=previous_expires,
                failing_since=failing_since,
            )
            known = endpoints[key] = _signing(endpoint, now)
        body = _dumps(json.loads(payload) if isinstance(payload, str) else payload)
        out.append(_claimed(row, url, known, body, created_at))
    return out


Signing = tuple[tuple[str, ...], bool]


def _signing(endpoint: Endpoint, now: dt.datetime) -> Signing:
    """What a claim needs of its endpoint beyond the URL, worked out once per endpoint
    and batch: the secrets that sign now, and whether its failure clock runs."""
    return tuple(endpoint.signing_secrets(now)), endpoint.failing_since is not None


def _claimed(row: Any, url: str, signing: Signing, body: str, created_at: dt.datetime) -> Claimed:
    """``row``: the claim's ``(id, attempts, endpoint_id, event_id, session_id, …)``."""
    pk, attempts, endpoint_id, event_id, session_id = row[:5]
    secrets, failing = signing
    return Claimed(
        id=pk,
        attempts=attempts,
        endpoint_id=endpoint_id,
        session_id=session_id,
        url=url,
        secrets=secrets,
        event_id=event_id,
        body=body,
        created_at=created_at,
        endpoint_failing=failing,
    )


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class Result:
    """What one attempt got, to record."""

    status_code: int | None
    error: str = ""
    response: str = ""
    refused: bool = False


def finish(
    owner: str,
    claimed: Claimed,
    result: Result,
    schedule: tuple[float, ...],
    disable_after: float,
) -> tuple[retry.Outcome, str] | None:
    """Record an attempt: delivered, retried later, dead; a 410 or an endpoint that
    only failed for ``disable_after`` seconds disables the endpoint.

    Returns ``(outcome, new status)``, or None if the claim was lost meanwhile
    (expired and taken by another dispatcher): nothing written.
    """
    return finish_many(owner, [(claimed, result)], schedule, disable_after)[0]


def finish_many(
    owner: str,
    attempts: list[tuple[Claimed, Result]],
    schedule: tuple[float, ...],
    disable_after: float,
) -> list[tuple[retry.Outcome, str] | None]:
    """:func:`finish` for several attempts in one transaction (one commit, not one
    each). On PostgreSQL the fenced outcomes are one ``UPDATE … FROM unnest(…)`` (one
    array per column: the same statement text for every batch size) and the lanes'
    promotions one more: a few round trips per batch, not three per attempt — the
    dispatcher's database thread was its bottleneck."""
    if connection.vendor != "postgresql":
        with transaction.atomic():
            return [_record(owner, c, r, schedule, disable_after) for c, r in attempts]
    now = timezone.now()
    verdicts = [_verdict(claimed, result, schedule, now) for claimed, result in attempts]
    with transaction.atomic():
        updated = _update_outcomes(owner, attempts, verdicts, now)
        finished = {
            (claimed.endpoint_id, claimed.session_id)
            for (claimed, _), (_, verdict) in zip(attempts, verdicts, strict=True)
            if claimed.id in updated and verdict.status in (S.DELIVERED, S.DEAD)
        }
        delivery_pg.promote_lanes(sorted(finished), now)
        cleared: set[int] = set()  # endpoints whose failure clock this batch cleared
        out: list[tuple[retry.Outcome, str] | None] = []
        for (claimed, result), (outcome, verdict) in zip(attempts, verdicts, strict=True):
            if claimed.id not in updated:
                out.append(None)
                continue
            if outcome is retry.Outcome.DELIVERED:
                if claimed.endpoint_failing and claimed.endpoint_id not in cleared:
                    cleared.add(claimed.endpoint_id)
                    _endpoint_effects(claimed, result, outcome, now, disable_after)
            else:
                cleared.discard(claimed.endpoint_id)
                _endpoint_effects(claimed, result, outcome, now, disable_after)
            out.append((outcome, verdict.status))
        return out


def _verdict(
    claimed: Claimed, result: Result, schedule: tuple[float, ...], now: dt.datetime
) -> tuple[retry.Outcome, retry.Verdict]:
    outcome = retry.Outcome.REFUSED if result.refused else retry.classify(result.status_code)
    return outcome, retry.verdict(outcome, claimed.attempts, schedule, now)


def _update_outcomes(
    owner: str,
    attempts: list[tuple[Claimed, Result]],
    verdicts: list[tuple[retry.Outcome, retry.Verdict]],
    now: dt.datetime,
) -> set[int]:
    rows = [
        (c.id, c.attempts, v.status, v.next_attempt_at, r.status_code, r.error, r.response)
        for (c, r), (_, v) in zip(attempts, verdicts, strict=True)
    ]
    return delivery_pg.update_outcomes(owner, rows, now)


def _record(
    owner: str,
    claimed: Claimed,
    result: Result,
    schedule: tuple[float, ...],
    disable_after: float,
) -> tuple[retry.Outcome, str] | None:
    now = timezone.now()
    outcome, verdict = _verdict(claimed, result, schedule, now)
    fields: dict[str, Any] = {
        "status": verdict.status,
        "claim_owner": "",
        "claim_expires_at": None,
        "last_attempt_at": now,
        "last_status_code": result.status_code,
        "last_error": result.error[:300],
        "last_response": result.response[:1000],
    }
    if verdict.next_attempt_at is not None:
        fields["next_attempt_at"] = verdict.next_attempt_at
    if verdict.status == S.DELIVERED:
        fields["delivered_at"] = now
    updated = Delivery.objects.filter(
        pk=claimed.id, claim_owner=owner, attempts=claimed.attempts, status=S.DELIVERING
    ).update(**fields)
    if not updated:
        return None
    if verdict.status in (S.DELIVERED, S.DEAD):
        promote(claimed.endpoint_id, claimed.session_id, now)
    if outcome is not retry.Outcome.DELIVERED or claimed.endpoint_failing:
        # (a success of an endpoint that was not failing has nothing to clear)
        _endpoint_effects(claimed, result, outcome, now, disable_after)
    return outcome, verdict.status


def _endpoint_effects(
    claimed: Claimed,
    result: Result,
    outcome: retry.Outcome,
    now: dt.datetime,
    disable_after: float,
) -> None:
    """A success restarts the endpoint's failure clock; a 410 disables it; a failure
    starts the clock, and disables the endpoint once it ran ``disable_after``."""
    endpoints = Endpoint.objects.filter(pk=claimed.endpoint_id)
    if outcome is retry.Outcome.DELIVERED:
        endpoints.filter(failing_since__isnull=False).update(failing_since=None)
    elif outcome is retry.Outcome.GONE:
        endpoints.filter(enabled=True).update(
            enabled=False,
            disabled_reason=f"the receiver answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC",
        )
    else:
        endpoints.filter(failing_since__isnull=True).update(failing_since=now)
        cutoff = now - dt.timedelta(seconds=disable_after)
        endpoints.filter(enabled=True, failing_since__lte=cutoff).update(
            enabled=False,
            disabled_reason=(
                f"every attempt failed for {_human(disable_after)} "
                f"(last: {(result.error or f'HTTP {result.status_code}')[:120]})"
            ),
        )


def promote(endpoint_id: int, lane: int, now: dt.datetime) -> None:
    """Schedule the lane's next delivery (its lowest unfinished ``seq``) if it is not.

    Takes the lane's sequence counter row lock first: an emitter of that session
    holds it while it decides whether its new delivery is the lane's head, so the
    two never both leave it unscheduled.
    """
    counters = connection.ops.quote_name(SessionSequence._meta.db_table)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last FROM {counters} WHERE session_id = %s{lock}", [lane])
        cursor.execute(
            f"UPDATE {_table()} SET next_attempt_at = %s WHERE id = (SELECT id FROM {_table()} "
            f"WHERE endpoint_id = %s AND session_id = %s AND status IN ('pending', 'delivering') "
            f"ORDER BY seq LIMIT 1) AND next_attempt_at IS NULL",
            [connection.ops.adapt_datetimefield_value(now), endpoint_id, lane],
        )


def repair_lanes() -> int:
    """The sweep's safety net: schedule every lane head left unscheduled (there should
    be none); how many were."""
    return (
        Delivery.objects.filter(status=S.PENDING, next_attempt_at__isnull=True)
        .filter(~Exists(_earlier_unfinished()))
        .update(next_attempt_at=timezone.now())
    )


def _human(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"


def release(owner: str) -> int:
    """Give back every claim ``owner`` holds (a clean shutdown): due again at once,
    the attempt not counted."""
    return Delivery.objects.filter(claim_owner=owner, status=S.DELIVERING).update(
        status=S.PENDING,
        claim_owner="",
        claim_expires_at=None,
        attempts=F("attempts") - 1,
    )


def claim_or_due(
    owner: str, ttl: float, limit: int, idle: bool
) -> tuple[list[Claimed], float | None]:
    """:func:`claim`; and if it found nothing while the dispatcher is ``idle`` (no
    attempt in flight), :func:`next_due_in` in the same trip to the database thread
    (a dispatcher's idle pass made two: the rung dispatcher waited behind them)."""
    got = claim(owner, ttl, limit)
    if got or not idle:
        return got, None
    return got, next_due_in()


def next_due_in() -> float | None:
    """Seconds until a delivery can be claimed (a scheduled one due, or a claim that
    expires), 0 if one can now, None if there is none. Two index reads."""
    enabled = Delivery.objects.filter(endpoint__enabled=True)
    times = [
        enabled.filter(status=S.PENDING).aggregate(at=Min("next_attempt_at"))["at"],
        enabled.filter(status=S.DELIVERING).aggregate(at=Min("claim_expires_at"))["at"],
    ]
    times = [t for t in times if t is not None]
    if not times:
        return None
    return max(0.0, (min(times) - timezone.now()).total_seconds())


def backlog() -> int:
    """Deliveries not yet delivered nor dead (of enabled and disabled endpoints)."""
    return Delivery.objects.filter(status__in=UNFINISHED).count()


# -- redelivery (admin and API) ----------------------------------------------------------


def redeliver(delivery_ids: list[int]) -> int:
    """Send these deliveries again (delivered or dead ones; never one in flight):
    pending, due now, their attempts counted from zero. Returns how many.

    A redelivered one goes first in its lane: the lane's later pending ones are
    unscheduled again until it is done (:func:`promote`).
    """
    now = timezone.now()
    chosen = list(
        Delivery.objects.filter(pk__in=delivery_ids)
        .exclude(status=S.DELIVERING)
        .values_list("id", "endpoint_id", "session_id", "seq")
    )
    if not chosen:
        return 0
    first: dict[tuple[int, int], tuple[int, int]] = {}  # lane -> (seq, id) to go first
    for pk, endpoint_id, lane, seq in chosen:
        if (endpoint_id, lane) not in first or seq < first[(endpoint_id, lane)][0]:
            first[(endpoint_id, lane)] = (seq, pk)
    with transaction.atomic():
        for (endpoint_id, lane), (seq, _) in first.items():
            Delivery.objects.filter(
                endpoint_id=endpoint_id, session_id=lane, seq__gt=seq, status=S.PENDING
            ).update(next_attempt_at=None)
        count = (
            Delivery.objects.filter(pk__in=[c[0] for c in chosen])
            .exclude(status=S.DELIVERING)
            .update(
                status=S.PENDING,
                attempts=0,
                next_attempt_at=None,
                claim_owner="",
                claim_expires_at=None,
            )
        )
        heads = [pk for _, pk in first.values()]
        Delivery.objects.filter(pk__in=heads, status=S.PENDING).update(next_attempt_at=now)
    return count


def redeliver_dead(endpoint_id: int, since: dt.datetime) -> int:
    """Send again every dead delivery of this endpoint created at or after ``since``."""
    ids = list(
        Delivery.objects.filter(
            endpoint_id=endpoint_id, status=S.DEAD, created_at__gte=since
        ).values_list("id", flat=True)
    )
    return redeliver(ids)
