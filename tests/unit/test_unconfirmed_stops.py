"""A lease is not given back while its connection may still be open.

When the driver's stop (or logout) of a session does not finish in time (a neonize
worker that does not answer), the runner marks it ``stop_unconfirmed``: the
connection may still be open on WhatsApp's side. Released then, the lease lets
another supervisor claim the session and connect the device a second time. These
tests hang the driver's stop of one session and watch every lease given back: none
while that session's connection is open, and the lease once a stop of it has
finished; nor does the runner open a new connection or delete the row meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from sessions_app import owner_db
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedWhatsApp
from sessions_app.leases import Lease
from sessions_app.models import WaSession
from sessions_app.supervisor import Supervisor
from tests.unit.helpers import state_is, until
from tests.unit.test_stopping import StuckStopDriver, crash_with_its_stop_stuck
from tests.unit.test_supervisor import (
    FAST,
    create,
    delete,
    get,
    logout,
    new_qr,
    paired,
    running_driver,
    stop,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


class ForgettingStopDriver(StuckStopDriver):
    """neonize's shape (``NeonizeDriver.stop`` pops the worker, then ends it): the
    stop forgets the connection at once and hangs closing it, so a second stop finds
    nothing to stop and returns at once, connection still open."""

    async def stop(self, session_id: int) -> None:
        if self.stuck is None or session_id in self.stuck:
            conn = self._open.pop(session_id, None)
            self._pending.pop(session_id, None)
            self._sinks.pop(session_id, None)
            if conn is not None:
                await self.unstick.wait()
                await self.world.close(conn)
            return
        await SimulatedDriver.stop(self, session_id)


class GivenBack:
    """Every lease given back (by a runner or by the renewal), with the number of
    live connections its session had at that moment; ``released`` is set once a
    call that gave back ``watched``'s lease has returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, world: SimulatedWhatsApp, watched: int):
        self.world = world
        self.watched = watched
        self.leases: list[tuple[int, int]] = []  # (session id, its live connections)
        self.released = asyncio.Event()
        release, release_leases = owner_db.release, owner_db.release_leases

        async def recorded_release(lease: Lease, fields: dict[str, Any], event: Any = None) -> Any:
            self._record([lease.session_id])
            try:
                return await release(lease, fields, event)
            finally:
                self._done([lease.session_id])

        async def recorded_release_leases(owner: str, held: Collection[Lease]) -> int:
            self._record([lease.session_id for lease in held])
            try:
                return await release_leases(owner, held)
            finally:
                self._done([lease.session_id for lease in held])

        monkeypatch.setattr(owner_db, "release", recorded_release)
        monkeypatch.setattr(owner_db, "release_leases", recorded_release_leases)

    def _record(self, session_ids: list[int]) -> None:
        self.leases += [(sid, self.world.live[sid]) for sid in session_ids]

    def _done(self, session_ids: list[int]) -> None:
        if self.watched in session_ids:
            self.released.set()

    def of_watched(self) -> list[int]:
        """The watched session's live connections at each time its lease was given back."""
        return [live for sid, live in self.leases if sid == self.watched]


async def renewals(monkeypatch: pytest.MonkeyPatch, supervisor: Supervisor, count: int) -> None:
    """Wait until ``count`` more renewals have answered (and looked at the orphans)."""
    seen = 0
    enough = asyncio.Event()
    release_orphans = supervisor._release_orphans

    async def counted(held: dict[int, Lease]) -> None:
        nonlocal seen
        await release_orphans(held)
        seen += 1
        if seen >= count:
            enough.set()

    monkeypatch.setattr(supervisor, "_release_orphans", counted)
    try:
        async with asyncio.timeout(count * FAST.renew_interval + 10):
            await enough.wait()
    finally:
        monkeypatch.setattr(supervisor, "_release_orphans", release_orphans)


@sync_to_async
def lease_of(session_id: int) -> tuple[str, int]:
    return WaSession.objects.values_list("lease_owner", "lease_epoch").get(pk=session_id)


