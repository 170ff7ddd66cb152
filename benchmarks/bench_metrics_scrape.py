"""What one scrape of the web tier's /metrics costs on PostgreSQL, by number of sessions.

Run from the repository root::

    .venv/bin/python benchmarks/bench_metrics_scrape.py      # --sessions 1000 10000 --scrapes 50

For each size it creates a database of its own (dropped at the end), fills it with
that many sessions (a tenth each stopped, in error, in a QR round, and asked for a
QR round not shown yet, with their intent events; the rest connected and leased) and
20 supervisor presence rows, then builds the body of ``GET /metrics`` — the
process's metrics and the database gauges (``ops.collector``: five queries) — as
many times as asked and reports its latency. Prometheus scrapes every 15 s or so;
the number to watch is how far below that (and below a scrape timeout of 10 s) it
stays.

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clusterenv import bench_database, close_django_connections, log, setup_django
from benchmarks.stats import summary, table

REDIS_URL = "redis://127.0.0.1:6379/7"


def fill(count: int) -> None:
    from django.utils import timezone

    from sessions_app.models import SessionEvent, SupervisorPresence, WaSession

    now = timezone.now()
    rows = []
    for i in range(count):
        kind = i % 10
        row = WaSession(name=f"s{i:06d}", jid=f"{4915100000000 + i}@s.whatsapp.net")
        if kind == 0:
            row.desired_state, row.state = "stopped", "stopped"
        elif kind == 1:
            row.state, row.retry_count = "error", 3
        elif kind == 2:
            row.state, row.jid, row.pair_request = "qr_required", "", 1
        elif kind == 3:
            row.state, row.jid, row.pair_request = "connecting", "", 1
        else:
            row.state = "connected"
        if kind != 0:
            row.lease_owner = f"host:{i % 20}:abc"
            row.lease_expires_at = now + dt.timedelta(seconds=15)
        rows.append(row)
    WaSession.objects.bulk_create(rows, batch_size=2000)
    events = [
        SessionEvent(session=row, kind="intent", message="asked for a QR code", actor="bench")
        for row in WaSession.objects.filter(pair_request__gt=0)
    ]
    SessionEvent.objects.bulk_create(events, batch_size=2000)
    SupervisorPresence.objects.bulk_create(
        SupervisorPresence(
            owner=f"host:{i}:abc", expires_at=now + dt.timedelta(seconds=15), max_sessions=1000
        )
        for i in range(20)
    )


def scrape_times(scrapes: int) -> list[float]:
    from prometheus_client import generate_latest

    from ops.views import _Both

    generate_latest(_Both())  # warm: connection, query plans
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        generate_latest(_Both())
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for count in args.sessions:
        with bench_database(f"waconnect_bench_metrics_{count}") as url:
            setup_django(url, REDIS_URL)
            from django.db import connections

            for alias in connections:
                connections[alias].close()
            connections["default"].settings_dict["NAME"] = url.rsplit("/", 1)[1]
            log(f"{count} sessions: filling")
            fill(count)
            log(f"{count} sessions: {args.scrapes} scrapes")
            rows.append(
                (f"/metrics body, {count} sessions (ms)", summary(scrape_times(args.scrapes)))
            )
            close_django_connections()
    print(table(rows, digits=1))


if __name__ == "__main__":
    main()
