"""API send → received by the simulated WhatsApp, in one process (as ``make run``).

Run from the repository root (one benchmark at a time: under the shared lock)::

    flock /tmp/waconnect-heavy.lock .venv/bin/python benchmarks/bench_message_api.py \
        [--messages 300] [--warmup 20] [--sessions 4] [--json out.json]

Shape: one ``manage.py runserver`` process (:class:`benchmarks.liveserver.LiveServer`:
Daphne with the supervisor inside, SQLite, the in-memory channel layer, ``DEBUG`` on),
as the README's first command starts it, except that its simulated WhatsApp is the
service ``manage.py simulated_whatsapp`` in a process of its own (every QR scanned at
once), so the benchmark can read when WhatsApp accepted each message. Pacing is
off. The client and the measure are those of ``bench_message_api_cluster.py`` (the
production shape), so the two results compare:

- **API send → received by WhatsApp** = the simulated WhatsApp's ``accepted_at`` for
  the message − the moment the client sent ``POST /api/v1/sessions/{id}/messages``;
- **API send → answered sent** = the ``?wait=sent`` answer's arrival − the same start.

Aim (issue 11): p99 < 25 ms in one process. Not a test: nothing is asserted; see
docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_message_api_cluster import measure, report, token_args
from benchmarks.cluster import Cluster
from benchmarks.clusterenv import (
    REDIS_URL,
    log,
    log_directory,
    manage,
    message_arguments,
    setup_django,
)
from benchmarks.liveserver import LiveServer
from benchmarks.stats import load_average

AIM_P99_MS = 25.0


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    unused_db = f"sqlite:///{log_dir / 'service-unused.sqlite3'}"
    setup_django(unused_db, REDIS_URL)  # for the service's control line's imports
    # The service keeps no rows; its Django settings only need to load.
    service = Cluster(database_url=unused_db, redis_url=REDIS_URL, log_dir=log_dir)
    with service:
        env = {
            "WACONNECT_SIM_SERVICE": service.address,
            "WACONNECT_SEND_INTERVAL": "0",
            "WACONNECT_SIM_PAIR_DELAY": "0",
        }
        with LiveServer(extra_env=env, log_level="WARNING") as server:
            token = manage(server.env(), *token_args()).strip().splitlines()[-1]
            result = asyncio.run(measure(server.url, token, service.address, args))
    result["load_average_after"] = load_average()
    return result


def main() -> None:
    args = message_arguments(__doc__.split("\n\n")[0]).parse_args()
    log(f"load average before: {load_average()}")
    with log_directory("bench-message-api-one-") as log_dir:
        result = run(args, log_dir)
    shape = "one process (runserver, SQLite, in-memory layer)"
    report(result, AIM_P99_MS, shape, args.json)


if __name__ == "__main__":
    main()
