"""The supervisor's part of create → QR, step by step, in one process.

Run from the repository root::

    .venv/bin/python benchmarks/bench_supervisor_path.py      # --samples 50
    .venv/bin/python benchmarks/bench_supervisor_path.py --postgres

``intents.create_session`` (in a thread, as a request or socket calls it) rings the
real supervisor (SQLite in a temporary directory and the in-memory channel layer,
or with ``--postgres`` a PostgreSQL database of its own and Redis, the production
shape's stores; the simulated WhatsApp issuing its first code at once); the time
of every step on the way to the QR code's push is taken from wrappers around the
supervisor's database calls (``sessions_app.owner_db``), the ring, the driver and
``doorbell.publish``, all relative to the create call, ms. One create at a time,
0.1 s apart. The floor of this part of create → QR is the sum of the database
calls' own work plus the pushes; the rest is waiting for a core.
Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import load_average, summary, table

marks: list[tuple[str, float]] = []
#: Set when a snapshot showing the QR code was pushed (created on the running loop).
qr_pushed: list[asyncio.Event] = []


def mark(name: str) -> None:
    marks.append((name, time.perf_counter()))


def setup_django(database_url: str | None, redis_url: str | None) -> None:
    """SQLite and the in-memory layer, or the database and Redis given (migrated)."""
    os.environ.update(
        WACONNECT_DATA_DIR=tempfile.mkdtemp(prefix="waconnect-bench-path-"),
        DJANGO_SETTINGS_MODULE="waconnect.settings",
        LOG_LEVEL="WARNING",
    )
    for name, url in (("DATABASE_URL", database_url), ("REDIS_URL", redis_url)):
        if url is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = url
    import django
    from django.core.management import call_command

    django.setup()
    if database_url is None:  # bench_database has migrated its own
        call_command("migrate", verbosity=0)


def instrument() -> None:
    """Wrap the calls on the path so that each marks its start and end."""
    from sessions_app import doorbell, owner_db
    from sessions_app.supervisor import Supervisor

    def wrap(module: Any, name: str) -> None:
        inner: Callable[..., Any] = getattr(module, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            label = name
            if name == "write":  # "connecting", then the code: "write 1", "write 2"
                started = [m for m, _ in marks if m.startswith("write") and m.endswith(">")]
                label = f"write {len(started) + 1}"
            mark(f"{label} >")
            try:
                return await inner(*args, **kwargs)
            finally:
                mark(f"{label} <")

        setattr(module, name, timed)

    for name in ("census_and_claim", "claim", "load", "load_taking_gestures", "write"):
        wrap(owner_db, name)
    publish = doorbell.publish

    async def published(snapshot: dict[str, Any], row: dict[str, Any] | None) -> None:
        await publish(snapshot, row)
        mark(f"pushed {snapshot['state']}")
        if snapshot["state"] == "qr_required" and qr_pushed:
            qr_pushed[0].set()

    doorbell.publish = published  # type: ignore[assignment]
    ring = Supervisor.ring

    def rung(self: Supervisor, message: dict[str, Any]) -> None:
        mark("ring heard")
        ring(self, message)

    Supervisor.ring = rung  # type: ignore[method-assign]


async def run(samples: int) -> dict[str, list[float]]:
    from asgiref.sync import sync_to_async

    from ops.heap import freeze_startup_heap
    from sessions_app import intents
    from sessions_app.conf import SupervisorConfig
    from sessions_app.drivers.simulated import (
        SimulatedDriver,
        SimulatedTiming,
        SimulatedWhatsApp,
    )
    from sessions_app.supervisor import Supervisor

    world = SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=60, next_qr_ttl=20, qr_count=6))
    driver = SimulatedDriver(world)
    start = driver.start

    async def started(spec: Any, on_event: Any) -> None:
        mark("driver.start")
        await start(spec, lambda event: (mark(f"event {type(event).__name__}"), on_event(event)))

    driver.start = started  # type: ignore[method-assign]
    freeze_startup_heap("bench_supervisor_path")  # as run_supervisor and the web tier do
    supervisor = Supervisor(driver, config=SupervisorConfig(backoff_base=3600, backoff_cap=3600))
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    steps: dict[str, list[float]] = {}
    qr_pushed.append(asyncio.Event())
    try:
        for i in range(samples + 2):
            marks.clear()
            qr_pushed[0].clear()
            t0 = time.perf_counter()
            mark("create >")
            await sync_to_async(intents.create_session)(f"path-{i}", "bench")
            mark("create <")
            async with asyncio.timeout(10):
                await qr_pushed[0].wait()
            await asyncio.sleep(0.1)  # the step after the code, and a pause
            if i < 2:
                continue  # warm-up
            for name, at in marks:
                steps.setdefault(name, []).append((at - t0) * 1000)
    finally:
        supervisor.stop()
        await task
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="PostgreSQL (a database of its own, dropped after) and Redis, not SQLite",
    )
    args = parser.parse_args()
    print(f"load average before: {load_average()}", flush=True)
    with contextlib.ExitStack() as stack:
        if args.postgres:
            from benchmarks import clusterenv

            database_url = stack.enter_context(clusterenv.bench_database("waconnect_bench_path"))
            stack.callback(clusterenv.close_django_connections)
            clusterenv.flush_redis()
            setup_django(database_url, clusterenv.REDIS_URL)
        else:
            setup_django(None, None)
        instrument()
        steps = asyncio.run(run(args.samples))
    print(f"load average after: {load_average()}")
    rows = sorted(steps.items(), key=lambda item: summary(item[1])["p50"])
    print(table([(name, summary(v)) for name, v in rows], label="ms after the create call"))


if __name__ == "__main__":
    main()