@sync_to_async
def state_of(session_id: int) -> str:
    return WaSession.objects.values_list("state", flat=True).get(pk=session_id)


@pytest.mark.parametrize(
    "driver_class", [StuckStopDriver, ForgettingStopDriver], ids=["every-stop-hangs", "forgets"]
)
async def test_the_renewal_keeps_an_orphan_whose_stop_is_unconfirmed_until_a_stop_finished(
    monkeypatch: pytest.MonkeyPatch, driver_class: type[StuckStopDriver]
) -> None:
    """A runner that crashed while its driver stop hung leaves an orphan whose
    connection is still open: renewal after renewal keeps its lease (ours, same
    epoch) while the stop is retried in the background, and neither the hanging
    retry nor the wait delays the renewals (FAST: 2 s stop timeout, self-fence 2 s
    after the last renewal; the other session stays connected, nobody fences).
    Once the driver's stop finishes, the next renewal gives the lease back.
    Before: the first renewal after the crash gave it back, connection open.
    "forgets": a stop asked again returns at once; the lease waits for the first."""
    world = SimulatedWhatsApp()
    driver = driver_class(world, stuck=set())
    try:
        async with running_driver(driver) as supervisor:
            orphan = await paired("orphan", supervisor)
            other = await paired("other", supervisor)
            given_back = GivenBack(monkeypatch, world, orphan.pk)
            driver.stuck.add(orphan.pk)
            await crash_with_its_stop_stuck(monkeypatch, supervisor, orphan.pk)
            assert world.live[orphan.pk] == 1, "the orphan's connection is still open"

            # More than a whole stop timeout: one retry has hung to its end.
            await renewals(monkeypatch, supervisor, 6)
            assert given_back.of_watched() == [], "given back while its connection was open"
            assert await lease_of(orphan.pk) == (supervisor.owner, orphan.lease_epoch)
            assert supervisor._orphans.get(orphan.pk) == orphan.lease_epoch
            assert world.live[orphan.pk] == 1
            assert not supervisor.fenced
            assert other.pk in supervisor.runners and world.live[other.pk] == 1

            driver.unstick.set()
            async with asyncio.timeout(10):
                await given_back.released.wait()
            assert given_back.of_watched() == [0], "given back once its connection closed"
            assert orphan.pk not in supervisor._unconfirmed
            assert world.max_live[orphan.pk] == 1
    finally:
        driver.unstick.set()


@pytest.mark.parametrize(
    ("intent", "state"), [(stop, "stopped"), (logout, "logged_out")], ids=["stop", "logout"]
)
async def test_a_stop_or_logout_that_did_not_finish_keeps_the_lease_until_the_connection_closed(
    monkeypatch: pytest.MonkeyPatch, intent: Any, state: str
) -> None:
    """The admin stops a session, or logs it out, and the driver's stop hangs (a
    logout as neonize's does: it asks the worker, then stops it): the row says
    "stopped" or "logged_out", but the runner does not release the lease (the
    policy's release after the close): it ends as "stop unconfirmed", an orphan;
    the lease stays ours (same epoch) through the renewals, and is given back once
    the driver's stop finished, the connection closed. Before: the runner released
    it at once, connection open."""
    world = SimulatedWhatsApp()
    driver = StuckStopDriver(world, stuck=set())
    try:
        async with running_driver(driver) as supervisor:
            session = await paired(f"{state}-stuck", supervisor)
            given_back = GivenBack(monkeypatch, world, session.pk)
            driver.stuck.add(session.pk)
            runner = supervisor.runners[session.pk]
            await intent(session, "ada")
            async with asyncio.timeout(FAST.stop_timeout + 10):
                await asyncio.wait({runner.task})
            assert given_back.of_watched() == [], "given back while its connection was open"
            assert await lease_of(session.pk) == (supervisor.owner, session.lease_epoch)
            assert await state_of(session.pk) == state
            assert runner.exit_reason == "stop unconfirmed" and runner.stop_unconfirmed
            assert supervisor._orphans == {session.pk: session.lease_epoch}
            assert world.live[session.pk] == 1

            await renewals(monkeypatch, supervisor, 3)
            assert given_back.of_watched() == []
            assert await lease_of(session.pk) == (supervisor.owner, session.lease_epoch)

            driver.unstick.set()
            async with asyncio.timeout(10):
                await given_back.released.wait()
            assert given_back.of_watched() == [0], "given back once its connection closed"
            assert await lease_of(session.pk) == ("", session.lease_epoch)
            assert await state_of(session.pk) == state
    finally:
        driver.unstick.set()


