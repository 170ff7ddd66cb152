"""Benchmark the real neonize workers: memory, start-up, and create → connect.

Not a test. Run from the repository root::

    .venv/bin/python benchmarks/bench_workers.py

It measures, on this machine, with real neonize worker processes:

1. PSS (``/proc/<pid>/smaps_rollup``) of idle, warm workers (neonize imported,
   waiting for a session);
2. the wall time to start 10, 50 and 100 workers at once until each says "ready";
3. the time from ``intents.create_session`` (what the create page calls) to the
   worker asking neonize to connect, through the real supervisor (SQLite,
   in-memory channel layer), with the warm pool and without it: when the worker
   called ``connect()`` by its own clock (``time.monotonic()``, one clock for the
   host's processes, sent in its "connecting" message), and when that word
   reached the supervisor's event loop (the measure of earlier runs: it adds the
   supervisor's wait for its loop and the GIL).

The connect itself fails at the DNS lookup here (no internet); that is after the
point measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


def setup_django(data_dir: str) -> None:
    os.environ["WACONNECT_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "waconnect.settings"
    os.environ["LOG_LEVEL"] = "WARNING"
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


async def start_workers(count: int, store: str) -> tuple[float, list[float]]:
    from sessions_app.drivers.neonize_driver import Worker, WorkerConfig

    config = WorkerConfig(store=store, deadline=120, heartbeat=5)
    workers = [Worker(config) for _ in range(count)]
    started = time.perf_counter()
    await asyncio.gather(*(w.spawn() for w in workers))
    await asyncio.gather(*(w.ready.wait() for w in workers))
    took = time.perf_counter() - started
    pss = [pss_mib(w.pid) for w in workers if w.pid]
    await asyncio.gather(*(w.terminate() for w in workers))
    return took, pss


async def create_to_connect(samples: int, warm: int, store: str) -> tuple[list[float], list[float]]:
    """Per sample, ms from the create: the worker's connect() call (its clock), and
    the supervisor hearing of it."""
    from asgiref.sync import sync_to_async

    from ops.heap import freeze_startup_heap
    from sessions_app import intents
    from sessions_app.conf import SupervisorConfig
    from sessions_app.drivers.neonize_driver import NeonizeDriver, WorkerConfig
    from sessions_app.models import WaSession
    from sessions_app.supervisor import Supervisor

    # As run_supervisor does before it serves: without it, one create in ~100 waited
    # for a full collection of start-up's objects (~85 ms here, see ops/heap.py).
    freeze_startup_heap("bench_workers")
    await sync_to_async(WaSession.objects.all().delete)()
    driver = NeonizeDriver(WorkerConfig(store=store, warm=warm, deadline=30))
    config = SupervisorConfig(backoff_base=3600, backoff_cap=3600)  # no retries mid-run
    supervisor = Supervisor(driver, config=config)
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    called: list[float] = []
    heard: list[float] = []
    try:
        for i in range(samples):
            if warm:  # a steady trickle: the pool has refilled since the last one
                await driver.pool_ready()
            started = time.monotonic()
            session = await sync_to_async(intents.create_session)(f"bench-{warm}-{i}", "bench")
            worker = await driver.worker_for(session.pk)
            await asyncio.wait_for(worker.connecting.wait(), 30)
            assert worker.connecting_at is not None and worker.connect_called_at is not None
            called.append((worker.connect_called_at - started) * 1000)
            heard.append((worker.connecting_at - started) * 1000)
    finally:
        supervisor.stop()
        await task
    return called, heard


def row(label: str, values: list[float], unit: str = "ms") -> str:
    return (
        f"| {label} | {len(values)} | {percentile(values, 50):.1f} | {percentile(values, 95):.1f} "
        f"| {percentile(values, 99):.1f} | {max(values):.1f} | {unit} |"
    )


async def main(args: argparse.Namespace, data_dir: str) -> None:
    store = str(Path(data_dir) / "whatsmeow.sqlite3")
    print(f"# neonize workers on {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")

    print(
        "| workers started at once | wall time to all ready (s) "
        "| PSS per worker, median (MiB) | PSS max (MiB) |"
    )
    print("|---:|---:|---:|---:|")
    for count in args.counts:
        took, pss = await start_workers(count, store)
        print(f"| {count} | {took:.2f} | {statistics.median(pss):.1f} | {max(pss):.1f} |")

    print("\n| create → worker asks neonize to connect | n | p50 | p95 | p99 | max | unit |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, warm in (("warm pool (2 ready workers)", 2), ("no warm pool (spawn on demand)", 0)):
        called, heard = await create_to_connect(args.samples, warm=warm, store=store)
        print(row(f"{label}: the worker calls connect()", called))
        print(row(f"{label}: the supervisor hears of it", heard))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--samples", type=int, default=50)
    data_dir = tempfile.mkdtemp(prefix="waconnect-bench-")
    setup_django(data_dir)
    from sessions_app.drivers.neonize_driver import ensure_store_schema

    ensure_store_schema(str(Path(data_dir) / "whatsmeow.sqlite3"))
    asyncio.run(main(parser.parse_args(), data_dir))
