"""Each database call on the supervisor's way from "create" to the QR code, alone.

Run from the repository root::

    .venv/bin/python benchmarks/bench_path_statements.py      # --calls 2000

In one process, on a SQLite file of its own (migrated, 20 sessions, one of them
leased), with no other work on the machine's other core: each call's CPU and
database time, called ``--calls`` times in a row, µs p50 / p95 / p99. On the
create path these calls run beside the page's render and the browser, and every
microsecond of CPU here is one the others wait for (docs/benchmarks.md). Run it
in an older checkout with the same interpreter to compare. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import summary, table


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "waconnect.settings")
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ["WACONNECT_DATA_DIR"] = tempfile.mkdtemp(prefix="waconnect-bench-")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def timed(calls: int, call: Callable[[], object]) -> list[float]:
    for _ in range(min(100, calls)):  # warm: caches, the connection
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls of each (2000)")
    args = parser.parse_args()
    setup_django()

    from django.utils import timezone

    from sessions_app import intents, leases, owner_db, snapshots
    from webhooks import outbox

    sessions = [intents.create_session(f"bench-{n}", "bench") for n in range(20)]
    (lease,) = leases.claim("bench-owner", 3600, 1, [sessions[0].pk])
    row = leases.load(lease.session_id)
    assert row is not None

    def rotation() -> None:
        leases.write(lease, {"qr_code": "2@bench", "qr_issued_at": timezone.now()})

    calls: dict[str, Callable[[], object]] = {
        "census (every ring)": lambda: leases.census("bench-other"),
        "claim, nothing left to take (every ring)": lambda: leases.claim("bench-other", 10, 1),
        "load (a runner's first step)": lambda: leases.load(lease.session_id),
        "take gestures (simulated, first step)": lambda: owner_db._take_gestures(lease),
        "webhook endpoints of a write": lambda: outbox.session_endpoints(lease.session_id),
        "fenced write, a QR rotation": rotation,
        "snapshot with its 20 events": lambda: snapshots.snapshot(row),
    }
    results = {name: summary(timed(args.calls, call)) for name, call in calls.items()}
    print(table(results.items(), label="call, µs", digits=0))


if __name__ == "__main__":
    main()
