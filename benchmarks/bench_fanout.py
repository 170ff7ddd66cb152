"""Fan-out: one QR push reaching 1,000 open WebSockets, on one Daphne process and on more.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fanout.py      # --daphnes 1,2 --sockets 1000 --rounds 20

Why this shape. When WhatsApp rotates a session's QR code the supervisor sends one
snapshot to the group ``waconnect.session.<pk>`` (``doorbell.publish``), and every
page watching that session must show it before the code goes stale. The
supervisor's side is one ``group_send`` whatever the audience; the cost that grows
with the audience is the web tier's. channels-redis hands each Daphne process one
copy of the message (listing the process's member channels), and the process then
wakes every consumer, which serialises the snapshot to JSON and writes one
WebSocket frame. So the questions are how long the last of N watchers waits, how
much Daphne CPU each watcher costs per push, and whether a second Daphne process
(same Redis, sockets split between them as a load balancer would) divides that.

For each K in ``--daphnes`` it:

1. uses a fresh PostgreSQL database (created, migrated, dropped at the end) with
   one staff user, one session showing a QR code, and a logged-in session cookie;
2. starts K ``python -m daphne waconnect.asgi:application`` processes (DEBUG off,
   channels-redis on Redis db 13, simulated driver, no supervisor in them);
3. opens ``--sockets`` WebSockets to ``/ws/sessions/<pk>/`` from this process,
   spread evenly over the K processes, with a browser's Origin header and the
   session cookie, and waits for each socket's snapshot on connect;
4. pushes ``--warmup`` uncounted and then ``--rounds`` counted snapshots, each
   what a supervisor publishes on a QR rotation (a new QR SVG, ``version`` + 1,
   ``qr_issued_at``, no event log) through ``doorbell.publish``.
   **Latency = the wall clock when a socket's message was read, minus the wall
   clock just before the publish**, per socket per push. Each push waits until
   every open socket has it (or ``--timeout``, which reports the missing ones);
5. reads the CPU time (utime + stime, ``/proc/<pid>/stat``) of every Daphne
   process over the counted rounds and divides by rounds × open sockets; Redis's
   (``INFO cpu``), this client's and the whole machine's (``/proc/stat``) CPU are
   reported too, to show who else was busy;
6. closes every socket at once and counts the channels still in the group.

It also reports what went wrong on the server side: sockets the server closed
(they are left out of later pushes, not counted as slow), and the consumers that
crashed, from Daphne's log ("Exception inside application"); see
docs/benchmarks.md for what redis-py 8 did here. ``--redis-socket-timeout``
overrides the read timeout of Daphne's Redis connections (a ``socket_timeout``
query parameter on ``REDIS_URL``).

All sockets are read by this one process on one event loop (``wsprobe.WsClient``,
callbacks, no task per socket), on the same 2 cores as the servers: the client's
own work competes with Daphne and is part of the latency.

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from benchmarks.liveserver import REPO, free_port
from benchmarks.stats import percentile, summary
from benchmarks.wsprobe import WsClient, open_websocket

HOST = "127.0.0.1"
TARGET_P99_MS = 500.0
ISSUE_FLOOR = "0.26 ms of Daphne CPU per socket, 340 ms p99 on one Daphne"
CLK_TCK = os.sysconf("SC_CLK_TCK")
VERSION_RE = re.compile(rb'"version":(\d+)')
APP_ERROR_RE = re.compile(r"Exception inside application: (.*)")

#: Environment a developer's shell may carry that would point the servers elsewhere.
_DROPPED_ENV = ("DATABASE_URL", "REDIS_URL", "WACONNECT_DRIVER", "WACONNECT_INLINE_SUPERVISOR")


# -- numbers ---------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


# -- the database and the app's fixture ------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """What the sockets and the pushes need: who, which session, what to push."""

    session_id: int
    cookie: str
    version: int
    snapshot: dict[str, Any]
    row: dict[str, Any]


def recreate_database(server_url: str, name: str, *, create: bool = True) -> None:
    """Drop the bench database (and its connections), then create it again if asked."""
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: the bench database's name must say 'bench'")
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def server_env(database_url: str, redis_url: str, secret_key: str) -> dict[str, str]:
    """Environment of the Daphne processes; this process uses the same (one SECRET_KEY)."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "waconnect.settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": secret_key,
            "DEBUG": "off",
            "SECURE_COOKIES": "off",  # plain http on the loopback: no TLS proxy
            "SECURE_SSL_REDIRECT": "off",
            "SECURE_HSTS_SECONDS": "0",
            "BEHIND_TLS_PROXY": "off",
            "ALLOWED_HOSTS": f"{HOST},localhost",
            "WACONNECT_DRIVER": "simulated",
            "WACONNECT_INLINE_SUPERVISOR": "off",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def whatsapp_like_qr() -> str:
    """A payload shaped like whatsmeow's (ref, noise key, identity key, adv secret): ~240 chars."""
    keys = [base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(3)]
    return ",".join(["2@" + secrets.token_urlsafe(72), *keys])


