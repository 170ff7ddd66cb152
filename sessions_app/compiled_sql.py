"""SQL compiled once per database from the ORM's own definitions, for the statements
every supervisor runs on every ring (the census and the claim).

Django compiles a queryset afresh each time it runs it. For
:meth:`~sessions_app.models.SessionQuerySet.needing_owner` (some twenty conditions)
that was 1.3 ms of CPU on a 2-core machine, paid twice by every supervisor on the
way from "create" to the QR code, under the GIL beside the page being rendered
(docs/benchmarks.md, "Issue 14: the ORM's compiling taken off the supervisor's
path"). The filters stay defined once, in the ORM, where a test holds them to the
pure policy; their SQL and parameters are taken from Django's compiler the first
time and reused.

Only a filter whose parameters never change between calls may be kept: a clock in
it must be the database's (``Now()``), never a value such as ``timezone.now()``
(:func:`where` refuses a filter with a date or a time among its parameters).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.db.models.sql import Query
from django.utils import timezone
from django.utils.dateparse import parse_datetime

#: (database alias, vendor, name) → (SQL, parameters)
_kept: dict[tuple[str, str, str], tuple[str, tuple[Any, ...]]] = {}


def where(name: str, build: Callable[[], QuerySet[Any]]) -> tuple[str, tuple[Any, ...]]:
    """The WHERE condition of ``build()``'s queryset on this thread's default database,
    as ``(sql, params)`` for ``cursor.execute``; compiled the first time ``name`` is
    asked for on that database, then kept.

    The SQL names columns with their table (``"sessions_app_wasession"."state"``), so
    it fits a statement whose FROM is that one table. Raises ``ValueError`` for a
    queryset that joins another table, or whose parameters hold a date or a time
    (kept, it would stay the moment of the first call).
    """
    key = (connection.alias, connection.vendor, name)
    kept = _kept.get(key)
    if kept is None:
        query = build().query
        compiler = query.get_compiler(connection=connection)
        sql, params = compiler.compile(query.where)
        if len(query.alias_map) > 1:
            raise ValueError(f"{name}: a filter over one table only (it joins {query.alias_map})")
        if any(isinstance(param, dt.date | dt.time) or _is_time_text(param) for param in params):
            raise ValueError(f"{name}: a time in the filter would be kept with it; use Now()")
        kept = _kept[key] = (sql, tuple(params))
    return kept


def _is_time_text(param: Any) -> bool:
    """A datetime as SQLite's backend passes it (Django adapts it to text first)."""
    return isinstance(param, str) and parse_datetime(param) is not None


def now() -> str:
    """The database's "now" as Django writes it (``STATEMENT_TIMESTAMP()`` on PostgreSQL,
    the text of the current time on SQLite); for statements run with parameters."""
    key = (connection.alias, connection.vendor, "now()")
    kept = _kept.get(key)
    if kept is None:
        sql, _ = Query(None).get_compiler(connection=connection).compile(Now())
        kept = _kept[key] = (sql, ())
    return kept[0]


def until(column_sql: str) -> str:
    """SQL for how long until the timestamp ``column_sql``, read with :func:`seconds_left`:
    on PostgreSQL the seconds from its clock's now; on SQLite the timestamp itself
    (one host, whose clock is the database's; SQLite's own "now" has milliseconds only).
    """
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({column_sql}) - STATEMENT_TIMESTAMP())::float8"
    return column_sql


def seconds_left(value: Any) -> float | None:
    """A value selected with :func:`until` as seconds from now (negative once past),
    or None for NULL."""
    if value is None:
        return None
    if connection.vendor == "postgresql":
        return float(value)
    return seconds_between(timezone.now(), value)


def seconds_between(now: dt.datetime, value: Any) -> float:
    """Seconds from ``now`` until ``value``: a datetime or SQLite's text of one, naive
    (Django's UTC) or with its offset (written by a raw statement)."""
    moment = value if isinstance(value, dt.datetime) else parse_datetime(str(value))
    if moment is None:
        raise ValueError(f"not a timestamp: {value!r}")
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, dt.UTC)
    return (moment - now).total_seconds()
