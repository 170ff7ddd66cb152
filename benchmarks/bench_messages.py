"""Messages through one supervisor: how fast a queued message reaches WhatsApp, and
how many a second one supervisor sends.

Run from the repository root (one benchmark at a time: under the shared lock)::

    flock /tmp/waconnect-heavy.lock .venv/bin/python benchmarks/bench_messages.py \
        [--latency-messages 500] [--sessions 100] [--per-session 20] [--json out.json] \
        [--profile DIR]

One process, as under ``runserver``: a supervisor on the simulated WhatsApp (in
process), the in-memory channel layer, on a PostgreSQL database of its own
(created, migrated and dropped here). ``--sessions`` sessions are linked devices
already (no QR round); the supervisor claims and connects them all first.
Pacing is off (``WACONNECT_SEND_INTERVAL=0``) and receipts are off (the
simulated phones never send delivered/read), so the numbers are the sends alone.

1. **intent → accepted by WhatsApp**, one message at a time on one session: from
   the call of ``messaging.intents.enqueue`` (what the API and the page call:
   validate, insert ``queued``, ring on commit) until the simulated WhatsApp's
   ``send_text`` is called for it (the supervisor heard the ring, took the
   message, recorded ``sending`` and asked the driver). Also until ``sent`` is
   committed (WhatsApp's ack recorded, the page's tick).
2. **Sustained sends**: ``--per-session`` messages queued on each session at once
   (one bulk insert, then one ring per session), timed from the first ring until
   WhatsApp has accepted them all and until all are recorded ``sent``; with the
   CPU time of this process (supervisor, simulated WhatsApp and the benchmark
   itself) and of the PostgreSQL server's processes over that window.

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clusterenv import bench_database, log, setup_django
from benchmarks.stats import CLK_TCK, load_average, machine_cpu_s, process_cpu_s, summary, table

PEER = "491700000001"


def postgres_cpu_s() -> float:
    """utime + stime of every PostgreSQL server process on this machine."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                total += process_cpu_s(int(entry.name))
        except OSError:
            continue
    return total


def profile_window() -> Any:
    """pyinstrument on the event loop and on every database thread of the supervisor
    and its message pumps (``--profile``)."""
    from benchmarks.threadprofile import ProfileWindow
    from messaging import dbthreads
    from sessions_app import dbthread

    return ProfileWindow(
        {
            "messages-db": (dbthreads._get_executor(), dbthreads.threads()),
            "supervisor-db": (
                dbthread._get_executor(dbthread.SUPERVISOR_THREAD),
                dbthread.supervisor_threads(),
            ),
            "lease-db": (dbthread._get_executor(dbthread.LEASE_THREAD), 1),
        }
    )


