"""Failover: how long a supervisor's sessions stay down when it dies or leaves.

Run from the repository root::

    .venv/bin/python benchmarks/bench_failover.py      # --sessions 200 --rounds 3

Why this shape. waconnect's promise to an admin is that a linked session stays
connected across crashes and deploys. When a supervisor process dies (SIGKILL, an
OOM kill, a lost host), nobody tells the others: they may only take its sessions
once its leases have expired, so the wait is bounded by the lease TTL (15 s) plus
the time to notice the expiry and reconnect; the aim is **p99 < TTL + 5 s**. When
it is stopped on purpose (SIGTERM, a deploy) it closes its connections, releases
its leases and rings the others, so the wait should be about one reconnect:
**p99 < 2 s**, and since the devices stay linked, **no new QR code** and no moment
with two live connections of one device.

It measures that on the production shape (``benchmarks/cluster.py``): the
simulated WhatsApp service (every QR round scans itself after 50 ms) and
``run_supervisor`` processes on a PostgreSQL database of its own and Redis db 12,
with the default lease settings (TTL 15 s, renewal every 5 s). It creates
``--sessions`` sessions through ``intents.create_session`` (what the create page
calls), waits until all are paired and connected and shared between two
supervisors, then repeats ``--rounds`` times:

1. **SIGKILL** one supervisor. For each session it held (``lease_owner`` in the
   database just before the kill) the failover time is the service's
   ``connected_at`` of its new connection (by another owner) minus the wall clock
   just before the kill. The same minus the session's last ``lease_expires_at``
   shows what is left once the TTL is taken out. A replacement supervisor is then
   started and the two rebalance (one hands sessions over to the newcomer);
2. **SIGTERM** one supervisor and measure the same from the signal, plus the QR
   codes the service issued (must be 0: paired sessions resume) and overlaps of
   two live connections of a device (must be 0). A replacement joins again.

The times are the service's clock and this process's wall clock, on one machine.
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgiref.sync import sync_to_async

from benchmarks.cluster import Cluster, SupervisorProcess
from benchmarks.clusterenv import (
    REDIS_URL,
    BenchError,
    bench_database,
    flush_redis,
    log,
    log_directory,
    log_problems,
    setup_django,
)
from benchmarks.stats import fmt, load_average, summary, table
from sessions_app.drivers.simulated_service import ServiceControl, ServiceStats

AIM_GRACEFUL_S = 2.0
AIM_OVER_TTL_S = 5.0


@dataclasses.dataclass
class Deltas:
    """What the service counted between two readings."""

    qr_issued: int = 0
    overlaps: int = 0
    qr_sessions: list[int] = dataclasses.field(default_factory=list)  # which got new codes

    @classmethod
    def between(cls, before: ServiceStats, after: ServiceStats) -> Deltas:
        grew = [
            sid for sid, count in after.qr_issued.items() if count > before.qr_issued.get(sid, 0)
        ]
        return cls(
            qr_issued=sum(after.qr_issued.values()) - sum(before.qr_issued.values()),
            overlaps=len(after.overlaps) - len(before.overlaps),
            qr_sessions=sorted(grew),
        )

    def __iadd__(self, other: Deltas) -> Deltas:
        self.qr_issued += other.qr_issued
        self.overlaps += other.overlaps
        self.qr_sessions += other.qr_sessions
        return self


@dataclasses.dataclass
class Results:
    """Every sample and counter of a run (seconds)."""

    kill: list[float] = dataclasses.field(default_factory=list)
    kill_after_expiry: list[float] = dataclasses.field(default_factory=list)
    term: list[float] = dataclasses.field(default_factory=list)
    term_exit: list[float] = dataclasses.field(default_factory=list)
    rebalance: list[float] = dataclasses.field(default_factory=list)
    kill_deltas: Deltas = dataclasses.field(default_factory=Deltas)
    term_deltas: Deltas = dataclasses.field(default_factory=Deltas)
    rebalance_deltas: Deltas = dataclasses.field(default_factory=Deltas)
    not_back: int = 0
    pair_s: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)


# -- the database, seen from the benchmark ---------------------------------------------


@sync_to_async
def create_sessions(count: int, prefix: str) -> list[int]:
    from sessions_app import intents

    return [intents.create_session(f"{prefix}-{i:04d}", "bench").pk for i in range(count)]


@sync_to_async
def leases_of(owner: str) -> dict[int, float]:
    """The sessions ``owner`` holds, with their lease expiry (epoch seconds)."""
    from sessions_app.models import WaSession

    rows = WaSession.objects.filter(lease_owner=owner).values_list("id", "lease_expires_at")
    return {pk: at.timestamp() for pk, at in rows if at is not None}


# -- steps ------------------------------------------------------------------------------


async def wait_share(newcomer: SupervisorProcess, total: int, alive: int, timeout: float) -> int:
    """Wait until ``newcomer`` holds about its fair share (the policy's slack allowed)."""
    share = total // alive
    floor = share - max(1, share // 10) - 1
    owner = newcomer.owner()
    deadline = time.monotonic() + timeout
    held = 0
    while time.monotonic() < deadline:
        held = len(await leases_of(owner))
        if held >= floor:
            return held
        await asyncio.sleep(0.2)  # another process's progress: observed, not awaited
    raise BenchError(f"{newcomer.name} holds {held} sessions after {timeout:.0f} s, not ~{share}")


@sync_to_async
def recorded_connected(ids: Sequence[int]) -> int:
    """How many of ``ids`` the database shows connected (paired, with a JID)."""
    from sessions_app.models import WaSession

    return WaSession.objects.filter(pk__in=ids, state="connected").exclude(jid="").count()


async def all_connected(control: ServiceControl, ids: Sequence[int], timeout: float) -> None:
    """Every session is connected at the service *and* its owner has recorded it.

    The service marks a session connected a moment before its owner has written
    the pairing (JID) to the database; a supervisor killed in that moment leaves
    a session that needs a new QR code, which is not what a round measures.
    """
    deadline = time.monotonic() + timeout
    missing = await control.wait_connected(ids, timeout)
    if missing:
        raise BenchError(f"{len(missing)} sessions not connected within {timeout:.0f} s")
    while (recorded := await recorded_connected(ids)) < len(ids):
        if time.monotonic() > deadline:
            raise BenchError(f"only {recorded} sessions recorded as connected in {timeout:.0f} s")
        await asyncio.sleep(0.1)  # the owners' writes: observed, not awaited


def failover_times(
    stats: ServiceStats, held: dict[int, float], since: float
) -> tuple[list[float], list[float]]:
    """Per session: connected again − ``since``, and connected again − its lease expiry."""
    times, after_expiry = [], []
    for sid, expiry in held.items():
        at = stats.connected_at.get(sid)
        if at is None or at <= since:
            continue  # not back (counted by the caller)
        times.append(at - since)
        after_expiry.append(at - expiry)
    return times, after_expiry


async def kill_round(
    cluster: Cluster, control: ServiceControl, ttl: float, results: Results
) -> None:
    victim = cluster.alive[0]
    owner = victim.owner()
    held = await leases_of(owner)
    before = await control.stats()
    killed_at = time.time()
    victim.kill()
    held = await leases_of(owner) or held  # the last renewal's expiry, final now
    missing = await control.wait_connected(held, ttl + 60, exclude_owner=owner)
    after = await control.stats()
    times, after_expiry = failover_times(after, held, killed_at)
    results.kill += times
    results.kill_after_expiry += after_expiry
    results.kill_deltas += Deltas.between(before, after)
    results.not_back += len(missing)
    log(
        f"  SIGKILL {victim.name}: {len(held)} sessions, back after "
        f"{fmt(min(times, default=float('nan')))}–{fmt(max(times, default=float('nan')))} s"
        + (f", {len(missing)} NOT back" if missing else "")
    )


async def term_round(cluster: Cluster, control: ServiceControl, results: Results) -> None:
    victim = cluster.alive[0]
    owner = victim.owner()
    held = await leases_of(owner)
    before = await control.stats()
    signalled_at = time.time()
    code = await asyncio.to_thread(victim.terminate)
    results.term_exit.append(time.time() - signalled_at)
    missing = await control.wait_connected(held, 60, exclude_owner=owner)
    after = await control.stats()
    times, _ = failover_times(after, held, signalled_at)
    deltas = Deltas.between(before, after)
    results.term += times
    results.term_deltas += deltas
    results.not_back += len(missing)
    log(
        f"  SIGTERM {victim.name} (exit {code}): {len(held)} sessions, back after "
        f"{fmt(min(times, default=float('nan')), 2)}–{fmt(max(times, default=float('nan')), 2)} s, "
        f"{deltas.qr_issued} new QR, {deltas.overlaps} overlaps"
        + (f", {len(missing)} NOT back" if missing else "")
    )


async def replace(
    cluster: Cluster, control: ServiceControl, ids: Sequence[int], results: Results
) -> None:
    """Start a supervisor and wait until it holds its share and everything is connected."""
    before = await control.stats()
    started = time.monotonic()
    newcomer = cluster.start_supervisor()
    held = await wait_share(newcomer, len(ids), len(cluster.alive), timeout=90)
    await all_connected(control, ids, 60)
    took = time.monotonic() - started
    deltas = Deltas.between(before, await control.stats())
    results.rebalance.append(took)
    results.rebalance_deltas += deltas
    log(
        f"  {newcomer.name} joined: holds {held} after {took:.1f} s "
        f"({deltas.qr_issued} new QR, {deltas.overlaps} overlaps)"
    )


async def measure(cluster: Cluster, args: argparse.Namespace, results: Results) -> None:
    for _ in range(args.supervisors):
        cluster.start_supervisor().owner()
    async with ServiceControl(cluster.address) as control:
        started = time.monotonic()
        ids = await create_sessions(args.sessions, f"fo-{int(time.time())}")
        await all_connected(control, ids, 180)
        results.pair_s = time.monotonic() - started
        for supervisor in cluster.alive[1:]:
            await wait_share(supervisor, len(ids), len(cluster.alive), timeout=60)
        log(f"{len(ids)} sessions paired and shared in {results.pair_s:.1f} s")
        for index in range(args.rounds):
            log(f"round {index + 1}/{args.rounds}")
            await kill_round(cluster, control, args.lease_ttl, results)
            await replace(cluster, control, ids, results)
            await term_round(cluster, control, results)
            await replace(cluster, control, ids, results)


# -- the report ------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: Results, args: argparse.Namespace, load: tuple[str, str]) -> str:
    kill, term = summary(results.kill), summary(results.term)
    kill_aim = args.lease_ttl + AIM_OVER_TTL_S
    lines = [
        f"Failover: {args.sessions} sessions on {args.supervisors} supervisors, "
        f"{args.rounds} rounds, lease TTL {args.lease_ttl:g} s, renewal every "
        f"{args.renew_interval:g} s; all times in seconds",
        "",
        table(
            [
                ("SIGKILL → connected elsewhere", kill),
                ("  of which after the lease expired", summary(results.kill_after_expiry)),
                ("SIGTERM → connected elsewhere", term),
                ("SIGTERM → process exited", summary(results.term_exit)),
                ("replacement joins → holds its share", summary(results.rebalance)),
            ],
            label="failover",
            digits=2,
        ),
        "",
        f"aims: SIGKILL p99 {fmt(kill['p99'], 2)} s < TTL + {AIM_OVER_TTL_S:g} s = "
        f"{kill_aim:g} s: {verdict(kill['p99'] < kill_aim)}; SIGTERM p99 "
        f"{fmt(term['p99'], 2)} s < {AIM_GRACEFUL_S:g} s: "
        f"{verdict(term['p99'] < AIM_GRACEFUL_S)}; new QR codes on SIGTERM: "
        f"{results.term_deltas.qr_issued} (must be 0): "
        f"{verdict(results.term_deltas.qr_issued == 0)}; overlaps on SIGTERM: "
        f"{results.term_deltas.overlaps} (must be 0): "
        f"{verdict(results.term_deltas.overlaps == 0)}",
        f"also: after SIGKILL {results.kill_deltas.qr_issued} new QR, "
        f"{results.kill_deltas.overlaps} overlaps; rebalancing {results.rebalance_deltas.qr_issued}"
        f" new QR, {results.rebalance_deltas.overlaps} overlaps; sessions not back: "
        f"{results.not_back}; pairing all {args.sessions} at the start took "
        f"{results.pair_s:.1f} s",
        f"load average before: {load[0]}, after: {load[1]}",
    ]
    for label, deltas in (
        ("SIGKILL", results.kill_deltas),
        ("SIGTERM", results.term_deltas),
        ("rebalancing", results.rebalance_deltas),
    ):
        if deltas.qr_sessions:
            lines.append(f"sessions with a new QR code after {label}: {deltas.qr_sessions}")
    if results.problems:
        lines += ["", "warnings/errors in the process logs (count × first example):"]
        lines += [f"  {line}" for line in results.problems]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200, help="paired sessions (200)")
    parser.add_argument("--rounds", type=int, default=3, help="SIGKILL + SIGTERM rounds (3)")
    parser.add_argument("--supervisors", type=int, default=2, help="supervisors running (2)")
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="WACONNECT_LEASE_TTL (15)")
    parser.add_argument(
        "--renew-interval", type=float, default=5.0, help="WACONNECT_RENEW_INTERVAL (5)"
    )
    parser.add_argument(
        "--database", default="waconnect_bench_failover", help="PostgreSQL database to create"
    )
    parser.add_argument("--redis", default=REDIS_URL, help=f"Redis database ({REDIS_URL})")
    parser.add_argument("--json", metavar="PATH", help="also write every sample as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--keep-database", action="store_true", help="do not drop the database (to inspect it)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results()
    load_before = load_average()
    settings = {
        "WACONNECT_LEASE_TTL": str(args.lease_ttl),
        "WACONNECT_RENEW_INTERVAL": str(args.renew_interval),
    }
    with (
        log_directory("waconnect-failover-", keep=args.keep_logs) as log_dir,
        bench_database(args.database, keep=args.keep_database) as url,
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
                asyncio.run(measure(cluster, args, results))
            finally:
                cluster.close()
                results.problems = log_problems(cluster)
    print(report(results, args, (load_before, load_average())))
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
