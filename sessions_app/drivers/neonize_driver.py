"""The real driver: one neonize worker process per live session, over a socket pair.

The supervisor never imports neonize; this module starts ``python -m
sessions_app.drivers.neonize_worker`` children, keeps a few warm ones (neonize
already imported) so a new session does not wait ~215 ms for a start, and turns
whatever goes wrong with a worker — a malformed message, silence past the
heartbeat deadline, an exit, a crash — into that session's ``ConnectError``.

Stopping a worker is: ask ("stop"), then SIGTERM, then SIGKILL, with short grace
periods; nothing here ever waits on neonize's own ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from typing import Any, ClassVar

from ops import metrics
from sessions_app.drivers import device_store, wire
from sessions_app.drivers.base import (
    ConnectError,
    ConnectSpec,
    DriverError,
    EventSink,
    MessageSent,
    SendFailed,
)
from sessions_app.drivers.sends import SEND_TIMEOUT

logger = logging.getLogger(__name__)
worker_log = logging.getLogger("sessions_app.worker")

#: Lines that could carry a QR payload, a pairing code or key material never reach a log.
_SECRET = re.compile(
    r"(\d@[A-Za-z0-9+/=,]{20,}|linked_devices#|[A-Za-z0-9+/]{40,}={0,2}|[A-Z0-9]{4}-[A-Z0-9]{4}"
    r"|\d{6,}(?:[.:]\d+)*@(?:s\.whatsapp\.net|lid))"
)


def redact(line: str) -> str:
    return _SECRET.sub("<redacted>", line)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Timings in seconds; see docs/architecture.md."""

    store: str
    warm: int = 2
    heartbeat: float = 2.0
    deadline: float = 10.0  # silence after which either side gives up on the other
    ask_grace: float = 1.0  # after "stop", before SIGTERM
    term_grace: float = 1.0  # after SIGTERM, before SIGKILL
    log_level: str = "WARNING"
    send_timeout: float = SEND_TIMEOUT  # a send without WhatsApp's ack by then: unknown
    module: str = "sessions_app.drivers.neonize_worker"  # tests swap in a misbehaving one


