"""The webhook dispatcher: claims due deliveries and sends them, inside every supervisor.

One asyncio component per supervisor process (``run_supervisor``, and the inline
supervisor under ``runserver``), started beside it by :mod:`sessions_app.service`.
Its loop: claim up to the free slots of due lane heads (:func:`webhooks.delivery.claim`),
send each in a task of its own (at most ``max_in_flight`` at once, one per lane),
record the outcome, and claim again as soon as a slot frees or a lane moves on.
It sleeps until rung (an emitting transaction committed, here or elsewhere:
:mod:`webhooks.ring`), until the next retry is due, or until the periodic sweep
(the safety net for a lost ring) — never polls.

:meth:`stop` is idempotent and thread-safe; on the way out the claims in flight
are given back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from channels.layers import BaseChannelLayer, get_channel_layer
from django.db import connections
from django.utils import timezone

from ops import metrics
from sessions_app import doorbell, stopping
from sessions_app.dbthread import SUPERVISOR_THREAD, KeptConnectionCall
from webhooks import delivery, ring, sender, signing
from webhooks.conf import WebhookConfig, webhook_config
from webhooks.delivery import Claimed, Result

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Named like the supervisor's threads, so its PostgreSQL connections end a
#: transaction left idle within the self-fence margin too
#: (:func:`sessions_app.dbthread.end_idle_transactions`): it locks sessions'
#: sequence rows, which a session's writes wait for while they hold the session
#: row, which the renewal waits for. A dispatcher cut off mid-transaction kept
#: them until TCP gave up, and the other supervisors fenced themselves.
DB_THREAD = f"{SUPERVISOR_THREAD}-webhooks"
#: On stop, attempts in flight get this long to finish (a shutdown stays short).
DRAIN_SECONDS = 2.0
#: The whole stop (drain, doorbell, claims given back) gets this long.
STOP_SECONDS = DRAIN_SECONDS + 8.0


def make_owner_id() -> str:
    return f"webhooks:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Dispatcher:
    """Delivers webhooks until :meth:`stop`; any number may run at once."""

    def __init__(
        self,
        *,
        owner: str | None = None,
        config: WebhookConfig | None = None,
        layer: BaseChannelLayer | bool | None = True,
        observer: Callable[[int, str, str], None] | None = None,
    ) -> None:
        """``observer(delivery_id, outcome, status)`` is called on the loop after each
        recorded attempt (tests and benchmarks await outcomes with it)."""
        self.observer = observer
        self.owner = owner or make_owner_id()
        self.config = config or webhook_config()
        self._layer_arg = layer
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=DB_THREAD)
        self._last_sweep = -float("inf")
        #: Outcomes waiting to be written, each with the future its attempt awaits.
        self._to_record: list[tuple[Claimed, Result, asyncio.Future[Any]]] = []
        self._record_wake = asyncio.Event()
        #: Keep-alive connections, one borrowed per attempt (no pool walk per request).
        self._connections = sender.Connections(self.config)
        #: Set once the first pass ran (listening, and the backlog looked at).
        self.ready = asyncio.Event()

    # -- database calls, in a thread of our own (ordered, off the supervisor's) --------

    def _db(self, func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            runner = KeptConnectionCall(func, thread_sensitive=False, executor=self._executor)
            return await runner(*args, **kwargs)

        return call

    # -- lifecycle ---------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now; callable from any thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Ask the dispatcher to stop; idempotent, callable from any thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        """Deliver until :meth:`stop`; then wait (bounded) for the attempts in flight
        and give back what is left."""
        self._loop = asyncio.get_running_loop()
        layer = get_channel_layer() if self._layer_arg is True else self._layer_arg
        ring.register(id(self), self.wake)
        listener = asyncio.create_task(self._listen(layer), name="waconnect-webhooks-doorbell")
        worker = asyncio.create_task(self._loop_forever(), name="waconnect-webhooks-loop")
        recorder = asyncio.create_task(self._recorder(), name="waconnect-webhooks-recorder")
        stop_wait = asyncio.create_task(self._stop.wait(), name="waconnect-webhooks-stop")
        try:
            done, _ = await asyncio.wait(
                [stop_wait, listener, worker, recorder], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop_wait and not task.cancelled() and task.exception():
                    logger.error(
                        "webhook task %s died; stopping", task.get_name(), exc_info=task.exception()
                    )
                    raise task.exception()  # type: ignore[misc]
        finally:
            ring.unregister(id(self))
            # Cancelled again until they end: a loop that lost its one cancellation
            # in a library (3.11's wait_for under redis-py's writes) ran on for ever.
            for stuck in await stopping.cancel_until_done(
                [listener, worker, stop_wait], timeout=DRAIN_SECONDS
            ):
                logger.warning("webhook task %s did not stop in time", stuck.get_name())
            await self._drain()  # the recorder still writes their outcomes
            for stuck in await stopping.cancel_until_done([recorder], timeout=DRAIN_SECONDS):
                logger.warning("webhook task %s did not stop in time", stuck.get_name())
            with contextlib.suppress(Exception):
                await self._connections.aclose()
            with contextlib.suppress(Exception):
                await self._db(delivery.release)(self.owner)
            with contextlib.suppress(Exception):
                await self._db(connections.close_all)()
            self._executor.shutdown(wait=False)

    async def _drain(self) -> None:
        """Let the attempts in flight finish for :data:`DRAIN_SECONDS`, then cancel them
        (their claims are given back: sent again later, perhaps a second time)."""
        tasks = list(self._inflight.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(
            tasks, timeout=min(DRAIN_SECONDS, self.config.total_timeout)
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _listen(self, layer: BaseChannelLayer | None) -> None:
        """Turn rings on the channel layer into wake-ups (other processes' events)."""
        if layer is None:
            await asyncio.Event().wait()
            return
        channel = await layer.new_channel()
        await layer.group_add(ring.WEBHOOKS_GROUP, channel)
        failures = 0
        last_join = time.monotonic()
        try:
            while True:
                try:
                    await layer.receive(channel)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if self._stop.is_set():
                        return
                    failures += 1
                    logger.warning("webhook doorbell receive failed; retrying", exc_info=True)
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                    continue
                self._wake.set()
                if time.monotonic() - last_join > 3600:  # membership expires: renew it
                    last_join = time.monotonic()
                    with contextlib.suppress(Exception):
                        await layer.group_add(ring.WEBHOOKS_GROUP, channel)
        finally:
            await doorbell.leave_group(layer, ring.WEBHOOKS_GROUP, channel)

    # -- the loop ----------------------------------------------------------------------

    async def _loop_forever(self) -> None:
        while True:
            wait = await self.pass_once()
            self.ready.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def pass_once(self) -> float:
        """Claim and start what is due; return how long to sleep unless rung."""
        self._wake.clear()
        if time.monotonic() - self._last_sweep >= self.config.sweep_interval:
            self._last_sweep = time.monotonic()
            try:
                repaired = await self._db(delivery.repair_lanes)()
            except Exception:
                logger.warning("could not check the webhook lanes", exc_info=True)
            else:
                if repaired:
                    logger.warning("scheduled %d webhook lane heads left unscheduled", repaired)
        claimed_any = False
        due: float | None = None
        asked_due = False  # whether ``due`` was read after the last claim found nothing
        free = self.config.max_in_flight - len(self._inflight)
        while free > 0:
            asked = time.monotonic()
            idle = not self._inflight
            try:
                got, due = await self._db(delivery.claim_or_due)(
                    self.owner, self.config.claim_ttl, min(free, self.config.claim_batch), idle
                )
            except Exception:
                logger.warning("could not claim webhook deliveries; will retry", exc_info=True)
                return min(5.0, self.config.sweep_interval)
            claimed_any = claimed_any or bool(got)
            for claimed in got:
                self._inflight[claimed.id] = asyncio.create_task(
                    self._attempt(claimed, asked), name=f"waconnect-webhook-{claimed.id}"
                )
            asked_due = idle and not got
            if len(got) < min(free, self.config.claim_batch):
                break
            free = self.config.max_in_flight - len(self._inflight)
        if self._inflight:
            # An attempt's end wakes us (and a retry that falls due meanwhile waits
            # for it, at most the total timeout): no schedule query per outcome.
            return self.config.sweep_interval
        if not asked_due:  # (what was in flight ended while we claimed)
            try:
                due = await self._db(delivery.next_due_in)()
            except Exception:
                logger.warning("could not read the webhook schedule", exc_info=True)
                return min(5.0, self.config.sweep_interval)
        if due is None:
            return self.config.sweep_interval
        # Due but not claimed (locked by another dispatcher this instant): look again
        # soon, not at once.
        return min(self.config.sweep_interval, max(due, 0.01 if claimed_any else 0.2))

    async def _attempt(self, claimed: Claimed, asked: float) -> None:
        """Send one claimed delivery and record the outcome.

        ``asked`` (monotonic) is when the claim was asked for: the claim may already
        have been running since then. If what is left of it could not cover a whole
        attempt (this process was frozen or starved), nothing is sent: by then
        another dispatcher may have taken the claim and moved the lane on, and a
        late send would arrive out of order. The claim expires and the delivery is
        attempted again.
        """
        if time.monotonic() - asked > self.config.claim_ttl - self.config.total_timeout:
            logger.warning("webhook delivery %s: claim too old to use; left to expire", claimed.id)
            self._inflight.pop(claimed.id, None)
            return
        try:
            headers = signing.sign_headers(
                claimed.event_id, claimed.body, claimed.secrets, timezone.now()
            )
            started = time.perf_counter()
            answer = await sender.post(
                self._connections, claimed.url, claimed.body, headers, self.config
            )
            metrics.webhook_attempt_duration.observe(time.perf_counter() - started)
            result = Result(
                answer.status_code, error=answer.error, response=answer.body, refused=answer.refused
            )
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._to_record.append((claimed, result, done))
            self._record_wake.set()
            recorded = await done
            if recorded is None:
                logger.warning(
                    "webhook delivery %s: claim lost before its outcome was recorded", claimed.id
                )
                return
            outcome, status = recorded
            metrics.webhook_deliveries.labels(outcome=str(outcome)).inc()
            if self.observer is not None:
                self.observer(claimed.id, str(outcome), status)
            if status == "delivered":
                latency = (timezone.now() - claimed.created_at).total_seconds()
                metrics.webhook_delivery_latency.observe(max(0.0, latency))
            elif status == "dead":
                metrics.webhook_dead.inc()
                logger.warning(
                    "webhook delivery %s to endpoint %s is dead after %d attempts (%s)",
                    claimed.id,
                    claimed.endpoint_id,
                    claimed.attempts,
                    answer.error or f"HTTP {answer.status_code}",
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The claim expires and the delivery is attempted again.
            logger.exception("webhook delivery %s failed unexpectedly", claimed.id)
        finally:
            self._inflight.pop(claimed.id, None)
            self._wake.set()  # a slot is free, and the lane's next may be due

    async def _recorder(self) -> None:
        """Write the outcomes that arrived, all those waiting in one transaction: the
        database thread is the dispatcher's bottleneck, a commit per outcome its
        largest cost. An attempt waits for its outcome to be written before its slot
        frees (so the lane's next is claimable by then)."""
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            batch, self._to_record = self._to_record, []
            if not batch:
                continue
            try:
                results = await self._db(delivery.finish_many)(
                    self.owner,
                    [(claimed, result) for claimed, result, _ in batch],
                    self.config.schedule,
                    self.config.disable_after,
                )
            except asyncio.CancelledError:
                for *_, done in batch:
                    if not done.done():
                        done.cancel()
                raise
            except Exception as exc:
                # Nothing written: the claims expire and the deliveries go again.
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (*_, done), recorded in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(recorded)


async def run_beside(
    main: Awaitable[None], dispatcher: Dispatcher, stop_main: Callable[[], None]
) -> None:
    """Run ``main`` (a supervisor) with ``dispatcher`` beside it: when either ends the
    other is stopped; a dispatcher that died stops the supervisor too (a named side
    task that fails does not go unnoticed)."""
    main_task = asyncio.ensure_future(main)
    side = asyncio.create_task(dispatcher.run(), name="waconnect-webhooks")
    try:
        done, _ = await asyncio.wait([main_task, side], return_when=asyncio.FIRST_COMPLETED)
        if side in done and not main_task.done():
            if not side.cancelled() and side.exception() is not None:
                logger.error("the webhook dispatcher died; stopping the supervisor")
            stop_main()
        await main_task
    finally:
        dispatcher.stop()
        # Bounded: its last database calls (giving its claims back) may wait on a
        # database that does not answer; unreleased claims expire by themselves.
        await stopping.steps_within(STOP_SECONDS, [("the webhook dispatcher", lambda: side)])