def prepare_app() -> Fixture:
    """Migrate, then a staff user, a session showing a QR code, and a login cookie."""
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from sessions_app import snapshots
    from sessions_app.models import SessionEvent, WaSession
    from sessions_app.states import Desired, State

    call_command("migrate", verbosity=0)
    from django.contrib.auth.models import Permission

    # A view-only operator, as the sockets require (sessions_app/permissions.py).
    user = get_user_model().objects.create_user("bench", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_wasession"))
    now = timezone.now()
    session = WaSession.objects.create(
        name="fanout",
        desired_state=Desired.RUNNING,
        pair_request=1,
        state=State.QR_REQUIRED,
        qr_code=whatsapp_like_qr(),
        qr_issued_at=now,
        qr_expires_at=now + dt.timedelta(seconds=60),
        lease_owner="bench:0:fanout",
        version=1,
    )
    SessionEvent.objects.create(
        session=session, kind=SessionEvent.Kind.INTENT, message="created", actor="bench"
    )
    client = Client()
    client.force_login(user)
    return Fixture(
        session_id=session.pk,
        cookie=client.cookies[settings.SESSION_COOKIE_NAME].value,
        version=session.version,
        snapshot=snapshots.snapshot(session, with_events=False),
        row=snapshots.row(session),
    )


def qr_codes(count: int) -> list[str]:
    """One new QR code per push, made before the clock starts (as WhatsApp's arrive)."""
    return [whatsapp_like_qr() for _ in range(count)]


# -- Daphne processes ------------------------------------------------------------------


@dataclass
class Daphne:
    """One ``python -m daphne`` process on its own port, its output in a log file."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @classmethod
    def start(cls, env: dict[str, str], log_dir: Path) -> Daphne:
        port = free_port()
        log_path = log_dir / f"daphne-{port}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port)]
            + ["waconnect.asgi:application"],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return cls(port, log_path, process, log_file)

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Daphne loads the app before it listens: an accepted connection means ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited ({self.process.returncode}):\n{self.output()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen on {self.port} in {timeout:.0f} s")

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        """SIGTERM (Twisted stops the reactor), SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_file.close()

    def errors(self) -> Counter[str]:
        """What crashed consumers, from Daphne's log (each closes its WebSocket)."""
        text = self.log_path.read_text(errors="replace")
        return Counter(m.group(1).strip() for m in APP_ERROR_RE.finditer(text))

    def output(self, tail: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:]) or "(no output)"


def consumer_errors(daphnes: Sequence[Daphne]) -> dict[str, int]:
    return dict(sum((d.errors() for d in daphnes), Counter()))


def start_daphnes(count: int, env: dict[str, str], log_dir: Path) -> list[Daphne]:
    daphnes: list[Daphne] = []
    try:
        for _ in range(count):
            daphnes.append(Daphne.start(env, log_dir))
        for daphne in daphnes:
            daphne.wait_listening()
    except BaseException:
        stop_daphnes(daphnes)
        raise
    return daphnes


def stop_daphnes(daphnes: Sequence[Daphne]) -> None:
    for daphne in daphnes:
        daphne.stop()


# -- the watchers ----------------------------------------------------------------------