class Worker:
    """One child process and its socket; assigned to at most one session, ever."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.session_id: int | None = None
        self.on_event: EventSink | None = None
        self.stopping = False
        self.last_heard = time.monotonic()
        #: When (time.monotonic(), this host) the worker called neonize's connect(),
        #: by its own clock; and when its word of it reached us.
        self.connect_called_at: float | None = None
        self.connecting_at: float | None = None
        self.connecting = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed = False
        self._killing: asyncio.Future[None] | None = None
        #: Sends handed to the worker and not answered yet (their refs).
        self.pending: set[str] = set()

    async def spawn(self) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.config.module,
                "--fd",
                str(child.fileno()),
                "--log-level",
                self.config.log_level,
                "--heartbeat",
                str(self.config.heartbeat),
                "--deadline",
                str(self.config.deadline),
                "--send-timeout",
                str(self.config.send_timeout),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is the supervisor's to handle
            )
        finally:
            child.close()
        metrics.worker_starts.inc()
        self.reader, self.writer = await asyncio.open_connection(
            sock=parent, limit=wire.MAX_LINE + 2
        )
        loop = asyncio.get_running_loop()
        pid = self.proc.pid
        self._tasks = [
            loop.create_task(self._read_messages(), name=f"worker-{pid}-messages"),
            loop.create_task(self._read_output(), name=f"worker-{pid}-output"),
            loop.create_task(self._watch_exit(), name=f"worker-{pid}-exit"),
            loop.create_task(self._watch_silence(), name=f"worker-{pid}-silence"),
        ]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _extra(self) -> dict[str, Any]:
        return {"session": self.session_id} if self.session_id is not None else {}

    # -- talking ------------------------------------------------------------------------

    async def send(self, kind: str, **fields: Any) -> None:
        await self._send_now(kind, **fields)

    def _send_now(self, kind: str, **fields: Any) -> Awaitable[None]:
        """Hand the message to the socket now, before anything else runs on the loop;
        what it returns waits for the buffer to drain. :class:`DriverError` if the
        worker is gone."""
        if self.writer is None or self.writer.is_closing():
            raise DriverError("worker is gone")
        self.writer.write(wire.encode(kind, **fields))
        return self.writer.drain()

    def assign(self, spec: ConnectSpec, on_event: EventSink, store: str) -> Awaitable[None]:
        """Give the worker its session: "start" is on the socket when this returns,
        before the loop runs anything else (the runner's write of "connecting",
        under way beside the start, holds the GIL in slices while the ORM works
        in its database thread: the worker need not wait for that)."""
        self.session_id = spec.session_id
        self.on_event = on_event
        return self._send_now("start", session=spec.session_id, store=store, jid=spec.jid)

    def fail(self, message: str) -> None:
        """Report this worker's failure once, as its session's error, and kill it."""
        if self._failed or self.stopping:
            return
        self._failed = True
        metrics.worker_crashes.inc()
        logger.warning("worker %s failed: %s", self.pid, message, extra=self._extra())
        if self.on_event is not None and self.session_id is not None:
            for ref in sorted(self.pending):  # asked, never answered: it may have gone out
                detail = "the connection's worker ended before WhatsApp answered"
                self.on_event(SendFailed(self.session_id, ref, "unknown", "error", detail))
            self.pending.clear()
            self.on_event(ConnectError(self.session_id, message))
        self._killing = asyncio.ensure_future(self.terminate(ask=False))

    # -- watching -----------------------------------------------------------------------

    async def _read_messages(self) -> None:
        assert self.reader is not None
        while True:
            try:
                line = await self.reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                self.fail("worker sent an oversized message")
                return
            except ConnectionError:
                line = b""
            if not line:
                return  # EOF: _watch_exit reports it
            self.last_heard = time.monotonic()
            try:
                message = wire.decode(line, wire.EVENTS)
            except wire.ProtocolError as exc:
                self.fail(f"worker sent a malformed message ({exc})")
                return
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ready":
            self.ready.set()
            return
        if kind == "connecting":
            self.connecting_at = time.monotonic()
            at = message.get("at")  # optional, see wire.EVENTS
            if isinstance(at, int | float) and not isinstance(at, bool):
                self.connect_called_at = float(at)
            self.connecting.set()
        if self.session_id is None or self.on_event is None or self.stopping:
            return
        event = wire.to_driver_event(self.session_id, message)
        if isinstance(event, MessageSent | SendFailed):
            if event.ref not in self.pending:
                return  # not ours to report (a ref answered already)
            self.pending.discard(event.ref)
        if event is not None:
            self.on_event(event)

    async def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        level = logging.getLevelName(self.config.log_level.upper())
        level = level if isinstance(level, int) else logging.WARNING
        while line := await self.proc.stdout.readline():
            text = redact(line.decode(errors="replace").rstrip())
            if text:
                worker_log.log(level, "[worker %s] %s", self.pid, text, extra=self._extra())

    async def _watch_exit(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        self.exited.set()
        if self.writer is not None:
            self.writer.close()
        if not self.stopping:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self.fail(f"worker process {how}")

    async def _watch_silence(self) -> None:
        while not self.exited.is_set():
            await asyncio.sleep(self.config.heartbeat)
            if self.writer is not None and not self.writer.is_closing():
                with contextlib.suppress(Exception):
                    await self.send("ping")
            if time.monotonic() - self.last_heard > self.config.deadline:
                self.fail(f"worker silent for more than {self.config.deadline:.0f}s")
                return

    # -- stopping -----------------------------------------------------------------------

    async def terminate(self, *, ask: bool = True) -> None:
        """Ask, then SIGTERM, then SIGKILL; returns once the process is gone."""
        self.stopping = True
        if self.proc is None:
            return
        steps: list[tuple[str, float]] = []
        if ask:
            steps.append(("ask", self.config.ask_grace))
        steps += [("term", self.config.term_grace), ("kill", 5.0)]
        for step, grace in steps:
            if self.exited.is_set():
                break
            with contextlib.suppress(ProcessLookupError, DriverError, ConnectionError):
                if step == "ask":
                    await self.send("stop")
                elif step == "term":
                    self.proc.send_signal(signal.SIGTERM)
                else:
                    self.proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.exited.wait()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self.writer is not None:
            self.writer.close()


class NeonizeDriver:
    """The :class:`~sessions_app.drivers.base.Driver` backed by neonize worker processes."""

    name: ClassVar[str] = "neonize"
    simulated: ClassVar[bool] = False

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.workers: dict[int, Worker] = {}
        self._warm: list[Worker] = []
        self._refill: asyncio.Task[None] | None = None
        self._schema_ready = False
        self._closed = False
        self._spawned: list[Worker] = []  # every worker ever started, for aclose
        self._pending: set[asyncio.Task[None]] = set()
        self._assigned = asyncio.Event()

    # -- the warm pool ------------------------------------------------------------------

    async def _spawn(self) -> Worker:
        if self._closed:
            raise DriverError("the driver is closed")
        worker = Worker(self.config)
        self._spawned.append(worker)
        await worker.spawn()
        self._spawned = [w for w in self._spawned if not w.exited.is_set()]
        return worker

    def _top_up(self) -> None:
        if self._closed:
            return
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(
                self._fill(), name="neonize-warm-pool"
            )

    async def _fill(self) -> None:
        while len(self._warm) < self.config.warm and not self._closed:
            worker = await self._spawn()
            self._warm.append(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.ready.wait(), 30)

    def _after_connecting(self, worker: Worker) -> None:
        async def wait_then_top_up() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await worker.connecting.wait()
            self._top_up()

        task = asyncio.get_running_loop().create_task(
            wait_then_top_up(), name="neonize-refill-wait"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def pool_ready(self) -> None:
        """Wait until the warm pool is full and every worker in it is ready."""
        self._top_up()
        if self._refill is not None:
            await asyncio.shield(self._refill)
        await asyncio.gather(*(w.ready.wait() for w in self._warm))

    async def worker_for(self, session_id: int) -> Worker:
        """The worker serving ``session_id``, once the supervisor has started one."""
        while session_id not in self.workers:
            self._assigned.clear()
            await self._assigned.wait()
        return self.workers[session_id]

    async def _take(self) -> Worker:
        while self._warm:
            worker = self._warm.pop(0)
            if not worker.exited.is_set():
                return worker
        return await self._spawn()

    async def prepare(self) -> None:
        """Create the store schema once, then warm the pool: before any session starts."""
        if not self._schema_ready:
            await asyncio.to_thread(ensure_store_schema, self.config.store)
            self._schema_ready = True
        self._top_up()

    # -- the Driver protocol ------------------------------------------------------------

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        if spec.session_id in self.workers:
            raise DriverError(f"session {spec.session_id} already has a worker")
        await self.prepare()
        worker = await self._take()
        self.workers[spec.session_id] = worker
        self._assigned.set()
        try:
            await worker.assign(spec, on_event, self.config.store)
        except (DriverError, ConnectionError) as exc:
            worker.fail(f"could not hand the session to its worker: {exc}")
        # Refill once this worker is connecting: a spawn (a core busy for ~0.3 s
        # importing neonize) must not compete with the session it replaces.
        self._after_connecting(worker)

    async def stop(self, session_id: int) -> None:
        worker = self.workers.pop(session_id, None)
        if worker is not None:
            await worker.terminate()

    async def logout(self, session_id: int, jid: str) -> None:
        worker = self.workers.get(session_id)
        if worker is not None and not worker.exited.is_set():
            with contextlib.suppress(DriverError, ConnectionError):
                worker.stopping = True  # its own "logged_out" is ours to report
                await worker.send("logout")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.exited.wait(), self.config.ask_grace + 2)
        await self.stop(session_id)
        if jid:
            await asyncio.to_thread(device_store.delete_device, self.config.store, jid)

    async def request_pairing_code(self, session_id: int, phone: str) -> None:
        worker = self.workers.get(session_id)
        if worker is None:
            raise DriverError("no connection is open to link by phone number")
        await worker.send("pair_phone", phone=phone)

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        """See :class:`~sessions_app.drivers.base.Driver`: the worker sends on its own
        thread and answers with ``sent`` or ``send_failed`` (its deadline is
        ``WorkerConfig.send_timeout``); a worker that dies first answers
        ``SendFailed(unknown)`` for what it was asked."""
        worker = self.workers.get(session_id)
        if worker is None:
            raise DriverError("no connection is open to send on")
        if worker.exited.is_set() or worker.stopping or worker.on_event is None:
            if worker.on_event is not None and not worker.stopping:
                detail = "the connection's worker is gone"
                worker.on_event(SendFailed(session_id, ref, "refused", "not_connected", detail))
            return
        worker.pending.add(ref)
        try:
            await worker.send("send", ref=ref, to=to, text=text)
        except (DriverError, ConnectionError):
            if ref in worker.pending and not worker.stopping:
                worker.pending.discard(ref)
                detail = "the connection's worker is gone"
                worker.on_event(SendFailed(session_id, ref, "refused", "not_connected", detail))

    async def forget(self, jid: str) -> None:
        """Remove a device from the store (the session was deleted)."""
        await asyncio.to_thread(device_store.delete_device, self.config.store, jid)

    async def aclose(self) -> None:
        """Stop every worker, warm or busy; wait for a spawn under way to finish first."""
        self._closed = True
        if self._refill is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._refill), 30)
        workers = self._spawned
        self.workers.clear()
        self._warm.clear()
        self._spawned = []
        await asyncio.gather(*(w.terminate() for w in workers), return_exceptions=True)


def ensure_store_schema(store: str) -> None:
    """Have neonize create (or upgrade) its tables once, in a throwaway process.

    Two workers opening a new store at once would both run the migration and race.
    """
    import subprocess

    code = (
        "import logging,sys; logging.basicConfig(level=logging.ERROR);"
        "from neonize.client import ClientFactory\n"
        "try: ClientFactory.get_all_devices_from_db(sys.argv[1])\n"
        "except ValueError: pass  # neonize mis-parses some push names; the schema exists"
    )
    if not device_store.is_postgres(store):
        os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", code, store], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise DriverError(
            f"could not create the neonize store: {redact(result.stderr.strip())[-500:]}"
        )
