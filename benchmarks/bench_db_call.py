"""One supervisor database call on PostgreSQL: pooled connection vs a persistent one.

The web tier and the supervisors borrow connections from Django's psycopg pool
(CONN_MAX_AGE 0) since persistent per-thread connections leaked under ASGI. The
supervisor makes several calls per session event from its own database thread,
so this measures what a borrow costs there: N calls of a one-row query through
``sessions_app.dbthread.supervisor_db``, once with this checkout's settings (pool)
and once with the pool off and CONN_MAX_AGE 300 (the former persistent
connection), each in a process of its own, alternating, on a database of its own.

    python benchmarks/bench_db_call.py [--calls 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clusterenv import bench_database, log
from benchmarks.stats import summary, table

MODES = ("pool", "persistent")


def child(mode: str, calls: int) -> None:
    """Measure in this process (a fresh Django) and print the samples as JSON."""
    import django
    from django.conf import settings

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "waconnect.settings")
    django.setup()
    if mode == "persistent":
        settings.DATABASES["default"]["OPTIONS"].pop("pool", None)
        settings.DATABASES["default"]["CONN_MAX_AGE"] = 300

    from sessions_app.dbthread import supervisor_db
    from sessions_app.models import WaSession

    @supervisor_db
    def one_row() -> bool:
        return WaSession.objects.filter(pk=1).exists()

    async def run() -> list[float]:
        for _ in range(200):  # warm-up: connection made, pool filled
            await one_row()
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            await one_row()
            samples.append((time.perf_counter() - start) * 1000)
        return samples

    print(json.dumps(asyncio.run(run())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="counted calls per run (3000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, alternating (2)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls)
        return
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    with bench_database("waconnect_bench_db_call") as url:
        env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "waconnect.settings"}
        for round_ in range(args.rounds):
            for mode in MODES:
                log(f"round {round_ + 1}: {mode}")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--calls", str(args.calls)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                samples[mode].extend(json.loads(out.stdout.strip().splitlines()[-1]))
    print(table(((m, summary(s)) for m, s in samples.items()), label="one call (ms)", digits=2))


if __name__ == "__main__":
    main()