@dataclass
class Audience:
    """Every socket's arrival times: the snapshot on connect, then the current push.

    A socket the server closes is left out of every later push (``closed``), so a
    push waits only for sockets that can still receive it.
    """

    size: int
    initial_version: int
    ready: list[float | None] = field(init=False)
    arrivals: list[float | None] = field(init=False)
    closed: list[bool] = field(init=False)
    target: int = 0
    unexpected: int = 0
    message_bytes: int = 0

    def __post_init__(self) -> None:
        self.ready = [None] * self.size
        self.arrivals = [None] * self.size
        self.closed = [False] * self.size
        self._ready_left = self.size
        self._left = 0
        self.all_ready = asyncio.Event()
        self.all_arrived = asyncio.Event()

    def listener(self, index: int) -> Callable[[bytes, float], None]:
        return lambda raw, at: self.message(index, raw, at)

    def message(self, index: int, raw: bytes, at: float) -> None:
        """Match the message by its ``version`` (near the start: a cheap search)."""
        match = VERSION_RE.search(raw)
        version = int(match.group(1)) if match else None
        if version == self.target and self.arrivals[index] is None:
            self.arrivals[index] = at
            self.message_bytes = len(raw)
            self._arrived()
        elif version == self.initial_version and self.ready[index] is None:
            self.ready[index] = at
            self._became_ready()
        else:
            self.unexpected += 1

    def lost(self, index: int) -> None:
        """The connection closed: stop waiting for this socket."""
        if self.closed[index]:
            return
        self.closed[index] = True
        if self.ready[index] is None:
            self._became_ready()
        if self.target and self.arrivals[index] is None:
            self._arrived()

    def _became_ready(self) -> None:
        self._ready_left -= 1
        if self._ready_left == 0:
            self.all_ready.set()

    def _arrived(self) -> None:
        self._left -= 1
        if self._left == 0:
            self.all_arrived.set()

    def expect(self, version: int) -> None:
        self.target = version
        self.arrivals = [None] * self.size
        self._left = self.size - sum(self.closed)
        self.all_arrived.clear()
        if self._left == 0:
            self.all_arrived.set()

    def latencies(self, sent_at: float) -> list[float | None]:
        """Per socket: ms from the publish, None if missing, NaN if closed."""
        return [
            math.nan if self.closed[i] else (None if at is None else at - sent_at)
            for i, at in enumerate(self.arrivals)
        ]


async def open_sockets(
    ports: Sequence[int], fixture: Fixture, audience: Audience, concurrency: int
) -> tuple[list[WsClient], list[float]]:
    """Socket i goes to ``ports[i % K]``; returns the clients and when each was opened."""
    limit = asyncio.Semaphore(concurrency)
    path = f"/ws/sessions/{fixture.session_id}/"
    started = [math.nan] * audience.size

    async def one(index: int) -> WsClient:
        async with limit:
            started[index] = time.time() * 1000
            port = ports[index % len(ports)]
            return await open_websocket(
                HOST, port, path, fixture.cookie, audience.listener(index), timeout=30
            )

    clients = await asyncio.gather(*(one(i) for i in range(audience.size)))
    for index, client in enumerate(clients):
        client.closed.add_done_callback(lambda _, i=index: audience.lost(i))
    return list(clients), started


async def close_sockets(clients: Sequence[WsClient]) -> None:
    for client in clients:
        client.close()
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 30)


# -- pushes ----------------------------------------------------------------------------


@dataclass
class RoundResult:
    version: int
    sent_at: float
    publish_ms: float
    latencies: list[float | None]  # None: missing; NaN: closed by the server before

    @property
    def delivered(self) -> list[float]:
        return [v for v in self.latencies if v is not None and not math.isnan(v)]

    @property
    def missing(self) -> int:
        return sum(1 for v in self.latencies if v is None)

    @property
    def closed(self) -> int:
        return sum(1 for v in self.latencies if v is not None and math.isnan(v))


