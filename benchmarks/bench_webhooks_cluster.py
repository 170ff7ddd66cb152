"""Incoming message → webhook received, on the production shape.

Run from the repository root (one benchmark at a time: under the shared lock)::

    flock /tmp/waconnect-heavy.lock .venv/bin/python benchmarks/bench_webhooks_cluster.py \
        [--messages 300] [--warmup 20] [--interval 0.02] [--sessions 4] \
        [--supervisors 2] [--json out.json]

Shape: ``benchmarks/cluster.py`` starts the simulated WhatsApp service (every QR
scanned at once) and ``--supervisors`` ``run_supervisor`` processes, each with its
webhook dispatcher beside it, on a PostgreSQL database of its own and Redis db 12;
the fast receiver of ``bench_webhooks.py`` (raw asyncio HTTP/1.1, 204 to
everything) runs in a process of its own. ``--sessions`` sessions are created
through ``intents.create_session`` and linked; one endpoint takes
``message.received`` of every session (``WACONNECT_WEBHOOKS_ALLOW_PRIVATE``: the
receiver is on loopback).

Then peers' phones message the sessions, round robin, one every ``--interval`` s,
over the service's control line. **Incoming message → webhook received** = the
webhook's arrival at the receiver (its clock) − the moment the benchmark asked the
service to send the message (``time.time()``; one machine, one clock). It covers
WhatsApp's delivery to the owning supervisor, the fenced store with its outbox
row in one transaction, the ring, the dispatcher's claim, signing and the POST.

Aim (issue 12): p99 < 60 ms on the production shape. Not a test: nothing is
asserted; see docs/webhooks.md and docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cluster import Cluster
from benchmarks.clusterenv import (
    bench_database,
    cluster_arguments,
    flush_redis,
    log,
    log_directory,
    log_problems,
    message_arguments,
    setup_django,
)
from benchmarks.stats import load_average, summary, table

AIM_P99_MS = 60.0
PEER = "491700000007"
RECEIVER = Path(__file__).resolve().parent / "bench_webhooks.py"


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(RECEIVER), "--receiver"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/hook"


def stop_receiver(proc: subprocess.Popen[str]) -> dict[str, float]:
    """``{wa_id: arrival}`` of every webhook the receiver took."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    arrivals: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return arrivals


def delivered_count() -> int:
    from webhooks.models import Delivery

    return Delivery.objects.filter(status=Delivery.Status.DELIVERED).count()


def balanced(supervisors: int, sessions: int) -> bool:
    """Every supervisor holds its fair share, all of it connected: no rebalancing
    hand-over will happen during the measurement."""
    from django.db.models import Count

    from sessions_app.models import WaSession

    held = WaSession.objects.filter(state="connected").exclude(lease_owner="")
    counts = list(held.values("lease_owner").annotate(n=Count("id")).values_list("n", flat=True))
    share = -(-sessions // supervisors)
    return sum(counts) == sessions and len(counts) == supervisors and max(counts) <= share


async def measure(address: str, ids: list[int], args: argparse.Namespace) -> dict[str, float]:
    """Send the messages; ``{wa_id: start}`` of the measured ones (after the warm-up)."""
    from asgiref.sync import sync_to_async

    from sessions_app.drivers.simulated_service import ServiceControl

    started: dict[str, float] = {}
    async with ServiceControl(address) as control:
        deadline = time.monotonic() + 120
        while not await sync_to_async(balanced)(args.supervisors, len(ids)):
            if time.monotonic() > deadline:
                raise RuntimeError("the sessions were not spread over the supervisors in 120 s")
            await asyncio.sleep(0.2)  # a benchmark's set-up: polling is fine
        total = args.warmup + args.messages
        for i in range(total):
            start = time.time()
            wa_id = await control.peer_message(ids[i % len(ids)], PEER, f"bench {i}")
            if wa_id is None:
                raise RuntimeError("the service refused a peer message")
            if i >= args.warmup:
                started[wa_id] = start
            await asyncio.sleep(args.interval)
        deadline = time.monotonic() + 120
        while await sync_to_async(delivered_count)() < total:  # a benchmark: polling is fine
            if time.monotonic() > deadline:
                raise RuntimeError("not every webhook was delivered within 120 s")
            await asyncio.sleep(0.2)
    return started


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    settings = {"WACONNECT_WEBHOOKS_ALLOW_PRIVATE": "true", "WACONNECT_SIM_PAIR_DELAY": "0"}
    with bench_database(args.database) as url:
        flush_redis(args.redis)
        setup_django(url, args.redis)
        from sessions_app import intents
        from webhooks import endpoints

        receiver, hook_url = start_receiver()
        arrivals: dict[str, float] = {}
        try:
            cluster = Cluster(
                database_url=url, redis_url=args.redis, log_dir=log_dir, settings=settings
            )
            with cluster:
                endpoints.create(url=hook_url, event_types=["message.received"])
                for _ in range(args.supervisors):
                    cluster.start_supervisor().owner()
                ids = [
                    intents.create_session(f"bench-hook-{i}", "bench").pk
                    for i in range(args.sessions)
                ]
                started = asyncio.run(measure(cluster.address, ids, args))
                cluster.close()
                problems = log_problems(cluster)
        finally:
            arrivals = stop_receiver(receiver)
    latencies = [(arrivals[k] - t) * 1000 for k, t in started.items() if k in arrivals]
    return {
        "message_to_webhook_ms": summary(latencies),
        "not_received": len(started) - len(latencies),
        "problems": problems,
        "load_average_after": load_average(),
    }


def main() -> None:
    parser = message_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.02)
    cluster_arguments(parser, database="bench_webhooks_cluster")
    args = parser.parse_args()
    log(f"load average before: {load_average()}")
    with log_directory("bench-webhooks-cluster-") as log_dir:
        result = run(args, log_dir)
    print(table([("incoming message → webhook received (ms)", result["message_to_webhook_ms"])]))
    print(
        f"aim: p99 < {AIM_P99_MS:g} ms; {args.sessions} sessions, {args.supervisors} "
        f"supervisors with their dispatchers; not received: {result['not_received']}; "
        f"load average after: {result['load_average_after']}"
    )
    for problem in result["problems"]:
        print("log:", problem)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
