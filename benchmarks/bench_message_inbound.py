"""An incoming message → stored and pushed to the session's page, in one process.

Run from the repository root (one benchmark at a time: under the shared lock)::

    flock /tmp/waconnect-heavy.lock .venv/bin/python benchmarks/bench_message_inbound.py \
        [--messages 500] [--warmup 20] [--sessions 20] [--json out.json]

One process, as under ``runserver``: a supervisor on the simulated WhatsApp (in
process), the in-memory channel layer, on a PostgreSQL database of its own
(created, migrated and dropped here). ``--sessions`` sessions are linked devices
already; the supervisor claims and connects them all first. Then, one at a time,
a peer's phone messages a session chosen in turn (``Messaging.peer_message``, what
the service's control line and ``simulate_phone message`` call), and the
benchmark, subscribed like a page to the session's messages group
(:func:`messaging.live.messages_group`), waits for that message's push.

Measured: **peer sends → stored and pushed** = the push reached the page's group −
the peer's send (``time.perf_counter``). The push is sent after the row is
committed (:mod:`messaging.pump`), so it covers the driver event, the runner's
inbox, the fenced ``INSERT … ON CONFLICT DO NOTHING`` and the commit, and the
channel-layer push a page's socket forwards; the socket frame and the page's
DOM update are not in it (``bench_qr_latency.py`` measures those for the QR
push: 0.4 ms p50 socket message → markup swapped).

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clusterenv import bench_database, log, setup_django
from benchmarks.stats import load_average, summary, table

PEER = "491700000002"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer

    from messaging.live import messages_group
    from sessions_app.conf import supervisor_config
    from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
    from sessions_app.models import WaSession
    from sessions_app.supervisor import Supervisor

    world = SimulatedWhatsApp(SimulatedTiming(pair_delay=0, delivered_delay=3600, read_delay=-1))

    @sync_to_async
    def make_sessions() -> list[int]:
        rows = [
            WaSession(name=f"bench-in-{i:04d}", jid=f"49152{i:07d}@s.whatsapp.net")
            for i in range(args.sessions)
        ]
        created = WaSession.objects.bulk_create(rows)
        for row in created:
            world.devices[row.jid] = row.pk
        return [row.pk for row in created]

    ids = await make_sessions()
    supervisor = Supervisor(SimulatedDriver(world), config=supervisor_config())
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    missing = await world.until_connected(ids, timeout=120)
    if missing:
        raise RuntimeError(f"{len(missing)} sessions never connected")

    layer = get_channel_layer()
    channel = await layer.new_channel()
    for sid in ids:
        await layer.group_add(messages_group(sid), channel)
    pushed: dict[str, float] = {}
    waiting: dict[str, asyncio.Future[None]] = {}

    async def listen() -> None:
        while True:
            message = (await layer.receive(channel))["message"]
            if message["direction"] == "in":
                pushed.setdefault(message["wa_id"], time.perf_counter())
                future = waiting.pop(message["wa_id"], None)
                if future is not None and not future.done():
                    future.set_result(None)

    listener = asyncio.create_task(listen())
    loop = asyncio.get_running_loop()
    latencies = []
    for i in range(args.warmup + args.messages):
        sid = ids[i % len(ids)]
        start = time.perf_counter()
        message_id = world.messages.peer_message(sid, PEER, f"hello {i}", "Bench")
        assert message_id is not None
        if message_id not in pushed:
            waiting[message_id] = loop.create_future()
            await waiting[message_id]
        if i >= args.warmup:
            latencies.append((pushed[message_id] - start) * 1000)
    listener.cancel()
    supervisor.stop()
    await task
    return {
        "sessions": len(ids),
        "peer_to_pushed_ms": summary(latencies),
        "load_average_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    log(f"load average before: {load_average()}")
    with bench_database(f"bench_inbound_{os.getpid()}") as url:
        setup_django(url, "")
        os.environ["REDIS_URL"] = ""
        result = asyncio.run(run(args))
    print(
        table(
            [("peer sends → stored and pushed (ms)", result["peer_to_pushed_ms"])],
            digits=2,
        )
    )
    print(f"sessions: {result['sessions']}; load average after: {result['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
