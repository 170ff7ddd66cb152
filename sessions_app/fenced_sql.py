"""A supervisor's fenced write on PostgreSQL as one statement, when no webhook
endpoint listens to the session.

:func:`sessions_app.leases.write` in a transaction is six waits for the server
(``BEGIN``, the ``UPDATE``, the event-log line's ``INSERT``, the webhook
endpoints' ``SELECT``, ``COMMIT``), ~0.6–0.75 ms each on loopback, and a runner
makes two such writes between "create" and the QR code. Here the ``UPDATE`` and
the line are one statement with data-modifying CTEs, sent in autocommit: one
wait, and atomic by itself (PostgreSQL commits a statement whole or not at all).
The row's lock is held only while the server runs that one statement: a
supervisor frozen or cut off after sending it holds nothing (the pipelined
version of this, tried in the twelfth stop, held the lock until a ``Sync`` the
frozen client never sent; docs/benchmarks.md).

Its ``UPDATE`` matches only if, as well as the lease, **no enabled webhook
endpoint listens to the session** (:func:`webhooks.outbox.listening_sql`), when
the write has events to emit: an event must commit with the write it reports, in
the outbox's rows, which the transactional path builds
(:mod:`webhooks.session_events`). When one listens the statement changes nothing
and says so; the caller takes the transaction. Sessions found listened are kept
in a hint (:data:`_listened`) so that their next writes with events go to the
transaction at once; the hint decides only which path is tried first, never what
is written. Inside a caller's transaction the transactional path is taken too
(its savepoint keeps a failed write from aborting the caller's transaction).

The event-log line's time is this host's clock, as every other line's (the
transactional path's, the intents', a hand-over's), read as the statement is
sent: one clock for the log on a host, where the database's would be another.
A write that waited for the row's lock behind an intent may sort before that
intent's line; the two were concurrent, and each line's states still chain.

What the guard sees: the endpoints as they were when the statement began (an
uncorrelated subquery runs on the statement's snapshot, and PostgreSQL's recheck
after a lock wait re-reads only the row). An endpoint enabled or linked while
the write waited for the row's lock does not get that write's events; the
transactional path had the same window between its endpoints' ``SELECT`` and
its ``COMMIT``, and an endpoint hears the writes that begin after it is enabled.

Written as SQL because it is the product's own hot path (the lease's fencing),
not something a library does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models.sql.subqueries import UpdateQuery
from django.utils import timezone

from sessions_app.models import SessionEvent, WaSession
from webhooks import outbox, session_events

if TYPE_CHECKING:
    from sessions_app.leases import EventRecord, Lease

#: Sessions whose last fenced write found a webhook endpoint listening (their
#: writes take the transaction first). Only a hint: the statement checks anyway.
_listened: set[int] = set()


def applies() -> bool:
    """Whether this thread's database can take the one-statement write: PostgreSQL,
    outside a transaction (inside one, a failed statement would abort the caller's
    transaction, where the transactional path's savepoint does not)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def write(lease: Lease, fields: Mapping[str, Any], event: EventRecord | None) -> bool | None:
    """The fenced ``UPDATE`` of ``fields`` (and ``version`` + 1) with ``event``'s
    event-log line, as one statement.

    Returns True when written, False when the lease was lost (or the session is
    gone), and None when it was not tried or a webhook endpoint listens to the
    session: nothing was written, the caller writes in a transaction (and tells
    :func:`heard` what it found).
    """
    emitting = session_events.emits(
        fields, event.kind if event else None, event.to_state if event else ""
    )
    if emitting and lease.session_id in _listened:
        return None
    set_sql, set_params = _set_clause(fields)
    statement = _statement(set_sql, event is not None, emitting)
    params = [*set_params, lease.session_id, lease.owner, lease.epoch]
    if emitting:
        params.append(lease.session_id)
    if event is not None:
        params += [
            event.kind,
            event.message[:500],
            event.from_state,
            event.to_state,
            f"supervisor:{lease.owner}",
            lease.epoch,
            timezone.now(),
        ]
    if emitting:
        params.append(lease.session_id)
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        answer = cursor.fetchone()
    if answer[0]:
        return True
    if emitting and answer[1]:
        _listened.add(lease.session_id)
        return None
    return False


def heard(session_id: int, listened: bool | None) -> None:
    """What the transactional path found: whether an endpoint listens (None: not
    looked up, the hint stays)."""
    if listened:
        _listened.add(session_id)
    elif listened is False:
        _listened.discard(session_id)


#: (database alias, the SET clause, with a line, emitting) → the statement's text.
_statements: dict[tuple[str, str, bool, bool], str] = {}


def _statement(set_sql: str, with_line: bool, emitting: bool) -> str:
    """The statement for one shape of write, made once per shape. Its parameters:
    the SET clause's, the lease (id, owner, epoch), the session's id again when
    ``emitting``, the line's seven (kind, message, from, to, actor, epoch, at) when
    ``with_line``, and the session's id once more when ``emitting``."""
    key = (connection.alias, set_sql, with_line, emitting)
    kept = _statements.get(key)
    if kept is not None:
        return kept
    quote = connection.ops.quote_name
    listening = f"EXISTS (SELECT 1 {outbox.listening_sql()})"
    meta = WaSession._meta
    pk, owner, epoch, version = (
        quote(meta.get_field(name).column)
        for name in ("id", "lease_owner", "lease_epoch", "version")
    )
    statement = (
        f"WITH fenced AS (UPDATE {quote(meta.db_table)} SET {set_sql}"
        f"{', ' if set_sql else ''}{version} = {version} + 1 "
        f"WHERE {pk} = %s AND {owner} = %s AND {epoch} = %s"
    )
    if emitting:
        statement += f" AND NOT {listening}"
    statement += f" RETURNING {pk})"
    if with_line:
        statement += f", logged AS ({_insert_line()} FROM fenced)"
    statement += " SELECT (SELECT COUNT(*) FROM fenced)"
    if emitting:
        statement += f", {listening}"
    _statements[key] = statement
    return statement


def _set_clause(fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """``col = %s, …`` and its values, each converted as ``QuerySet.update`` converts
    it (``Field.get_db_prep_save``). Django's compiler did the same in ~0.5 ms of
    CPU a write (cProfile, docs/benchmarks.md); an SQL expression among the values
    still goes through it."""
    if any(hasattr(value, "resolve_expression") for value in fields.values()):
        return _compiled_set_clause(fields)
    quote = connection.ops.quote_name
    meta = WaSession._meta
    columns, values = [], []
    for name, value in fields.items():
        field = meta.get_field(name)
        columns.append(f"{quote(field.column)} = %s")
        values.append(field.get_db_prep_save(value, connection=connection))
    return ", ".join(columns), values


def _compiled_set_clause(fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The SET clause as Django's own ``UPDATE`` has it (for SQL expressions)."""
    query = UpdateQuery(WaSession)
    query.add_update_values(dict(fields))
    sql, params = query.get_compiler(connection=connection).as_sql()  # no WHERE
    return sql.split(" SET ", 1)[1], list(params)


def _insert_line() -> str:
    """``INSERT … SELECT`` of one event-log line per row of ``fenced`` (its id), the
    other columns as parameters: kind, message, from, to, actor, epoch, at."""
    quote = connection.ops.quote_name
    meta = SessionEvent._meta
    columns = ", ".join(
        quote(meta.get_field(name).column)
        for name in ("session", "kind", "message", "from_state", "to_state", "actor", "epoch", "at")
    )
    return f"INSERT INTO {quote(meta.db_table)} ({columns}) SELECT id, %s, %s, %s, %s, %s, %s, %s"