async def push(
    fixture: Fixture, audience: Audience, version: int, code: str, timeout: float
) -> RoundResult:
    """One QR rotation as the supervisor publishes it; wait for every socket to get it."""
    from sessions_app import doorbell

    audience.expect(version)
    sent_at = time.time() * 1000
    issued = int(sent_at)
    snapshot = fixture.snapshot | {
        "version": version,
        "qr_code": code,
        "qr_issued_at": issued,
        "qr_expires_at": issued + 20_000,
    }
    await doorbell.publish(snapshot, fixture.row | {"version": version})
    publish_ms = time.time() * 1000 - sent_at
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(audience.all_arrived.wait(), timeout)
    return RoundResult(version, sent_at, publish_ms, audience.latencies(sent_at))


@dataclass
class CpuReading:
    daphnes: list[float]
    redis: float
    client: float
    machine_busy: float
    machine_total: float

    def minus(self, earlier: CpuReading) -> CpuReading:
        return CpuReading(
            [a - b for a, b in zip(self.daphnes, earlier.daphnes, strict=True)],
            self.redis - earlier.redis,
            self.client - earlier.client,
            self.machine_busy - earlier.machine_busy,
            self.machine_total - earlier.machine_total,
        )


async def read_cpu(daphnes: Sequence[Daphne], redis: Any) -> CpuReading:
    info = await redis.info("cpu")
    busy, total = machine_cpu_s()
    return CpuReading(
        daphnes=[d.cpu_s() for d in daphnes],
        redis=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        client=time.process_time(),
        machine_busy=busy,
        machine_total=total,
    )


# -- one configuration -----------------------------------------------------------------


@dataclass
class RunResult:
    daphnes: int
    sockets: int
    rounds: list[RoundResult]
    cpu: CpuReading
    open_s: float
    connect_ms: list[float]
    closed_while_opening: int
    message_bytes: int
    errors: dict[str, int]  # consumers that crashed while opening and pushing
    teardown_errors: dict[str, int] = field(default_factory=dict)  # … while closing
    members_left: int = 0  # channels still in the group after every socket closed

    @property
    def latencies(self) -> list[float]:
        return [v for r in self.rounds for v in r.delivered]

    @property
    def missing(self) -> int:
        return sum(r.missing for r in self.rounds)

    @property
    def closed(self) -> int:
        """Sockets the server had closed by the last push."""
        return self.rounds[-1].closed if self.rounds else 0

    def per_push_ms(self, seconds: float) -> float:
        return seconds * 1000 / len(self.rounds)

    @property
    def daphne_cpu_per_socket_ms(self) -> float:
        """Daphne CPU per push divided by the sockets still open (on average)."""
        open_sockets = sum(self.sockets - r.closed for r in self.rounds) / len(self.rounds)
        return self.per_push_ms(sum(self.cpu.daphnes)) / open_sockets

    @property
    def all_delivered_ms(self) -> list[float]:
        """Per push: the slowest socket (only pushes that reached every socket)."""
        return [max(r.delivered) for r in self.rounds if r.missing == 0]

    def per_daphne(self, index: int) -> list[float]:
        return [
            v
            for r in self.rounds
            for i, v in enumerate(r.latencies)
            if v is not None and not math.isnan(v) and i % self.daphnes == index
        ]


async def open_audience(
    args: argparse.Namespace, fixture: Fixture, daphnes: Sequence[Daphne], audience: Audience
) -> tuple[list[WsClient], float, list[float]]:
    """Open every socket and wait for each one's snapshot: (clients, seconds, connect ms)."""
    began = time.monotonic()
    clients, started = await open_sockets(
        [d.port for d in daphnes], fixture, audience, args.connect_concurrency
    )
    await asyncio.wait_for(audience.all_ready.wait(), 60)
    open_s = time.monotonic() - began
    connect_ms = [at - t0 for at, t0 in zip(audience.ready, started, strict=True) if at]
    closed = sum(audience.closed)
    log(
        f"  {len(clients)} sockets open and holding a snapshot after {open_s:.1f} s"
        + (f" ({closed} closed by the server)" if closed else "")
    )
    return clients, open_s, connect_ms


