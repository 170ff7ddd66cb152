"""Scale: 1,000 simulated sessions on one supervisor — cold starts, the cost at rest,
and what lease renewal costs the database.

Run from the repository root::

    .venv/bin/python benchmarks/bench_scale.py      # --sessions 1000 --window 60

Why this shape. A supervisor is meant to hold up to ``WACONNECT_MAX_SESSIONS``
(1,000) sessions. Most of the time they sit connected and nothing happens, so
what matters is what *idle* costs: the supervisor's CPU and memory, and the
database work it does to keep its leases (one ``UPDATE … RETURNING`` for all of
them every 5 s), to announce itself, and to look at every session on the
periodic reconcile (every 10 s). And after a deploy or a crash all sessions come
back at once: how long until the last one is connected.

On the production shape (``benchmarks/cluster.py``: the simulated WhatsApp
service, which scans every QR round by itself after 50 ms, and one
``run_supervisor`` on a PostgreSQL database of its own and Redis db 12) it

1. creates ``--sessions`` sessions with ``intents.create_session`` (what the
   create page calls) while no supervisor runs, then starts one and times
   **cold start, new devices**: from spawning the process until every session
   is paired and connected (at the service and recorded in the database);
2. stops it with SIGTERM (timed: it hands every session over) and starts a new
   one: **cold start, resume**: the same for sessions that are already linked,
   as after a deploy;
3. waits ``--settle`` seconds, then for ``--window`` seconds at rest samples the
   supervisor's and the service's CPU time (``/proc/<pid>/stat``, utime + stime,
   every second), their RSS and PSS (``/proc/<pid>/smaps_rollup``), and the
   database's counters for this database (``pg_stat_database``: transactions,
   tuples updated/returned/fetched; ``pg_stat_user_tables``: updates of the
   session table, and how many were HOT);
4. runs the renewal statement itself (``sessions_app.leases.renew`` for the
   supervisor's owner: it extends only that supervisor's leases, as the
   supervisor does) ``--renew-samples`` times and reports its latency, since
   ``pg_stat_statements`` is not loaded on this server.

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks.cluster import Cluster, SupervisorProcess
from benchmarks.clusterenv import (
    PG_SERVER,
    REDIS_URL,
    BenchError,
    bench_database,
    child_pid,
    close_django_connections,
    flush_redis,
    log,
    log_directory,
    log_problems,
    setup_django,
)
from benchmarks.stats import (
    fmt,
    load_average,
    machine_cpu_s,
    memory_mib,
    process_cpu_s,
    summary,
    table,
)
from sessions_app.drivers.simulated_service import ServiceControl

DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_updated", "tup_returned", "tup_fetched")
TABLE_COUNTERS = ("n_tup_upd", "n_tup_hot_upd", "seq_scan", "idx_scan")


@dataclasses.dataclass
class ColdStart:
    """One cold start: seconds from spawning the supervisor."""

    recorded_s: float  # every session shown connected in the database (what pages show)
    connected_at_s: list[float]  # per session, connected at the service (its clock)

    @property
    def service_s(self) -> float:
        return max(self.connected_at_s)


@dataclasses.dataclass
class Rest:
    """The window at rest."""

    window_s: float
    cpu_percent: dict[str, float]  # mean over the window, % of one core
    cpu_percent_max_1s: dict[str, float]
    memory_mib: dict[str, dict[str, float]]
    machine_busy_percent: float
    db_per_s: dict[str, float]
    table_per_s: dict[str, float]
    connections: dict[str, int]


@dataclasses.dataclass
class Results:
    sessions: int
    create_s: float = 0.0
    pairing: ColdStart | None = None
    shutdown_s: float = 0.0
    resume: ColdStart | None = None
    rest: Rest | None = None
    renew_ms: list[float] = dataclasses.field(default_factory=list)
    renew_rows: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


# -- sessions and cold starts ------------------------------------------------------------


def create_sessions(count: int, prefix: str) -> list[int]:
    from sessions_app import intents

    return [intents.create_session(f"{prefix}-{i:05d}", "bench").pk for i in range(count)]


def recorded_connected(ids: Sequence[int]) -> int:
    """How many of ``ids`` the database shows connected with a JID."""
    from sessions_app.models import WaSession

    return WaSession.objects.filter(pk__in=ids, state="connected").exclude(jid="").count()


async def service_connected(address: str, ids: Sequence[int], timeout: float) -> dict[int, float]:
    """Wait until the service has every session connected; its ``connected_at`` of each."""
    async with ServiceControl(address) as control:
        missing = await control.wait_connected(ids, timeout)
        if missing:
            raise BenchError(f"{len(missing)} sessions not connected within {timeout:.0f} s")
        stats = await control.stats()
    return {sid: stats.connected_at[sid] for sid in ids}


def wait_recorded(ids: Sequence[int], deadline: float) -> None:
    """Wait until the database, too, shows every session connected."""
    while (done := recorded_connected(ids)) < len(ids):
        if time.monotonic() > deadline:
            raise BenchError(f"only {done} sessions recorded as connected")
        time.sleep(0.2)  # the supervisor's writes: observed, not awaited


def cold_start(
    cluster: Cluster, ids: Sequence[int], timeout: float
) -> tuple[SupervisorProcess, ColdStart]:
    """Spawn a supervisor and wait until every session is connected and recorded."""
    spawned_wall, spawned = time.time(), time.monotonic()
    supervisor = cluster.start_supervisor()
    connected_at = asyncio.run(service_connected(cluster.address, ids, timeout))
    wait_recorded(ids, spawned + timeout)
    took = time.monotonic() - spawned
    log(
        f"  {len(ids)} sessions connected and recorded {took:.1f} s after spawning "
        f"{supervisor.name}"
    )
    return supervisor, ColdStart(took, [at - spawned_wall for at in connected_at.values()])


# -- at rest ---------------------------------------------------------------------------


def pg_counters(database: str) -> dict[str, float]:
    """This database's counters from pg_stat_database, read from another database."""
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database WHERE datname = %s",
            [database],
        ).fetchone()
    assert row is not None
    return dict(zip(DB_COUNTERS, map(float, row), strict=True))


