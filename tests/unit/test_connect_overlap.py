"""The fenced write of "connecting" and the connection's opening, side by side.

``LifecycleMixin._connect`` opens the connection while the write is under way when
the supervisor's leases are live by its own clock (``leases_live``); otherwise the
database decides first. A write that finds the lease gone closes what was opened.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer

from sessions_app import doorbell, leases, owner_db
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.supervisor import Supervisor
from tests.unit.helpers import state_is, until
from tests.unit.test_supervisor import FAST, create, running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def world() -> SimulatedWhatsApp:
    return SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=5, pair_delay=0.01))


class HeldConnectingWrites:
    """``owner_db.write`` with the write of "connecting" (the one that records a
    connect) held until ``go`` is set; with ``lost``, it then finds the lease gone."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, lost: bool = False) -> None:
        self.write = owner_db.write
        self.lost = lost
        self.held = asyncio.Event()
        self.go = asyncio.Event()
        monkeypatch.setattr(owner_db, "write", self)

    async def __call__(
        self, lease: leases.Lease, fields: dict[str, Any], event: Any = None, row: Any = None
    ) -> Any:
        if "recent_connects" in fields and not self.go.is_set():
            self.held.set()
            await self.go.wait()
            if self.lost:
                return None
        return await self.write(lease, fields, event, row)


async def test_the_connection_opens_while_connecting_is_written(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write is a database round trip on the way from a create to its first
    code: the connection does not wait for it."""
    writes = HeldConnectingWrites(monkeypatch)
    async with running(world) as sup:
        monkeypatch.setattr(sup, "leases_live", lambda: True)  # however slow the renewals
        session = await create("side by side", "ada")
        await writes.held.wait()
        async with asyncio.timeout(5):
            await world.until_live(session.pk, 1)  # opened, the write still held
        writes.go.set()
        await until(session.pk, state_is("qr_required"))


async def test_a_connection_whose_write_finds_the_lease_gone_is_closed(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = HeldConnectingWrites(monkeypatch, lost=True)
    async with running(world) as sup:
        monkeypatch.setattr(sup, "leases_live", lambda: True)
        session = await create("gone meanwhile", "ada")
        await writes.held.wait()
        runner = sup.runners[session.pk]
        async with asyncio.timeout(5):
            await world.until_live(session.pk, 1)
        writes.go.set()
        async with asyncio.timeout(5):
            await world.until_live(session.pk, 0)
            await asyncio.wait({runner.task})
        assert runner.exit_reason == "lost"


async def test_a_runner_handed_over_mid_write_still_pushes_what_it_wrote(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write and its push are left to end on their own (shielded): a hand-over
    cancelling the runner does not leave "connecting" written and never pushed."""
    writes = HeldConnectingWrites(monkeypatch)
    layer = get_channel_layer()
    async with running(world) as sup:
        monkeypatch.setattr(sup, "leases_live", lambda: True)
        # The lease stays ours with no runner: no claim again, no second write.
        monkeypatch.setattr(sup, "_adopt_strays", lambda held: None)
        session = await create("handed over", "ada")
        channel = await layer.new_channel()
        await layer.group_add(doorbell.session_group(session.pk), channel)
        await writes.held.wait()
        runner = sup.runners[session.pk]
        async with asyncio.timeout(5):
            await world.until_live(session.pk, 1)  # the step now waits for the write
        runner.hand_over()
        async with asyncio.timeout(5):
            await asyncio.wait({runner.task})
        writes.go.set()
        async with asyncio.timeout(5):
            while True:
                message = await layer.receive(channel)
                snapshot = message.get("snapshot") or {}
                if message["type"] == "session.update" and snapshot["state"] == "connecting":
                    break


async def test_a_supervisor_unsure_of_its_leases_writes_before_it_connects(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its self-fence deadline by its own clock (a pause of the whole process,
    a stalled renewal) the database decides first: a lease found gone then opens
    nothing at all."""
    writes = HeldConnectingWrites(monkeypatch, lost=True)
    async with running(world) as sup:
        monkeypatch.setattr(sup, "leases_live", lambda: False)
        session = await create("unsure", "ada")
        await writes.held.wait()
        runner = sup.runners[session.pk]
        writes.go.set()
        async with asyncio.timeout(5):
            await asyncio.wait({runner.task})
        assert runner.exit_reason == "lost"
        assert ("start", session.pk) not in sup.driver.calls


def test_leases_are_live_until_the_self_fence_deadline(world: SimulatedWhatsApp) -> None:
    """Live: not fenced, and less than the TTL minus the margin since the last
    renewal that answered was sent (on the supervisor's monotonic clock)."""
    now = [100.0]
    sup = Supervisor(SimulatedDriver(world), config=FAST, clock=lambda: now[0])
    sup._last_renewal = 100.0
    assert sup.leases_live()
    now[0] = 100.0 + FAST.lease_ttl - FAST.self_fence_margin - 0.001
    assert sup.leases_live()
    now[0] += 0.002
    assert not sup.leases_live()
    now[0] = 100.0
    sup.fenced = True
    assert not sup.leases_live()
