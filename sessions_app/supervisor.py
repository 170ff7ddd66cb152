"""The connection supervisor: the only code that opens WhatsApp connections.

One asyncio component, used the same way inside ``runserver`` and alone in
``manage.py run_supervisor``. It claims the sessions that need an owner (a lease
with a fencing number), runs one :class:`~sessions_app.runner.SessionRunner` per
owned session, renews all its leases in one statement and fences itself when it
cannot renew in time (:mod:`sessions_app.lease_keeping`), listens for intent
changes on the channel layer (the doorbell, :mod:`sessions_app.doorbell_listener`)
and reconciles with the database periodically (the safety net). Its database
calls are in :mod:`sessions_app.owner_db`.

Side tasks are named; if one dies, the supervisor stops rather than limp along.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer
from django.db import DatabaseError

from messaging import dbthreads as message_threads
from messaging import pump
from sessions_app import doorbell, owner_db, stopping
from sessions_app.conf import SupervisorConfig, supervisor_config
from sessions_app.doorbell_listener import DoorbellListenerMixin
from sessions_app.drivers.base import Driver
from sessions_app.lease_keeping import LeaseKeepingMixin, UnconfirmedStop
from sessions_app.leases import Census, Lease
from sessions_app.policy import Backoff, ConnectCeiling, fair_share, pick_to_shed, shed_count
from sessions_app.runner import SessionRunner

logger = logging.getLogger(__name__)

#: Look for work this long after another's lease is due to expire (clock skew
#: between our sleep and the database's clock).
EXPIRY_SLACK = 0.1


def _log_close_failure(closing: asyncio.Future[None]) -> None:
    """Read (and log) how the driver's close ended, even when nobody waited that long."""
    if not closing.cancelled() and closing.exception() is not None:
        logger.warning("the driver's close failed: %r", closing.exception())