def table_counters(database: str) -> dict[str, float]:
    """The session table's counters (pg_stat_user_tables is per database)."""
    with psycopg.connect(f"{PG_SERVER}/{database}", autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {', '.join(TABLE_COUNTERS)} FROM pg_stat_user_tables "
            "WHERE relname = 'sessions_app_wasession'"
        ).fetchone()
    assert row is not None
    return dict(zip(TABLE_COUNTERS, map(float, row), strict=True))


def connections(database: str) -> dict[str, int]:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1",
            [database],
        ).fetchall()
    return {name or "(none)": int(count) for name, count in rows}


def per_second(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    return {key: (after[key] - before[key]) / seconds for key in before}


def sample_cpu(pids: dict[str, int], window: float) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and busiest-second CPU % (of one core) of each process over ``window`` s."""
    first = {name: process_cpu_s(pid) for name, pid in pids.items()}
    last, started = dict(first), time.monotonic()
    peak = dict.fromkeys(pids, 0.0)
    tick = started
    while (now := time.monotonic()) - started < window:
        tick += 1.0
        time.sleep(max(0.0, tick - now))  # a fixed cadence; nothing to wait on
        for name, pid in pids.items():
            cpu = process_cpu_s(pid)
            peak[name] = max(peak[name], (cpu - last[name]) * 100)
            last[name] = cpu
    elapsed = time.monotonic() - started
    mean = {name: (last[name] - first[name]) / elapsed * 100 for name in pids}
    return mean, peak


def at_rest(database: str, pids: dict[str, int], window: float) -> Rest:
    db_before, table_before = pg_counters(database), table_counters(database)
    busy_before, total_before = machine_cpu_s()
    started = time.monotonic()
    mean, peak = sample_cpu(pids, window)
    elapsed = time.monotonic() - started
    busy_after, total_after = machine_cpu_s()
    return Rest(
        window_s=elapsed,
        cpu_percent=mean,
        cpu_percent_max_1s=peak,
        memory_mib={name: memory_mib(pid) for name, pid in pids.items()},
        machine_busy_percent=(busy_after - busy_before) / (total_after - total_before) * 100,
        db_per_s=per_second(db_before, pg_counters(database), elapsed),
        table_per_s=per_second(table_before, table_counters(database), elapsed),
        connections=connections(database),
    )


def time_renewals(owner: str, ttl: float, samples: int) -> tuple[list[float], int]:
    """Run the supervisor's own renewal statement ``samples`` times; ms each, rows."""
    from sessions_app import leases

    times, rows = [], 0
    for _ in range(samples):
        started = time.perf_counter()
        rows = len(leases.renew(owner, ttl))
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)  # a few hundred samples spread over seconds, not one burst
    return times, rows


# -- the run ---------------------------------------------------------------------------


def run(cluster: Cluster, args: argparse.Namespace, results: Results) -> None:
    started = time.monotonic()
    ids = create_sessions(args.sessions, f"scale-{int(time.time())}")
    results.create_s = time.monotonic() - started
    log(f"created {len(ids)} sessions in {results.create_s:.1f} s; cold start (new devices)")
    first, results.pairing = cold_start(cluster, ids, args.timeout)
    stopping = time.monotonic()
    first.terminate(timeout=120)
    results.shutdown_s = time.monotonic() - stopping
    log(f"  SIGTERM: {first.name} handed over and exited in {results.shutdown_s:.1f} s")
    log("cold start (resume linked devices)")
    second, results.resume = cold_start(cluster, ids, args.timeout)
    close_django_connections()  # this process stays off the database during the window
    log(f"settling {args.settle:g} s, then {args.window:g} s at rest")
    time.sleep(args.settle)
    pids = {"supervisor": second.pid, "service": child_pid("simulated_whatsapp")}
    results.rest = at_rest(args.database, pids, args.window)
    log(f"timing the renewal statement {args.renew_samples}×")
    results.renew_ms, results.renew_rows = time_renewals(
        second.owner(), args.lease_ttl, args.renew_samples
    )
    close_django_connections()


