"""Webhooks on PostgreSQL: incoming message → webhook received, and draining a backlog.

One process runs a webhook dispatcher (what every supervisor runs beside itself)
on a fresh PostgreSQL database; a fast receiver (raw asyncio HTTP/1.1, 204 to
everything) runs in a process of its own and notes when each webhook arrived.

1. **Latency**: ``--messages`` incoming messages stored by the owner's real path
   (``messaging.inbound.store``, fenced, in its transaction, from a database thread
   of its own like the supervisor's), one every ``--interval`` s; each one's time
   from the start of the store to the webhook's arrival at the receiver.
2. **Backlog drain / sustained rate**: ``--backlog`` events over ``--lanes``
   sessions written while the endpoint is disabled (a receiver outage), then the
   endpoint enabled: the time until every one was delivered, and deliveries/s.

    python benchmarks/bench_webhooks.py [--messages 500] [--interval 0.02]
        [--backlog 10000] [--lanes 100] [--profile DIR]

The drain's CPU per delivery is printed too: the process's, the event loop's and the
dispatcher's database thread's. ``--profile DIR`` writes cProfile (CPU clock) and
pyinstrument (wall clock) profiles of the loop and the database thread over the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clusterenv import bench_database, log
from benchmarks.stats import fmt, summary, table


def receiver() -> None:
    """The fast receiver: 204 to every POST; on SIGTERM prints ``{key: arrival}``."""
    arrivals: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.time()
                payload = json.loads(body)
                key = (payload.get("data") or {}).get("wa_id") or payload["id"]
                arrivals[key] = now
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        print(json.dumps(arrivals), flush=True)

    asyncio.run(main())


def bench(args: argparse.Namespace) -> dict[str, object]:
    import django

    django.setup()
    from asgiref.sync import sync_to_async
    from channels.db import DatabaseSyncToAsync
    from django.db import transaction
    from django.utils import timezone

    from messaging import inbound
    from sessions_app import leases
    from sessions_app.drivers.base import MessageReceived
    from sessions_app.models import WaSession
    from webhooks import endpoints, outbox
    from webhooks.conf import webhook_config
    from webhooks.dispatcher import Dispatcher
    from webhooks.models import Delivery, Endpoint

    proc = subprocess.Popen(
        [sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    url = f"http://127.0.0.1:{port}/hook"
    owner_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="waconnect-db")

    def owner_db(func):  # type: ignore[no-untyped-def]
        async def call(*a, **k):  # type: ignore[no-untyped-def]
            return await DatabaseSyncToAsync(func, thread_sensitive=False, executor=owner_thread)(
                *a, **k
            )

        return call

    delivered = {"n": 0}
    done = asyncio.Event()
    target = {"n": 0}

    def observer(delivery_id: int, outcome: str, status: str) -> None:
        if status == "delivered":
            delivered["n"] += 1
            if delivered["n"] >= target["n"]:
                done.set()

    results: dict[str, object] = {}

    async def run() -> None:
        config = webhook_config(allow_private=True)
        dispatcher = Dispatcher(config=config, observer=observer)
        task = asyncio.create_task(dispatcher.run())
        await dispatcher.ready.wait()

        # 1. incoming message → webhook received
        def setup_latency() -> leases.Lease:
            WaSession.objects.create(name="bench-in", pair_request=1)
            endpoints.create(url=url, event_types=["message.received"])
            (lease,) = leases.claim("bench-owner", 3600, 1)
            return lease

        lease = await sync_to_async(setup_latency)()
        started: dict[str, float] = {}

        def store(i: int) -> None:
            event = MessageReceived(
                session_id=lease.session_id, message_id=f"B{i}", chat="49170@s.whatsapp.net",
                sender="1@lid", sender_phone="49170@s.whatsapp.net", from_me=False,
                timestamp=timezone.now(), push_name="Bench", kind="text", text="hello",
            )  # fmt: skip
            inbound.store(lease, event, timezone.now())

        target["n"] = args.messages
        log(f"latency: {args.messages} incoming messages, one every {args.interval} s")
        for i in range(args.messages):
            started[f"B{i}"] = time.time()
            await owner_db(store)(i)
            await asyncio.sleep(args.interval)
        await asyncio.wait_for(done.wait(), 120)
        results["started"] = started

        # 2. a backlog written during an outage, then drained
        def setup_backlog() -> Endpoint:
            Endpoint.objects.update(enabled=False)
            hook = endpoints.create(url=url, event_types=["session.status"], enabled=False)
            Endpoint.objects.filter(pk=hook.pk).update(enabled=True)  # emit needs it enabled
            ids = [WaSession.objects.create(name=f"lane-{i}").pk for i in range(args.lanes)]
            per_lane = args.backlog // args.lanes
            for _ in range(per_lane):
                with transaction.atomic():
                    for sid in ids:
                        outbox.emit("session.status", sid, {"state": "connected"})
            Endpoint.objects.filter(pk=hook.pk).update(enabled=False)
            return hook

        dispatcher.stop()
        await task
        log(f"backlog: writing {args.backlog} events over {args.lanes} lanes (endpoint off)")
        hook = await sync_to_async(setup_backlog)()
        total = await sync_to_async(Delivery.objects.filter(endpoint=hook).count)()
        delivered["n"] = 0
        target["n"] = total
        done.clear()
        dispatcher = Dispatcher(config=config, observer=observer)
        task = asyncio.create_task(dispatcher.run())
        await dispatcher.ready.wait()
        log("backlog: receiver back, endpoint enabled")
        loop = asyncio.get_running_loop()
        window = loop_profile = None
        if args.profile:
            from benchmarks.threadprofile import ProfileWindow

            window = ProfileWindow({"webhooks-db": (dispatcher._executor, 1)})
            await window.start()
            loop_profile = cProfile.Profile(time.thread_time)
            loop_profile.enable()
        db0 = await loop.run_in_executor(dispatcher._executor, time.thread_time)
        t0 = time.perf_counter()
        cpu0, loop0 = time.process_time(), time.thread_time()
        await sync_to_async(endpoints.set_enabled)(hook, True)
        await asyncio.wait_for(done.wait(), 600)
        drain = time.perf_counter() - t0
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        db_cpu = await loop.run_in_executor(dispatcher._executor, time.thread_time) - db0
        results["backlog"] = {
            "deliveries": total, "seconds": drain, "per_second": total / drain,
            "cpu_ms": cpu * 1000 / total, "loop_cpu_ms": loop_cpu * 1000 / total,
            "db_cpu_ms": db_cpu * 1000 / total,
        }  # fmt: skip
        if window is not None and loop_profile is not None:
            loop_profile.disable()
            await window.stop(Path(args.profile))
            with (Path(args.profile) / "event-loop.cpu.txt").open("w") as out:
                stats = pstats.Stats(loop_profile, stream=out)
                stats.sort_stats("cumulative").print_stats(80)
                stats.sort_stats("tottime").print_stats(40)
        dispatcher.stop()
        await task

    try:
        asyncio.run(run())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    arrivals = json.loads(out.strip().splitlines()[-1])
    started = results.pop("started")
    latencies = [
        (arrivals[key] - t) * 1000
        for key, t in started.items()
        if key in arrivals  # type: ignore[union-attr]
    ]
    results["latency_ms"] = latencies
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500, help="incoming messages (500)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between (0.02)")
    parser.add_argument("--backlog", type=int, default=10_000, help="backlog size (10000)")
    parser.add_argument("--lanes", type=int, default=100, help="sessions of the backlog (100)")
    parser.add_argument(
        "--profile", metavar="DIR", help="profile the drain (loop and database thread) into DIR"
    )
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver()
        return
    with bench_database("waconnect_bench_webhooks") as url:
        os.environ.update(
            {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "waconnect.settings",
             "LOG_LEVEL": "WARNING"}
        )  # fmt: skip
        results = bench(args)
    latencies = results["latency_ms"]
    print()
    print(table([("incoming message → webhook received (ms)", summary(latencies))]))  # type: ignore[arg-type]
    backlog = results["backlog"]
    print()
    print(
        f"backlog of {backlog['deliveries']:,} over {args.lanes} lanes drained in "  # type: ignore[index]
        f"{fmt(backlog['seconds'], 2)} s: {fmt(backlog['per_second'], 0)} deliveries/s"  # type: ignore[index]
    )
    print(
        f"CPU per delivery while draining: {fmt(backlog['cpu_ms'], 2)} ms for the process, "  # type: ignore[index]
        f"{fmt(backlog['loop_cpu_ms'], 2)} ms of it on the event loop, "  # type: ignore[index]
        f"{fmt(backlog['db_cpu_ms'], 2)} ms on the dispatcher's database thread"  # type: ignore[index]
    )


if __name__ == "__main__":
    main()