async def push_rounds(
    args: argparse.Namespace,
    fixture: Fixture,
    daphnes: Sequence[Daphne],
    audience: Audience,
    redis: Any,
) -> tuple[list[RoundResult], CpuReading]:
    """Warm-up pushes, then the counted ones with the CPU read around them."""
    codes = qr_codes(args.warmup + args.rounds)
    rounds: list[RoundResult] = []
    version = fixture.version
    before: CpuReading | None = None
    for index in range(args.warmup + args.rounds):
        if index == args.warmup:
            await asyncio.sleep(args.pause)
            before = await read_cpu(daphnes, redis)
        version += 1
        result = await push(fixture, audience, version, codes[index], args.timeout)
        report_round(index, args.warmup, result, len(daphnes))
        if index >= args.warmup:
            rounds.append(result)
        if index + 1 < args.warmup + args.rounds:
            await asyncio.sleep(args.pause)
    assert before is not None
    return rounds, (await read_cpu(daphnes, redis)).minus(before)


async def members_left(redis: Any, session_id: int, quiet: float = 3.0) -> int:
    """Channels still in the session's group once the count has stopped falling for
    ``quiet`` seconds (0 = every consumer left)."""
    from sessions_app import doorbell

    key = f"asgi:group:{doorbell.session_group(session_id)}"  # channels-redis' group key
    count = await redis.zcard(key)
    deadline = time.monotonic() + 30
    still_since = time.monotonic()
    while count and time.monotonic() < deadline and time.monotonic() - still_since < quiet:
        await asyncio.sleep(0.5)
        count, previous = await redis.zcard(key), count
        if count != previous:
            still_since = time.monotonic()
    return int(count)


async def measure(
    args: argparse.Namespace, fixture: Fixture, daphnes: Sequence[Daphne]
) -> RunResult:
    from channels.layers import get_channel_layer
    from redis.asyncio import Redis

    redis = Redis.from_url(args.redis_url)
    audience = Audience(args.sockets, fixture.version)
    clients: list[WsClient] = []
    try:
        clients, open_s, connect_ms = await open_audience(args, fixture, daphnes, audience)
        closed_while_opening = sum(audience.closed)
        rounds, cpu = await push_rounds(args, fixture, daphnes, audience, redis)
        result = RunResult(
            daphnes=len(daphnes),
            sockets=args.sockets,
            rounds=rounds,
            cpu=cpu,
            open_s=open_s,
            connect_ms=connect_ms,
            closed_while_opening=closed_while_opening,
            message_bytes=audience.message_bytes,
            errors=consumer_errors(daphnes),
        )
        await close_sockets(clients)
        result.members_left = await members_left(redis, fixture.session_id)
        return result
    finally:
        for client in clients:
            client.close()
        await get_channel_layer().close_pools()
        await redis.aclose()
        if audience.unexpected:
            log(f"  {audience.unexpected} messages matched no push (late or unknown)")


def report_round(index: int, warmup: int, result: RoundResult, k: int) -> None:
    got = result.delivered
    label = f"warm-up {index + 1}" if index < warmup else f"round {index - warmup + 1}"
    text = (
        f"  {label:>10}: publish {result.publish_ms:5.1f} ms, "
        f"p50 {percentile(got, 50):6.1f}, max {max(got, default=math.nan):6.1f} ms"
    )
    if result.closed:
        text += f"; {result.closed} sockets closed by the server"
    if result.missing:
        by_daphne = [0] * k
        for i, value in enumerate(result.latencies):
            if value is None:
                by_daphne[i % k] += 1
        text += f"; MISSING {result.missing} (per daphne: {by_daphne})"
    log(text)


def run_configuration(
    args: argparse.Namespace, k: int, fixture: Fixture, env: dict[str, str], log_dir: Path
) -> RunResult:
    log(f"{k} daphne process(es), {args.sockets} sockets, {args.rounds} rounds …")
    flush_redis(args.redis_url)
    daphnes = start_daphnes(k, env, log_dir)
    try:
        result = asyncio.run(measure(args, fixture, daphnes))
    except BaseException:
        for daphne in daphnes:
            log(f"--- daphne :{daphne.port} ---\n{daphne.output()}")
        raise
    finally:
        stop_daphnes(daphnes)
    result.teardown_errors = dict(Counter(consumer_errors(daphnes)) - Counter(result.errors))
    for error, count in result.errors.items():
        log(f"  while pushing, {count} consumers crashed: {error}")
    for error, count in result.teardown_errors.items():
        log(f"  while closing the sockets, {count} consumers crashed: {error}")
    return result


