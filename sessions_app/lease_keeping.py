"""Keeping a supervisor's leases: renewal, the self-fence watchdog, orphans given back.

The half of :class:`~sessions_app.supervisor.Supervisor` that keeps what it
claimed: one statement renews all its leases every ``renew_interval`` (in the
lease thread, :func:`sessions_app.dbthread.lease_db`, never behind session
writes) and drops the runners whose lease is gone; a watchdog on the
supervisor's monotonic clock drops every connection before its leases can
expire when renewal stalls (self-fencing); leases still ours whose runner ended
without releasing them are given back at the next renewal that works, those
whose connection may still be open (the driver's stop did not finish) only once
a stop of the session has finished (:meth:`LeaseKeepingMixin._confirm_stop`);
leases ours that nothing here knows of (a claim whose answer was lost) are
stopped, then given back the same way (:meth:`LeaseKeepingMixin._adopt_strays`).

A mixin: its state (``fenced``, ``_last_renewal``, ``_orphans``, ``_unconfirmed``,
``_ending``, ``_strays``, ``_claiming``) is the supervisor's; ``fenced`` and
``_last_renewal`` are read by its claim pass and its health check
(:func:`ops.health.supervisor_readiness`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ops import metrics
from sessions_app import doorbell, owner_db
from sessions_app.conf import SupervisorConfig
from sessions_app.leases import Lease
from sessions_app.stopping import stop_after

if TYPE_CHECKING:
    from sessions_app.drivers.base import Driver
    from sessions_app.runner import SessionRunner

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class UnconfirmedStop:
    """An orphan whose connection may still be open: the driver's stop of it did not
    finish in time. Its lease is given back only once ``confirming`` ended True."""

    #: The latest stop of the session, perhaps still running (it is never cancelled:
    #: a stop cut short may leave the connection open with nothing left to stop it).
    stop: asyncio.Future[None] | None
    #: The stop retried in the background: True once it finished without error.
    confirming: asyncio.Task[bool] | None = None


class LeaseKeepingMixin:
    """The renewal loop, the self-fence watchdog and the release of orphaned leases."""

    owner: str
    config: SupervisorConfig
    clock: Callable[[], float]
    runners: dict[int, SessionRunner]
    #: True from a self-fence until a renewal answered in time: no claims, no runners.
    fenced: bool
    #: When (monotonic clock) the last renewal that answered was sent.
    _last_renewal: float
    #: session id -> epoch of leases perhaps still ours without a runner.
    _orphans: dict[int, int]
    #: The orphans whose connection may still be open, by session id.
    _unconfirmed: dict[int, UnconfirmedStop]
    #: session id -> epoch of leases the last renewal found ours with nothing here
    #: knowing of them (no runner, no orphan); see _adopt_strays.
    _strays: dict[int, int]
    #: Claim passes under way: their leases may be ours before their runners exist.
    _claiming: int
    #: Runners forgotten (no longer in ``runners``) whose task has not ended: one
    #: may still be releasing its lease.
    _ending: dict[int, SessionRunner]
    driver: Driver
    _wake: asyncio.Event

    def _extra(self) -> dict[str, Any]:
        raise NotImplementedError

    def look_for_work(self) -> None:
        raise NotImplementedError

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.renew_interval)
            started = self.clock()
            try:
                held = await owner_db.renew(self.owner, self.config.lease_ttl)
            except Exception:
                logger.warning("lease renewal failed", exc_info=True, extra=self._extra())
                continue
            self._last_renewal = started
            if self.fenced and self._fence_deadline() > self.clock():
                logger.info("lease renewal works again; claiming resumes", extra=self._extra())
                self.fenced = False
            elif self.fenced:
                # Sent before a partition, answered as it healed: it says nothing
                # about our leases now. The next renewal decides.
                logger.info(
                    "a lease renewal took %.1fs; staying fenced",
                    self.clock() - started,
                    extra=self._extra(),
                )
            held_ids = {lease.session_id: lease for lease in held}
            for session_id, runner in list(self.runners.items()):
                if runner.started >= started:
                    # Claimed on the other database thread while this renewal was
                    # under way: the renewal may not have seen it yet.
                    continue
                lease = held_ids.get(session_id)
                if lease is None or lease.epoch != runner.lease.epoch:
                    logger.warning("lease lost; dropping the connection", extra=runner._extra())
                    runner.abandon("lease lost")
            # After the abandons, with no await before them: from the moment
            # _last_renewal moved, leases_live() vouches for every runner left.
            try:
                await owner_db.announce(
                    self.owner, self.config.lease_ttl, self.config.max_sessions, len(held)
                )
            except Exception:
                logger.warning("could not renew our presence", exc_info=True, extra=self._extra())
            self._adopt_strays(held_ids)
            await self._release_orphans(held_ids)

    def _adopt_strays(self, held: dict[int, Lease]) -> None:
        """Make orphans of the leases ours that nothing here knows of: no runner, no
        orphan record. A claim whose rows never came back (the connection cut after
        its commit, the awaiting call cancelled while its thread went on) leaves
        one, as does a release that failed after its runner was forgotten; renewed
        by every renewal, such a lease would keep the session from every other
        supervisor for good, with nobody connecting it.

        Known: the runners, those forgotten whose task has not ended (one may be
        releasing its lease, behind a backlog of writes: :meth:`_track_ending`),
        the orphans. A lease is adopted at its second sighting in a row under the
        same epoch; the first counts only with no claim pass under way (a claim
        has its leases before its runners exist), the second needs no such care
        (no claim takes a lease that is live, and a claim would change the
        epoch). The driver may hold the session after all, so it is stopped
        first, as an orphan whose stop is unconfirmed; the lease is given back at
        the first renewal after that stop finished (:meth:`_release_orphans`).
        """
        known = (
            self.runners.keys()
            | self._ending.keys()
            | self._orphans.keys()
            | self._unconfirmed.keys()
        )
        seen = {sid: lease.epoch for sid, lease in held.items() if sid not in known}
        for sid, epoch in seen.items():
            if self._strays.get(sid) != epoch:
                continue
            logger.warning(
                "our lease (epoch %d) has no runner: a claim's answer was lost?"
                " Stopping the session, then giving the lease back",
                epoch,
                extra={"session": sid, **self._extra()},
            )
            self._orphans[sid] = epoch
            unconfirmed = self._unconfirmed[sid] = UnconfirmedStop(None)
            unconfirmed.confirming = self._stop_again(sid, unconfirmed)
        first = {} if self._claiming else seen
        self._strays = {sid: epoch for sid, epoch in first.items() if sid not in self._orphans}

    def _track_ending(self, runner: SessionRunner) -> None:
        """Count a runner just forgotten as known until its task has ended: it may
        still be releasing its lease (see :meth:`_adopt_strays`)."""
        sid = runner.session_id
        self._ending[sid] = runner

        def ended(_: object) -> None:
            if self._ending.get(sid) is runner:
                del self._ending[sid]

        runner.task.add_done_callback(ended)

    async def _release_orphans(self, held: dict[int, Lease]) -> None:
        """Give back leases still ours whose runner ended without releasing them
        (we self-fenced, or it crashed), so that anyone may claim them.

        Not while the connection may still be open (the runner's driver stop did not
        finish): given back, the session could be claimed and connected by another
        supervisor while our driver still holds it, a double connection. Such an
        orphan stays ours (this renewal renewed it, as the next ones will) until a
        stop of the session has finished without error (:meth:`_confirm_stop`).
        """
        owned = {
            sid: held[sid]
            for sid, epoch in self._orphans.items()
            if sid in held and held[sid].epoch == epoch and sid not in self.runners
        }
        self._orphans = {}  # the rest were not ours any more at this renewal
        for sid in list(self._unconfirmed):
            if sid not in owned:  # not ours any more: nothing left to give back
                confirming = self._unconfirmed.pop(sid).confirming
                if confirming is not None:  # the stop itself goes on (shielded)
                    confirming.cancel()
        orphans = []
        for sid, lease in owned.items():
            if self._stop_confirmed(sid):
                orphans.append(lease)
            else:
                self._orphans[sid] = lease.epoch
        if not orphans:
            return
        try:
            released = await owner_db.release_leases(self.owner, orphans)
        except Exception:
            logger.warning("could not release leases", exc_info=True, extra=self._extra())
            self._orphans.update({lease.session_id: lease.epoch for lease in orphans})
            return
        if released:
            self.look_for_work()
            await doorbell.wake_supervisors("leases given back")

    def _confirm_stop(self, runner: SessionRunner) -> None:
        """Record a runner that ended with its driver stop unconfirmed (an orphan) and
        stop its session again in the background."""
        unconfirmed = UnconfirmedStop(runner.unfinished_stop)
        self._unconfirmed[runner.session_id] = unconfirmed
        unconfirmed.confirming = self._stop_again(runner.session_id, unconfirmed)

    def _stop_confirmed(self, session_id: int) -> bool:
        """Whether this orphan's connection is closed: no stop of it went unconfirmed,
        or one since finished; if the last try failed, try again (in the background)."""
        unconfirmed = self._unconfirmed.get(session_id)
        if unconfirmed is None:
            return True
        confirming = unconfirmed.confirming
        if confirming is not None and not confirming.done():
            return False
        if confirming is not None and not confirming.cancelled() and confirming.result():
            del self._unconfirmed[session_id]
            return True
        unconfirmed.confirming = self._stop_again(session_id, unconfirmed)
        return False

    def _stop_again(self, session_id: int, unconfirmed: UnconfirmedStop) -> asyncio.Task[bool]:
        """Stop the session again, in a task of its own: True once a new stop, started
        after the one still under way (:func:`~sessions_app.stopping.stop_after`),
        finished without error within the stop timeout.

        In a task, not in the renewal: the fence watchdog measures the renewals'
        cadence, and a stop that hangs for its whole timeout (5 s by default) would
        push the next renewal from 5 s to over 10 s after the last, within reach of
        the self-fence deadline (TTL 15 s minus a 2 s margin): one stuck session
        would then make a slow database drop every connection. The renewal only
        looks at the task's result; the lease is given back at the first renewal
        after it ended True.
        """

        async def stop_again() -> bool:
            try:
                async with asyncio.timeout(self.config.stop_timeout):
                    stop = stop_after(unconfirmed.stop, lambda: self.driver.stop(session_id))
                    unconfirmed.stop = stop
                    await asyncio.shield(stop)
            except Exception as exc:
                logger.warning(
                    "driver stop still not finished (%r); keeping the lease",
                    exc,
                    extra={"session": session_id},
                )
                return False
            logger.info(
                "driver stop finished; the lease is given back at the next renewal",
                extra={"session": session_id},
            )
            return True

        return asyncio.get_running_loop().create_task(
            stop_again(), name=f"waconnect-stop-again-{session_id}"
        )

    def leases_live(self) -> bool:
        """Whether every lease we hold is ours still by our own clock (no I/O): not
        fenced, and the self-fence deadline not passed — the bound the watchdog
        drops every connection by. A lease runs a TTL from the statement that
        claimed or last renewed it: the last renewal that answered, or a claim sent
        after it, or (committed after that renewal read the rows) one sent a claim's
        duration before it; the margin (2 s by default) covers that and the
        database's clock."""
        return not self.fenced and self.clock() < self._fence_deadline()

    def _fence_deadline(self) -> float:
        """When, on our monotonic clock, we must have dropped every connection."""
        return self._last_renewal + self.config.lease_ttl - self.config.self_fence_margin

    async def _fence_watchdog(self) -> None:
        """Drop every connection before our leases can expire if renewal stalls."""
        while True:
            remaining = self._fence_deadline() - self.clock()
            if remaining > 0 and not self.fenced:
                await asyncio.sleep(min(remaining, 0.5))
                continue
            if not self.fenced:
                self.fenced = True
                metrics.self_fences.inc()
                logger.error(
                    "could not renew leases for %.1fs; dropping %d connections (self-fencing)",
                    self.config.lease_ttl - self.config.self_fence_margin,
                    len(self.runners),
                    extra=self._extra(),
                )
            # Every tick while fenced: a claim sent before the fence may have been
            # answered since (a partition healing for a moment), and its runner
            # would run without renewals.
            for runner in list(self.runners.values()):
                runner.abandon("self-fenced")
            await asyncio.sleep(0.5)