def thread_cpu_s() -> dict[str, float]:
    """utime + stime of each of this process's threads, summed by name (pool threads'
    numbers dropped: ``waconnect-db-messages_0`` counts as ``waconnect-db-messages``)."""
    names = {t.native_id: t.name.rsplit("_", 1)[0] for t in threading.enumerate()}
    totals: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return totals


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.utils import timezone

    from messaging import intents
    from messaging.live import RING_REASON
    from messaging.models import Message
    from sessions_app import doorbell
    from sessions_app.conf import supervisor_config
    from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
    from sessions_app.models import WaSession
    from sessions_app.supervisor import Supervisor

    settings.WACONNECT_SEND_INTERVAL = 0
    world = SimulatedWhatsApp(SimulatedTiming(pair_delay=0, delivered_delay=3600, read_delay=-1))
    accepted: dict[str, float] = {}
    arrived = asyncio.Event()
    wanted = [0]
    inner = world.messages.send_text

    def recording(conn: Any, ref: str, to: str, text: str) -> None:
        accepted.setdefault(ref, time.perf_counter())
        inner(conn, ref, to, text)
        if len(accepted) >= wanted[0]:
            arrived.set()

    world.messages.send_text = recording  # type: ignore[method-assign]

    @sync_to_async
    def make_sessions() -> list[int]:
        rows = [
            WaSession(name=f"bench-{i:04d}", jid=f"49151{i:07d}@s.whatsapp.net")
            for i in range(args.sessions)
        ]
        created = WaSession.objects.bulk_create(rows)
        for row in created:
            world.devices[row.jid] = row.pk
        return [row.pk for row in created]

    ids = await make_sessions()
    config = supervisor_config(max_sessions=max(1000, args.sessions))
    supervisor = Supervisor(SimulatedDriver(world), config=config)
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    missing = await world.until_connected(ids, timeout=120)
    if missing:
        raise RuntimeError(f"{len(missing)} sessions never connected")

    # "sent" is timed from the pushes pages get (after the commit), not by polling.
    from channels.layers import get_channel_layer

    from messaging.live import messages_group

    layer = get_channel_layer()
    channel = await layer.new_channel()
    for sid in ids:
        await layer.group_add(messages_group(sid), channel)
    sent_at: dict[str, float] = {}
    all_sent = asyncio.Event()

    async def listen() -> None:
        while True:
            pushed = (await layer.receive(channel))["message"]
            if pushed["status"] == "sent":
                sent_at.setdefault(pushed["ref"], time.perf_counter())
                if len(sent_at) >= wanted_sent[0]:
                    all_sent.set()

    wanted_sent = [0]
    listener = asyncio.create_task(listen())

    # 1. one message at a time: intent → accepted, → sent recorded
    enqueue = sync_to_async(intents.enqueue)
    to_world, to_sent = [], []
    for i in range(args.warmup + args.latency_messages):
        wanted[0] = len(accepted) + 1
        wanted_sent[0] = len(sent_at) + 1
        arrived.clear()
        all_sent.clear()
        start = time.perf_counter()
        message = await enqueue(ids[0], PEER, f"latency {i}", actor="bench")
        await arrived.wait()
        await all_sent.wait()
        if i >= args.warmup:
            to_world.append((accepted[message.ref] - start) * 1000)
            to_sent.append((sent_at[message.ref] - start) * 1000)

    # 2. sustained: per_session messages on every session, queued at once
    @sync_to_async
    def bulk_queue() -> int:
        deadline = timezone.now() + dt.timedelta(hours=1)
        Message.objects.bulk_create(
            Message(
                session_id=sid,
                direction="out",
                to=PEER,
                chat=f"{PEER}@s.whatsapp.net",
                text=f"bulk {n}",
                status="queued",
                deadline=deadline,
                from_me=True,
            )
            for n in range(args.per_session)
            for sid in ids
        )
        return args.per_session * len(ids)

    total = await bulk_queue()
    wanted[0] = len(accepted) + total
    wanted_sent[0] = len(sent_at) + total
    arrived.clear()
    all_sent.clear()
    profiler = None
    if args.profile is not None:
        profiler = profile_window()
        await profiler.start()
    cpu0, pg0, machine0 = process_cpu_s(os.getpid()), postgres_cpu_s(), machine_cpu_s()
    threads0 = thread_cpu_s()
    from messaging.batcher import batcher

    batches0, calls0 = batcher().batches, batcher().calls
    start = time.perf_counter()
    for sid in ids:
        await doorbell.ring_supervisors(sid, RING_REASON)
    await arrived.wait()
    accepted_all = time.perf_counter()

    await all_sent.wait()
    sent_all = max(sent_at.values())
    cpu1, pg1, machine1 = process_cpu_s(os.getpid()), postgres_cpu_s(), machine_cpu_s()
    threads1 = thread_cpu_s()
    batches, calls = batcher().batches - batches0, batcher().calls - calls0
    if profiler is not None:
        await profiler.stop(args.profile)
    listener.cancel()
    supervisor.stop()
    await task
    window = sent_all - start
    return {
        "latency": {
            "intent_to_whatsapp_ms": summary(to_world),
            "intent_to_sent_ms": summary(to_sent),
        },
        "sustained": {
            "sessions": len(ids),
            "messages": total,
            "accepted_s": accepted_all - start,
            "sent_s": window,
            "accepted_per_s": total / (accepted_all - start),
            "sent_per_s": total / window,
            "process_cpu_s": cpu1 - cpu0,
            "process_cpu_pct": 100 * (cpu1 - cpu0) / window,
            "thread_cpu_pct": {
                name: round(100 * (cpu - threads0.get(name, 0.0)) / window, 1)
                for name, cpu in sorted(threads1.items())
            },
            "batches": batches,
            "mean_batch": calls / max(1, batches),
            "postgres_cpu_s": pg1 - pg0,
            "postgres_cpu_pct": 100 * (pg1 - pg0) / window,
            "machine_busy_pct": 100 * (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]),
        },
        "load_average_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-messages", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--per-session", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--profile",
        type=Path,
        help="profile the sustained phase with pyinstrument (event loop and database "
        "threads) into this directory; the numbers then include its overhead",
    )
    args = parser.parse_args()
    log(f"load average before: {load_average()}")
    with bench_database(f"bench_messages_{os.getpid()}") as url:
        setup_django(url, "")
        os.environ["REDIS_URL"] = ""
        result = asyncio.run(run(args))
    lat = result["latency"]
    print(
        table(
            [
                ("intent → accepted by WhatsApp (ms)", lat["intent_to_whatsapp_ms"]),
                ("intent → sent recorded (ms)", lat["intent_to_sent_ms"]),
            ],
            digits=2,
        )
    )
    s = result["sustained"]
    print(
        f"\nsustained: {s['messages']} messages over {s['sessions']} sessions: "
        f"accepted by WhatsApp in {s['accepted_s']:.2f} s ({s['accepted_per_s']:.0f}/s), "
        f"all recorded sent in {s['sent_s']:.2f} s ({s['sent_per_s']:.0f}/s); "
        f"CPU: this process {s['process_cpu_pct']:.0f}% of a core, PostgreSQL "
        f"{s['postgres_cpu_pct']:.0f}%, machine {s['machine_busy_pct']:.0f}% busy (2 cores)"
    )
    print(f"pump batches: {s['batches']}, {s['mean_batch']:.1f} sessions each on average")
    print(f"CPU by thread (% of a core): {s['thread_cpu_pct']}")
    print(f"load average after: {result['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