# -- the report ------------------------------------------------------------------------


def cold_start_rows(results: Results) -> list[tuple[str, Any]]:
    rows = []
    for label, start in (("new devices (QR, scan)", results.pairing), ("resume", results.resume)):
        if start is not None:
            rows.append((f"spawn → each connected, {label}", summary(start.connected_at_s)))
    return rows


def rest_lines(rest: Rest, sessions: int, renew_interval: float) -> list[str]:
    lines = [
        f"At rest, {rest.window_s:.0f} s (machine busy {rest.machine_busy_percent:.0f} % "
        "of its cores meanwhile):",
        "",
        "| process | CPU % of one core, mean | busiest second | RSS MiB | PSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in rest.cpu_percent:
        memory = rest.memory_mib[name]
        lines.append(
            f"| {name} | {rest.cpu_percent[name]:.2f} | {rest.cpu_percent_max_1s[name]:.0f} "
            f"| {memory['rss']:.1f} | {memory['pss']:.1f} |"
        )
    db, tab = rest.db_per_s, rest.table_per_s
    lines += [
        "",
        "PostgreSQL, this database, per second: "
        f"{db['xact_commit']:.1f} transactions committed ({db['xact_rollback']:.2f} rolled "
        f"back), {db['tup_updated']:.0f} rows updated, {db['tup_returned']:,.0f} rows "
        f"returned (scanned), {db['tup_fetched']:,.0f} fetched; session table: "
        f"{tab['n_tup_upd']:.0f} updates/s ({tab['n_tup_hot_upd']:.0f} HOT), "
        f"{tab['seq_scan']:.2f} sequential and {tab['idx_scan']:.1f} index scans/s. "
        f"(Renewal alone updates {sessions / renew_interval:.0f} rows/s.)",
        f"connections to this database: {rest.connections}",
    ]
    return lines


def report(results: Results, args: argparse.Namespace, load: tuple[str, str]) -> str:
    pairing, resume = results.pairing, results.resume
    assert pairing is not None and resume is not None and results.rest is not None
    renew = summary(results.renew_ms)
    lines = [
        f"Scale: {args.sessions} sessions, one supervisor, lease TTL {args.lease_ttl:g} s, "
        f"renewal every {args.renew_interval:g} s",
        "",
        f"cold start, new devices: all {args.sessions} connected at the service "
        f"{pairing.service_s:.1f} s and recorded in the database {pairing.recorded_s:.1f} s "
        f"after spawning the supervisor",
        f"SIGTERM with {args.sessions} sessions: handed over and exited after "
        f"{results.shutdown_s:.1f} s",
        f"cold start, resume: all connected at the service {resume.service_s:.1f} s and "
        f"recorded {resume.recorded_s:.1f} s after spawning (creating the sessions took "
        f"{results.create_s:.1f} s)",
        "",
        table(
            [
                *cold_start_rows(results),
                (f"renewal statement, {results.renew_rows} leases (ms)", renew),
            ],
            label="measure (s unless said)",
            digits=2,
        ),
        "",
        *rest_lines(results.rest, args.sessions, args.renew_interval),
        "",
        f"renewal: one statement per {args.renew_interval:g} s, p50 {fmt(renew['p50'], 2)} ms "
        f"→ {renew['p50'] / (args.renew_interval * 10):.3f} % of one database core",
        f"load average before: {load[0]}, after: {load[1]}",
    ]
    if results.problems:
        lines += ["", "warnings/errors in the process logs (count × first example):"]
        lines += [f"  {line}" for line in results.problems]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="sessions (1000)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds at rest (60)")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds to wait before the window (10)"
    )
    parser.add_argument(
        "--renew-samples", type=int, default=300, help="renewal statements to time (300)"
    )
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="WACONNECT_LEASE_TTL (15)")
    parser.add_argument(
        "--renew-interval", type=float, default=5.0, help="WACONNECT_RENEW_INTERVAL (5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for a cold start (600)"
    )
    parser.add_argument(
        "--database", default="waconnect_bench_scale", help="PostgreSQL database to create"
    )
    parser.add_argument("--redis", default=REDIS_URL, help=f"Redis database ({REDIS_URL})")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results(sessions=args.sessions)
    load_before = load_average()
    settings = {
        "WACONNECT_LEASE_TTL": str(args.lease_ttl),
        "WACONNECT_RENEW_INTERVAL": str(args.renew_interval),
        "WACONNECT_MAX_SESSIONS": str(max(1000, args.sessions)),
    }
    with (
        log_directory("waconnect-scale-", keep=args.keep_logs) as log_dir,
        bench_database(args.database) as url,
    ):
        flush_redis(args.redis)
        setup_django(url, args.redis)
        cluster = Cluster(
            database_url=url,
            redis_url=args.redis,
            log_dir=log_dir,
            settings=settings,
            auto_scan=0.05,
        )
        with cluster:
            try:
                run(cluster, args, results)
            finally:
                close_django_connections()
                cluster.close()
                results.problems = log_problems(cluster)
    print(report(results, args, (load_before, load_average())))
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
