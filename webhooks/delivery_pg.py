"""The PostgreSQL statements that claim and finish deliveries a batch at a time.

Part of :mod:`webhooks.delivery` (which calls them; SQLite runs its own simpler
statements there): written out because they are the dispatcher's hot path, each
one round trip for a whole batch. The rules are delivery's: a claim takes only
due lane heads, ``SKIP LOCKED``; an outcome is written only while the claim is
still ``(owner, attempts)``'s; a finished lane's next is scheduled under its
counter row's lock.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection

from webhooks.models import Delivery, Endpoint, Event, SessionSequence


def _name(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def claimable_sql(limit: int) -> str:
    """Up to ``limit`` due lane heads of enabled endpoints, oldest due first, locked.

    ``OFFSET 0`` keeps "nothing earlier unfinished" a probe per candidate on
    ``webhooks_lane_open``. Left to the planner as an anti-join, statistics from
    before a backlog arrived (a receiver outage) made it scan every unfinished row
    once per candidate: 144 ms per claim with 3,000 queued, 3 ms now.
    """
    table = _name(Delivery)
    return (
        f"SELECT d.id FROM {table} AS d JOIN {_name(Endpoint)} AS e ON e.id = d.endpoint_id "
        "WHERE e.enabled AND ((d.status = 'pending' AND d.next_attempt_at <= "
        "statement_timestamp()) OR (d.status = 'delivering' AND d.claim_expires_at < "
        "statement_timestamp())) AND NOT EXISTS (SELECT 1 FROM "
        f"{table} AS u WHERE u.endpoint_id = d.endpoint_id AND u.session_id = d.session_id "
        "AND u.seq < d.seq AND u.status IN ('pending', 'delivering') OFFSET 0) "
        f"ORDER BY d.next_attempt_at, d.id LIMIT {int(limit)} FOR UPDATE OF d SKIP LOCKED"
    )


def claim_rows(update: str, inner_sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """The claim ``update`` of the rows ``inner_sql`` picks, with their endpoints and
    events, in one autocommitted statement (``UPDATE … FROM`` returns the joined
    rows' columns): id, attempts, endpoint_id, event_id, session_id, url, secret,
    previous_secret, previous_secret_expires_at, failing_since, payload, created_at."""
    table = _name(Delivery)
    sql = (
        f"{update} FROM {_name(Endpoint)} AS ep, {_name(Event)} AS ev "
        f"WHERE {table}.id IN ({inner_sql}) AND ep.id = {table}.endpoint_id "
        f"AND ev.id = {table}.event_id RETURNING {table}.id, {table}.attempts, "
        f"{table}.endpoint_id, {table}.event_id, {table}.session_id, ep.url, ep.secret, "
        "ep.previous_secret, ep.previous_secret_expires_at, ep.failing_since, "
        "ev.payload, ev.created_at"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def update_outcomes(
    owner: str,
    rows: list[tuple[int, int, str, dt.datetime | None, int | None, str, str]],
    now: dt.datetime,
) -> set[int]:
    """Every attempt's outcome in one fenced statement; the ids written (an attempt
    whose claim was lost is not among them). A row: (id, attempts, new status,
    next attempt or None, status code or None, error, answer)."""
    table = _name(Delivery)
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    for pk, attempts, status, next_at, code, error, response in rows:
        for column, value in zip(
            columns,
            (pk, attempts, status, next_at, code, error[:300], response[:1000]),
            strict=True,
        ):
            column.append(value)
    # One array per column (unnest), not a VALUES row per attempt: the statement's
    # text is the same for every batch, so psycopg converts it once (a VALUES list
    # of a new length was parsed again each time: half the thread's CPU).
    sql = (
        f"UPDATE {table} SET status = v.status, claim_owner = '', claim_expires_at = NULL, "
        "last_attempt_at = %s, last_status_code = v.code, last_error = v.error, "
        "last_response = v.response, "
        f"next_attempt_at = COALESCE(v.next_at, {table}.next_attempt_at), "
        f"delivered_at = CASE WHEN v.status = 'delivered' THEN %s ELSE {table}.delivered_at END "
        "FROM unnest(%s::bigint[], %s::integer[], %s::varchar[], %s::timestamptz[], "
        "%s::integer[], %s::text[], %s::text[]) "
        "AS v(id, attempts, status, next_at, code, error, response) "
        f"WHERE {table}.id = v.id AND {table}.claim_owner = %s "
        f"AND {table}.attempts = v.attempts AND {table}.status = 'delivering' "
        f"RETURNING {table}.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, now, *columns, owner])
        return {row[0] for row in cursor.fetchall()}


def promote_lanes(lanes: list[tuple[int, int]], now: dt.datetime) -> None:
    """``delivery.promote`` for many ``(endpoint_id, session_id)`` lanes in two
    statements: the counter rows locked in one order (two dispatchers never wait on
    each other in a cycle), then every lane's next scheduled."""
    if not lanes:
        return
    table = _name(Delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT last FROM {_name(SessionSequence)} WHERE session_id = ANY(%s) "
            "ORDER BY session_id FOR UPDATE",
            [sorted({lane for _, lane in lanes})],
        )
        cursor.execute(
            f"UPDATE {table} SET next_attempt_at = %s WHERE next_attempt_at IS NULL AND id IN "
            f"(SELECT (SELECT x.id FROM {table} AS x WHERE x.endpoint_id = l.endpoint_id "
            "AND x.session_id = l.session_id AND x.status IN ('pending', 'delivering') "
            "ORDER BY x.seq LIMIT 1) FROM unnest(%s::bigint[], %s::bigint[]) "
            "AS l(endpoint_id, session_id))",
            [now, [endpoint for endpoint, _ in lanes], [lane for _, lane in lanes]],
        )
