"""API send → received by the simulated WhatsApp, on the production shape.

Run from the repository root (one benchmark at a time: under the shared lock)::

    flock /tmp/waconnect-heavy.lock .venv/bin/python benchmarks/bench_message_api_cluster.py \
        [--messages 300] [--warmup 20] [--sessions 4] [--json out.json]

Shape: ``benchmarks/cluster.py`` starts the simulated WhatsApp service (every QR
scanned at once) and two ``run_supervisor`` processes; one Daphne process
(``python -m daphne waconnect.asgi:application``, ``DEBUG=off``, the web tier's
production settings, as ``bench_cluster_qr.py`` starts it) serves the API; all on
a PostgreSQL database of its own and Redis db 12. Pacing is off
(``WACONNECT_SEND_INTERVAL=0``). A token with ``sessions:write`` and
``messages:send`` comes from ``manage.py create_api_token``; the client (httpx,
one connection) creates ``--sessions`` sessions over the API and waits until
they are linked and connected.

Then, one message at a time, to a peer's number, round robin over the sessions::

    POST /api/v1/sessions/{id}/messages?wait=sent&timeout=10   {"to": ..., "text": ...}

Measured: **API send → received by WhatsApp** = the moment the simulated WhatsApp
accepted the message (its record of every message carried, ``accepted_at``, read
over the service's control line at the end) − the moment the client sent the
POST (``time.time()``: the same machine's clock for both), so it covers the
POST, the ``queued`` row, the ring through Redis, the owning supervisor's take
(``sending`` recorded first) and its driver call to the service. Also **API send
→ answered sent** (the ``wait=sent`` answer: the ack recorded and pushed back
through Redis to Daphne). The next message is sent after the answer.

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks.bench_cluster_qr import WebProcess, prepare_web, web_env
from benchmarks.cluster import Cluster
from benchmarks.clusterenv import (
    bench_database,
    cluster_arguments,
    flush_redis,
    log,
    log_directory,
    log_problems,
    manage,
    message_arguments,
    setup_django,
)
from benchmarks.liveserver import ADMIN_USERNAME
from benchmarks.stats import load_average, summary, table

PEER = "491700000003"
AIM_P99_MS = 50.0


def token_args() -> list[str]:
    """``manage.py`` arguments that print a token for the benchmarks' API client."""
    scopes = ("sessions:read", "sessions:write", "messages:send", "messages:read")
    args = ["create_api_token", "--user", ADMIN_USERNAME, "--name", "bench-messages"]
    for scope in scopes:
        args += ["--scope", scope]
    return args


def make_token(env: dict[str, str]) -> str:
    return manage(env, *token_args()).strip().splitlines()[-1]


async def measure(base_url: str, token: str, address: str, args: argparse.Namespace) -> dict:
    from sessions_app.drivers.simulated_service import ServiceControl

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=f"{base_url}/api/v1", headers=headers, timeout=40) as api,
        ServiceControl(address) as control,
    ):
        ids = []
        for i in range(args.sessions):
            response = await api.post("/sessions", json={"name": f"bench-msg-{i}"})
            response.raise_for_status()
            ids.append(response.json()["id"])
        missing = await control.wait_connected(ids, 120)
        if missing:
            raise RuntimeError(f"{len(missing)} sessions never connected")
        await control.delays(ack_delay=0.0, delivered_delay=3600, read_delay=-1)
        sent_at: dict[str, float] = {}
        answered_ms = []
        statuses: dict[str, int] = {}
        for i in range(args.warmup + args.messages):
            sid = ids[i % len(ids)]
            start = time.time()
            response = await api.post(
                f"/sessions/{sid}/messages",
                params={"wait": "sent", "timeout": 10},
                json={"to": PEER, "text": f"bench {i}"},
            )
            answered = time.time()
            response.raise_for_status()
            body = response.json()
            statuses[body["status"]] = statuses.get(body["status"], 0) + 1
            if i >= args.warmup:
                sent_at[body["id"]] = start
                answered_ms.append((answered - start) * 1000)
        carried = {c.message_id: c.accepted_at for c in await control.carried()}
    to_whatsapp = [
        (carried[ref] - start) * 1000 for ref, start in sent_at.items() if ref in carried
    ]
    return {
        "sessions": len(ids),
        "api_to_whatsapp_ms": summary(to_whatsapp),
        "api_to_answered_sent_ms": summary(answered_ms),
        "not_carried": len(sent_at) - len(to_whatsapp),
        "answer_statuses": statuses,
    }


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    settings = {"WACONNECT_SEND_INTERVAL": "0", "WACONNECT_SIM_PAIR_DELAY": "0"}
    with bench_database(args.database) as url:
        flush_redis(args.redis)
        setup_django(url, args.redis)  # for the service's control line's imports
        cluster = Cluster(
            database_url=url,
            redis_url=args.redis,
            log_dir=log_dir,
            settings=settings,
            auto_scan=0.05,
        )
        with cluster, tempfile.TemporaryDirectory(prefix="waconnect-static-") as static:
            web = WebProcess(web_env(cluster, url, Path(static)), log_dir / "daphne.log")
            try:
                prepare_web(web.env)
                token = make_token(web.env)
                for _ in range(args.supervisors):
                    cluster.start_supervisor().owner()
                web.start()
                result = asyncio.run(measure(web.url, token, cluster.address, args))
            finally:
                web.stop()
                cluster.close()
                result_problems = log_problems(cluster, extra=[web.log_path])
    result["problems"] = result_problems
    result["load_average_after"] = load_average()
    return result


def report(result: dict[str, Any], aim_ms: float, shape: str, json_path: Path | None) -> None:
    """Print the results (and write them to ``json_path``)."""
    print(
        table(
            [
                ("API send → received by WhatsApp (ms)", result["api_to_whatsapp_ms"]),
                ("API send → answered sent (ms)", result["api_to_answered_sent_ms"]),
            ],
            digits=1,
        )
    )
    print(
        f"aim: p99 < {aim_ms:g} ms; {result['sessions']} sessions, {shape}; "
        f"answers: {result['answer_statuses']}, not carried: {result['not_carried']}; "
        f"load average after: {result['load_average_after']}"
    )
    for problem in result.get("problems", []):
        print("log:", problem)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = message_arguments(__doc__.split("\n\n")[0])
    cluster_arguments(parser, database="bench_message_api")
    args = parser.parse_args()
    log(f"load average before: {load_average()}")
    with log_directory("bench-message-api-") as log_dir:
        result = run(args, log_dir)
    report(result, AIM_P99_MS, f"{args.supervisors} supervisors, one Daphne", args.json)


if __name__ == "__main__":
    main()