def make_owner_id() -> str:
    """Unique per supervisor process start: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Supervisor(DoorbellListenerMixin, LeaseKeepingMixin):
    """Claims sessions, runs them, keeps its leases, and fences itself if it can't."""

    def __init__(
        self,
        driver: Driver,
        *,
        owner: str | None = None,
        config: SupervisorConfig | None = None,
        layer: BaseChannelLayer | bool | None = True,
        clock: Callable[[], float] = time.monotonic,
        poll_only: bool = False,
    ) -> None:
        """``poll_only``: no doorbell and no waking at lease expiry, only the periodic
        pass (the design waconnect replaces; for comparison benchmarks)."""
        self.driver = driver
        self.poll_only = poll_only
        self.owner = owner or make_owner_id()
        self.config = config or supervisor_config()
        self.backoff = Backoff(base=self.config.backoff_base, cap=self.config.backoff_cap)
        self.ceiling = ConnectCeiling(limit=self.config.connect_limit)
        self._layer_arg = layer
        self.clock = clock
        self.runners: dict[int, SessionRunner] = {}
        self.fenced = False
        self._last_renewal = clock()
        self.layer: BaseChannelLayer | None = None
        self._channel: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        #: When (our clock) another's lease or presence runs out next, as the last
        #: census saw it: a deadline, so that wake-ups in between do not put it off.
        self._next_expiry_at = self.clock() + self.config.reconcile_interval
        self._orphans: dict[int, int] = {}  # session id -> epoch, see _release_orphans
        self._unconfirmed: dict[int, UnconfirmedStop] = {}  # see _confirm_stop
        self._strays: dict[int, int] = {}  # see _adopt_strays
        self._claiming = 0  # claim passes under way, see _adopt_strays
        self._ending: dict[int, SessionRunner] = {}  # see _track_ending
        self._driver_closing: asyncio.Future[None] | None = None  # see _close_driver
        #: Rung sessions we do not run, and whether the next pass needs a census
        #: anyway (any other wake-up); see reconcile.
        self._rung: set[int] = set()
        #: Sessions rung, with no runner, while a claim pass was under way (cleared
        #: when none is): see _run_claimed.
        self._rung_while_claiming: set[int] = set()
        self._census_due = True
        #: The last census and when it was taken (our clock).
        self._census: tuple[Census, float] | None = None
        #: Set after the first reconcile pass: the supervisor is listening and has
        #: claimed what was waiting.
        self.ready = asyncio.Event()

    def _extra(self) -> dict[str, Any]:
        return {"owner": self.owner}

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; then hand every session over and return."""
        self._loop = asyncio.get_running_loop()
        self._last_renewal = self.clock()
        if self.poll_only:
            self.layer = None
        else:
            self.layer = get_channel_layer() if self._layer_arg is True else self._layer_arg
        prepare = getattr(self.driver, "prepare", None)
        if prepare is not None:  # e.g. neonize: create its store, warm workers
            await prepare()
        logger.info(
            "supervisor %s starting (driver %s, lease TTL %ss)",
            self.owner,
            self.driver.name,
            self.config.lease_ttl,
            extra=self._extra(),
        )
        side = [
            asyncio.create_task(self._doorbell_loop(), name="waconnect-doorbell"),
            asyncio.create_task(self._renew_loop(), name="waconnect-renew"),
            asyncio.create_task(self._fence_watchdog(), name="waconnect-fence-watchdog"),
            asyncio.create_task(self._reconcile_loop(), name="waconnect-reconcile"),
        ]
        stop_wait = asyncio.create_task(self._stop.wait(), name="waconnect-stop-wait")
        try:
            done, _ = await asyncio.wait([stop_wait, *side], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and not task.cancelled() and task.exception():
                    logger.error(
                        "supervisor task %s died; stopping",
                        task.get_name(),
                        exc_info=task.exception(),
                        extra=self._extra(),
                    )
        finally:
            # Bounded: a library that swallows a cancellation must not hang shutdown;
            # cancelled again until it takes: a loop that lost one went on for ever.
            stuck = await stopping.cancel_until_done([stop_wait, *side], timeout=5.0)
            for task in stuck:
                logger.warning("task %s did not stop in time", task.get_name(), extra=self._extra())
            await self._shutdown()

    def stop(self) -> None:
        """Ask the supervisor to shut down; idempotent, callable from any thread."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _shutdown(self) -> None:
        """Close every connection, hand the sessions over, give back the database
        connections.

        The connections close first, with no database call on the way (the runners
        stop on their own; if one does not, or an orphan's connection may still be
        open, the driver closes what is left before anything else); the database
        steps then get the lease TTL (:func:`~sessions_app.stopping.steps_within`).
        No lease is given back while a connection that may hold it is open: those
        of runners that did not stop, and the orphans', are released only if that
        close of the driver ended without error, else left to expire.
        So a database that does not answer neither leaves a connection open when
        a lease expires nor keeps the supervisor from stopping: its sessions are
        then taken over when their leases expire, as after a crash.
        """
        runners = list(self.runners.values())
        # Sent first (it runs while the runners stop) and awaited before the
        # hand-over: no census counts us once we release.
        withdrawn = asyncio.ensure_future(owner_db.withdraw(self.owner))
        stopped = await self._stop_runners(runners)
        # A runner that did not stop, or any orphan (one that ended earlier
        # self-fenced, crashed or with its driver stop unconfirmed): its connection
        # may still be open, and release_all would give its lease back.
        closed_first = len(stopped) < len(runners) or bool(self._orphans)
        all_closed = True
        if closed_first:  # their connections must not wait for the database
            all_closed = await self._close_driver()
        why = "supervisor shutting down; handing over"
        steps: list[stopping.Step] = [
            ("withdrawing from the census", lambda: withdrawn),
            ("the hand-over", lambda: self._release_stopped(stopped, why)),
        ]
        if all_closed:  # anything left, e.g. an orphan's lease; else left to expire
            steps.append(("releasing the leases", lambda: owner_db.release_all(self.owner)))
        handed_over = await stopping.steps_within(self.config.lease_ttl, steps)
        if not closed_first:
            await self._close_driver()
        for unconfirmed in self._unconfirmed.values():  # the driver is closed (or tried)
            if unconfirmed.confirming is not None:
                unconfirmed.confirming.cancel()
        if handed_over:  # else the database left a call waiting: the closes would too
            await stopping.steps_within(
                self.config.stop_timeout,
                [
                    ("closing the database connections", owner_db.close),
                    ("closing the lease connection", owner_db.close_lease),
                    ("closing the message connections", message_threads.close),
                ],
            )
        if handed_over and all_closed:
            logger.info(
                "supervisor %s stopped; %d sessions handed over",
                self.owner,
                len(runners),
                extra=self._extra(),
            )
        else:
            logger.warning(
                "supervisor %s stopped without finishing its hand-over; the leases of its"
                " %d sessions expire within %.0fs",
                self.owner,
                len(runners),
                self.config.lease_ttl,
                extra=self._extra(),
            )

    async def _close_driver(self) -> bool:
        """Close the driver, waiting at most the stop timeout: True only if the close
        ended, without error. Closed once: a later call waits for the same close."""
        if self._driver_closing is None:
            self._driver_closing = asyncio.ensure_future(self.driver.aclose())
            self._driver_closing.add_done_callback(_log_close_failure)
        closing = self._driver_closing
        await stopping.steps_within(
            self.config.stop_timeout, [("closing the driver", lambda: closing)]
        )
        return closing.done() and not closing.cancelled() and closing.exception() is None

    def _runner_done(self, runner: SessionRunner) -> None:
        """Forget a runner (idempotent); it may still be closing its last write."""
        if self.runners.get(runner.session_id) is not runner:
            return
        del self.runners[runner.session_id]
        self._track_ending(runner)
        if runner.exit_reason in ("self-fenced", "crashed") or runner.stop_unconfirmed:
            # Perhaps still ours in the database: the next renewal gives it back
            # (once a stop has finished, if the connection may still be open).
            self._orphans[runner.session_id] = runner.lease.epoch
            if runner.stop_unconfirmed:
                self._confirm_stop(runner)
        if runner.exit_reason in ("released", "deleted"):
            # An intent may have changed while it was finishing: look again.
            self.look_for_work()

    def look_for_work(self) -> None:
        """Wake the reconcile loop for a full pass (census and claim)."""
        self._census_due = True
        self._wake.set()

    # -- reconcile ------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        # The first pass runs once the doorbell listens: a ring in between would be
        # lost until the next periodic pass.
        await self._listening.wait()
        await self._join()
        self.look_for_work()
        last_periodic = self.clock()
        while True:
            # Wake on a ring, when another's lease or presence runs out (to take
            # over a dead supervisor's sessions without delay), or for the
            # periodic pass. asyncio.timeout, not wait_for: on 3.11 wait_for can
            # swallow a cancellation that races the wake-up.
            until_periodic = self.config.reconcile_interval - (self.clock() - last_periodic)
            woken = False
            with contextlib.suppress(TimeoutError):
                until_expiry = self._next_expiry_at - self.clock()
                wake_in = until_periodic if self.poll_only else min(until_periodic, until_expiry)
                async with asyncio.timeout(max(0.0, wake_in)):
                    await self._wake.wait()
                    woken = True
            periodic = self.clock() - last_periodic >= self.config.reconcile_interval
            if periodic:
                last_periodic = self.clock()
            self._wake.clear()
            # Past the deadline, a census even if a ring woke us (rings may come
            # faster than passes, and would put the expiry off again).
            expired = not self.poll_only and self.clock() >= self._next_expiry_at
            try:
                # Only rings that name sessions: perhaps no census (see reconcile).
                census = periodic or not woken or self._census_due or expired
                await self.reconcile(periodic=periodic, census=census)
            except Exception:
                self._next_expiry_at = self.clock() + self.config.reconcile_interval
                logger.warning("reconcile failed; will retry", exc_info=True, extra=self._extra())
            if census and self._next_expiry_at <= self.clock():
                # The pass took no census after all (fenced, say): not again at once.
                self._next_expiry_at = self.clock() + self.config.reconcile_interval
            self.ready.set()

    async def _join(self) -> None:
        """Enter the census and ask the others to make room for our share."""
        try:
            await owner_db.announce(self.owner, self.config.lease_ttl, self.config.max_sessions, 0)
        except Exception:
            logger.warning("could not announce ourselves", exc_info=True, extra=self._extra())
            return
        await doorbell.wake_supervisors("a supervisor joined")

    async def reconcile(self, *, periodic: bool = True, census: bool = True) -> int:
        """Claim what needs an owner; on the periodic pass, re-check owned sessions too
        and the messages: expire overdue ones of every session (owned or not), wake
        the pumps of our sessions with messages queued (a lost ring).

        ``census=False`` (woken only by rings naming sessions we do not run, such as
        a create's): those sessions are claimed by id without a new census, when the
        last census (at most one reconcile interval old) plus these sessions gives a
        fair share that has room for them (:meth:`_claim_rung`); otherwise, and for
        every other wake-up, a full pass: census, shedding, claims of anything
        claimable. A census-free claim never takes more than the share a census
        taken now would give, unless sessions stopped wanting an owner since the
        last one (their count lags by at most a reconcile interval; shedding
        corrects it at the next full pass)."""
        self._claiming += 1  # see _adopt_strays
        try:
            return await self._reconcile(periodic, census)
        finally:
            self._claiming -= 1
            if not self._claiming:
                self._rung_while_claiming.clear()

    async def _reconcile(self, periodic: bool, census: bool) -> int:
        if periodic:
            await self._poke_changed()
            try:
                pumps = {sid: runner.messages for sid, runner in self.runners.items()}
                await pump.periodic(self.owner, pumps)
            except DatabaseError:
                logger.warning("messages: the periodic pass failed", exc_info=True)
            if self.layer is not None and self._channel is not None:
                # Group membership expires (a day by default): renew it.
                with contextlib.suppress(Exception):
                    await self.layer.group_add(doorbell.SUPERVISORS_GROUP, self._channel)
        if self.fenced:
            return 0
        rung, self._rung = self._rung, set()
        if not census and rung:
            claimed = await self._claim_rung(rung)
            if claimed is not None:
                return claimed
        self._census_due = False  # set again by any wake-up from here on
        # The census and a first claim in one hop (both are on the way from "create"
        # to the QR code); further batches, after any shedding, one by one.
        running = len(self.runners)
        taken, share, got = await owner_db.census_and_claim(
            self.owner,
            self.config.lease_ttl,
            self.config.max_sessions,
            running,
            self.config.claim_batch,
        )
        self._census = (taken, self.clock())
        self._next_expiry_at = self.clock() + (
            self.config.reconcile_interval
            if taken.next_expiry is None
            else taken.next_expiry + EXPIRY_SLACK
        )
        if got is None:
            await self._shed(share)
        batch = min(share - running, self.config.claim_batch)  # what that claim asked for
        claimed = 0
        while True:
            if got is None:
                room = share - len(self.runners)
                batch = min(room, self.config.claim_batch)
                if batch <= 0:
                    break
                got = await owner_db.claim(self.owner, self.config.lease_ttl, batch)
            if not self._run_claimed(got):
                break
            claimed += len(got)
            if len(got) < batch:
                break
            got = None
        return claimed

    async def _claim_rung(self, rung: set[int]) -> int | None:
        """Claim these rung sessions by id, without a census: the number claimed, or
        None when the last census is missing or too old, or the fair share it gives
        (with these sessions added to the work) has no room for them."""
        if self._census is None:
            return None
        last, taken_at = self._census
        if self.clock() - taken_at > self.config.reconcile_interval:
            return None
        wanted = rung - self.runners.keys()
        if not wanted:
            return 0
        share = fair_share(last.wanted + len(wanted), self.config.max_sessions, last.other_caps)
        if len(self.runners) + len(wanted) > share:
            return None
        got = await owner_db.claim(self.owner, self.config.lease_ttl, len(wanted), wanted)
        # What the census would count now: the sessions just claimed want an owner.
        self._census = (dataclasses.replace(last, wanted=last.wanted + len(got)), taken_at)
        self._run_claimed(got)
        return len(got)

    def _run_claimed(self, got: list[Lease]) -> bool:
        """Start a runner for each claimed lease; False (none started) if we fenced
        ourselves meanwhile."""
        if self.fenced:
            # Answered after we fenced ourselves: no renewal covers these leases.
            # Connect none; the next renewal that works gives them back.
            self._orphans.update({lease.session_id: lease.epoch for lease in got})
            return False
        for lease in got:
            if lease.session_id in self.runners:  # cannot happen; be loud if it does
                logger.error(
                    "claimed a session we already run", extra={"session": lease.session_id}
                )
                continue
            logger.info("claimed (epoch %d)", lease.epoch, extra={"session": lease.session_id})
            # Rung while a claim pass was under way (a ring finds no runner before
            # this line, see ring()): that intent may be newer than the row the
            # claim brought, so the runner reads the row instead.
            rung_meanwhile = lease.session_id in self._rung_while_claiming
            self.runners[lease.session_id] = SessionRunner(
                self, lease.proof() if rung_meanwhile else lease
            )
        return True

    async def _stop_runners(self, runners: list[SessionRunner]) -> list[SessionRunner]:
        """Cancel these runners and wait (bounded) until each has closed its connection.

        A runner still running at the end keeps its session (and lease) and is
        logged; only the stopped ones are returned.
        """
        for runner in runners:
            runner.hand_over()
        if runners:
            await asyncio.wait({r.task for r in runners}, timeout=self.config.stop_timeout + 2.0)
        for runner in runners:
            if not runner.task.done():
                logger.warning("did not stop in time; keeping it", extra=runner._extra())
            elif runner.stop_unconfirmed:
                logger.warning(
                    "its connection may still be open; its lease is given back later",
                    extra=runner._extra(),
                )
        return [r for r in runners if r.task.done() and not r.stop_unconfirmed]

    async def _poke_changed(self) -> None:
        """The safety net for a lost ring: poke only the runners whose session
        changed since their last step (or has a phone gesture waiting), found in
        two queries, instead of every runner reading its row."""
        rows, gestured = await owner_db.owned_changes(self.owner)
        for session_id, runner in list(self.runners.items()):
            if rows.get(session_id) != runner.seen or session_id in gestured:
                runner.poke("periodic reconcile")

    async def _shed(self, share: int) -> None:
        """Hand over what we hold beyond our share, so a newcomer can take it."""
        count = shed_count(len(self.runners), share)
        if not count:
            return
        chosen = pick_to_shed(await owner_db.held(self.owner), count)
        runners = [self.runners[sid] for sid in chosen if sid in self.runners]
        if not runners:
            return
        logger.info(
            "holding %d sessions, fair share %d: handing %d over",
            len(self.runners),
            share,
            len(runners),
            extra=self._extra(),
        )
        await self._hand_over(runners, "handed over to another supervisor to balance the load")

    async def _hand_over(self, runners: list[SessionRunner], why: str) -> None:
        """Close these sessions' connections, then release them all at once and ring."""
        await self._release_stopped(await self._stop_runners(runners), why)

    async def _release_stopped(self, stopped: list[SessionRunner], why: str) -> None:
        """Release the leases of these stopped runners at once, ring, publish."""
        if not stopped:
            return
        try:
            published = await owner_db.hand_over(self.owner, [r.session_id for r in stopped], why)
        except Exception:
            # Still ours, with no runner: orphans, given back by the next renewal
            # that works (their connections are closed), instead of renewed for ever.
            self._orphans.update({r.session_id: r.lease.epoch for r in stopped})
            raise
        await doorbell.wake_supervisors(why)  # first: the others claim while we publish
        for snapshot, row in published:
            await doorbell.publish(snapshot, row)