def flush_redis(url: str) -> None:
    """Start each configuration from an empty Redis db (groups, leftover messages)."""
    from redis import Redis

    with Redis.from_url(url) as client:
        client.flushdb()


# -- output ----------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fmt(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def results_table(results: Sequence[RunResult]) -> str:
    base = results[0]
    lines = [
        "| daphnes | sockets | rounds | p50 | p95 | p99 | max | last socket, median "
        "| daphne CPU ms / socket / push | speed-up p99 | speed-up last socket |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = summary(r.latencies)
        last = percentile(r.all_delivered_ms, 50)
        speed_p99 = summary(base.latencies)["p99"] / s["p99"]
        speed_last = percentile(base.all_delivered_ms, 50) / last
        lines.append(
            f"| {r.daphnes} | {r.sockets} | {len(r.rounds)} | {fmt(s['p50'])} | {fmt(s['p95'])} "
            f"| {fmt(s['p99'])} | {fmt(s['max'])} | {fmt(last)} "
            f"| {fmt(r.daphne_cpu_per_socket_ms, 3)} | {speed_p99:.2f}× | {speed_last:.2f}× |"
        )
    return "\n".join(lines)


def cpu_table(results: Sequence[RunResult]) -> str:
    lines = [
        "| daphnes | CPU per push (ms): daphnes | of which each | Redis | this client "
        "| everything else | machine busy | missing | closed by server | connect p50 / p99 (ms) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cpu = r.cpu
        daphnes = sum(cpu.daphnes)
        other = cpu.machine_busy - daphnes - cpu.redis - cpu.client
        each = " / ".join(fmt(r.per_push_ms(c)) for c in cpu.daphnes)
        busy = 100 * cpu.machine_busy / cpu.machine_total if cpu.machine_total else math.nan
        lines.append(
            f"| {r.daphnes} | {fmt(r.per_push_ms(daphnes))} | {each} "
            f"| {fmt(r.per_push_ms(cpu.redis))} | {fmt(r.per_push_ms(cpu.client))} "
            f"| {fmt(r.per_push_ms(other))} | {busy:.0f} % | {r.missing} | {r.closed} "
            f"| {fmt(percentile(r.connect_ms, 50))} / {fmt(percentile(r.connect_ms, 99))} |"
        )
    return "\n".join(lines)


def verdicts(results: Sequence[RunResult]) -> list[str]:
    out = []
    one = next((r for r in results if r.daphnes == 1), None)
    if one is not None:
        p99 = summary(one.latencies)["p99"]
        ok = p99 < TARGET_P99_MS and one.missing == 0 and one.closed == 0
        out.append(
            f"one daphne p99 {p99:.1f} ms {'<' if p99 < TARGET_P99_MS else '≥'} "
            f"{TARGET_P99_MS:g} ms: {'met' if ok else 'MISSED'}"
            + (f" ({one.missing} deliveries missing)" if one.missing else "")
            + (f" ({one.closed} sockets closed by the server)" if one.closed else "")
        )
        for r in results:
            if r.daphnes > 1:
                gain = percentile(one.all_delivered_ms, 50) / percentile(r.all_delivered_ms, 50)
                out.append(
                    f"{r.daphnes} daphnes: last socket {gain:.2f}× faster "
                    f"({gain / r.daphnes:.0%} of linear)"
                )
    return out


def to_json(results: Sequence[RunResult], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "cpus": os.cpu_count(),
        "results": [
            {
                "daphnes": r.daphnes,
                "sockets": r.sockets,
                "rounds": len(r.rounds),
                "latency_ms": summary(r.latencies),
                "per_daphne_latency_ms": [summary(r.per_daphne(i)) for i in range(r.daphnes)],
                "last_socket_ms": summary(r.all_delivered_ms),
                "publish_ms": summary([x.publish_ms for x in r.rounds]),
                "daphne_cpu_ms_per_socket_per_push": r.daphne_cpu_per_socket_ms,
                "cpu_s": vars(r.cpu),
                "missing": r.missing,
                "closed_by_server": r.closed,
                "closed_while_opening": r.closed_while_opening,
                "consumer_errors": r.errors,
                "consumer_errors_closing": r.teardown_errors,
                "group_members_left": r.members_left,
                "message_bytes": r.message_bytes,
                "open_s": r.open_s,
                "connect_ms": summary(r.connect_ms),
                # per push, per socket: ms, null = missing, "closed" = closed by the server
                "rounds_ms": [
                    [v if v is None or not math.isnan(v) else "closed" for v in x.latencies]
                    for x in r.rounds
                ],
            }
            for r in results
        ],
    }


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--daphnes", default="1,2", help="Daphne process counts to run, comma-separated (1,2)"
    )
    parser.add_argument("--sockets", type=int, default=1000, help="open WebSockets (1000)")
    parser.add_argument("--rounds", type=int, default=20, help="counted pushes (20)")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted pushes first (2)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between pushes (0.5)")
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for every socket (15)"
    )
    parser.add_argument(
        "--connect-concurrency", type=int, default=50, help="sockets opening at once (50)"
    )
    parser.add_argument(
        "--postgres", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server"
    )
    parser.add_argument(
        "--database", default="waconnect_bench_fanout", help="scratch database (dropped)"
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/13", help="Redis db (flushed)"
    )
    parser.add_argument(
        "--redis-socket-timeout",
        type=float,
        help="give Daphne's Redis connections this read timeout (s), through REDIS_URL's "
        "socket_timeout; default: the app's own setting",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every sample as JSON")
    args = parser.parse_args(argv)
    args.daphnes = [int(v) for v in args.daphnes.split(",") if v.strip()]
    return args


def print_report(results: Sequence[RunResult], args: argparse.Namespace, load: str) -> None:
    size = max(r.message_bytes for r in results)
    print(
        f"\nFan-out: one snapshot push ({size:,} bytes) to {args.sockets} WebSockets on "
        f"/ws/sessions/<pk>/, {args.rounds} pushes (+{args.warmup} warm-up), "
        f"{os.cpu_count()} CPUs; latency = socket read − publish, ms\n"
    )
    print(results_table(results))
    print("\nWhere the CPU went over the counted pushes (pauses between pushes included):\n")
    print(cpu_table(results))
    print()
    for r in results:
        if r.daphnes > 1:
            per = ", ".join(
                f":{i} p99 {summary(r.per_daphne(i))['p99']:.1f}" for i in range(r.daphnes)
            )
            print(f"{r.daphnes} daphnes, per process: {per} ms")
    for r in results:
        for error, count in r.errors.items():
            print(f"{r.daphnes} daphne(s): {count} consumers crashed with '{error}'")
        for error, count in r.teardown_errors.items():
            print(
                f"{r.daphnes} daphne(s), closing all sockets at once: "
                f"{count} consumers crashed with '{error}'"
            )
        if r.members_left:
            print(
                f"{r.daphnes} daphne(s): {r.members_left} channels still in the session's "
                "group after every socket had closed"
            )
    if args.redis_socket_timeout is not None:
        print(f"Daphne's Redis read timeout: {args.redis_socket_timeout:g} s (socket_timeout)")
    print(f"load average (1/5/15 min) {load}")
    print("aims: " + "; ".join(verdicts(results)) + f" (issue's floor: {ISSUE_FLOOR})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    database_url = f"{args.postgres}/{args.database}"
    env = server_env(database_url, args.redis_url, secrets.token_urlsafe(32))
    os.environ.update(env)
    if args.redis_socket_timeout is not None:
        joiner = "&" if "?" in args.redis_url else "?"
        env["REDIS_URL"] += f"{joiner}socket_timeout={args.redis_socket_timeout:g}"
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    recreate_database(args.postgres, args.database)
    results: list[RunResult] = []
    try:
        fixture = prepare_app()
        with tempfile.TemporaryDirectory(prefix="waconnect-fanout-") as log_dir:
            for k in args.daphnes:
                results.append(run_configuration(args, k, fixture, env, Path(log_dir)))
    finally:
        from django.db import connections

        connections.close_all()
        recreate_database(args.postgres, args.database, create=False)
        flush_redis(args.redis_url)
    load = f"before {load_before}, after " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    print_report(results, args, load)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results, args), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