async def test_no_new_connection_while_the_last_ones_stop_is_unconfirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new QR code asked for during a round whose driver stop hangs (neonize's
    shape: the stop forgets the worker at once, so a start finds the way clear):
    the runner waits for that stop, bounded, does not connect, and ends as an
    orphan keeping the lease; once the stop finished, the lease is given back and
    the next owner starts the round asked for. One connection at a time
    throughout. Before: the new round connected at once, next to the old one."""
    world = SimulatedWhatsApp()
    driver = ForgettingStopDriver(world, stuck=set())
    try:
        async with running_driver(driver) as supervisor:
            session = await create("new-round", "ada")
            first = await until(session.pk, state_is("qr_required"))
            given_back = GivenBack(monkeypatch, world, session.pk)
            driver.stuck.add(session.pk)
            runner = supervisor.runners[session.pk]
            await new_qr(await get(pk=session.pk), "ada")
            # Bounded, not a sleep: it ends with the runner (two stop timeouts).
            await asyncio.wait({runner.task}, timeout=2 * FAST.stop_timeout + 5)
            assert world.connects[session.pk] == 1, "connected before the stop finished"
            assert world.overlaps == [] and world.max_live[session.pk] == 1
            assert runner.task.done() and runner.exit_reason == "stop unconfirmed"
            assert given_back.of_watched() == []
            assert (await lease_of(session.pk))[0] == supervisor.owner
            assert (await get(pk=session.pk)).qr_code == "", "the old round's code stays up"

            driver.stuck.discard(session.pk)
            driver.unstick.set()
            await until(session.pk, lambda snap: snap["qr_code"] not in ("", first["qr_code"]), 10)
            assert given_back.of_watched() == [0]
            assert world.connects[session.pk] == 2, "the round asked for, by the next owner"
            assert world.overlaps == [] and world.max_live[session.pk] == 1
    finally:
        driver.unstick.set()


async def test_a_delete_waits_until_the_connection_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin deletes a session whose driver stop hangs: the row is not deleted
    while the connection may be open (deleted, nobody would ever stop it again).
    The runner ends as an orphan keeping the lease; once the stop finished, the
    lease is given back and the next owner deletes the row, connection closed.
    Before: the row was deleted at once and the connection stayed open."""
    world = SimulatedWhatsApp()
    driver = StuckStopDriver(world, stuck=set())
    deleted_with: list[int] = []  # the session's live connections at each delete
    real_delete = owner_db.delete

    async def recorded_delete(lease: Lease) -> bool:
        deleted_with.append(world.live[lease.session_id])
        return await real_delete(lease)

    monkeypatch.setattr(owner_db, "delete", recorded_delete)
    try:
        async with running_driver(driver) as supervisor:
            session = await paired("deleting", supervisor)
            driver.stuck.add(session.pk)
            runner = supervisor.runners[session.pk]
            await delete(session, "ada")
            async with asyncio.timeout(2 * FAST.stop_timeout + 10):
                await asyncio.wait({runner.task})
            assert deleted_with == [], "deleted while its connection was open"
            assert runner.exit_reason == "stop unconfirmed"
            assert await lease_of(session.pk) == (supervisor.owner, session.lease_epoch)
            assert world.live[session.pk] == 1

            driver.unstick.set()
            await until(session.pk, lambda snap: snap is None, timeout=10)
            assert deleted_with == [0], "deleted once its connection closed"
            assert world.live[session.pk] == 0 and session.jid not in world.devices
    finally:
        driver.unstick.set()
