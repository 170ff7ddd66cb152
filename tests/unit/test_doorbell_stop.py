"""A supervisor (and a webhook dispatcher) stops promptly even when its doorbell's
channel cannot leave the group.

CI's PostgreSQL pass once hung a test's teardown past its timeout: on stop, the
doorbell's ``group_discard`` (channels-redis, after the receive it was waiting in
was cancelled) waited out Redis's 30 s socket timeout; the supervisor logged
"task waconnect-doorbell did not stop in time" and the event loop could not close.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from channels.layers import InMemoryChannelLayer

from sessions_app.drivers.simulated import SimulatedDriver, SimulatedWhatsApp
from sessions_app.supervisor import Supervisor
from tests.unit.test_supervisor import FAST
from webhooks.dispatcher import Dispatcher

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


class SilentDiscardLayer(InMemoryChannelLayer):
    """A layer whose ``group_discard`` never answers (a stuck Redis connection)."""

    async def group_discard(self, group: str, channel: str) -> None:
        await asyncio.Event().wait()


async def test_a_discard_that_never_answers_does_not_hold_up_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sessions_app.supervisor")
    supervisor = Supervisor(
        SimulatedDriver(SimulatedWhatsApp()), config=FAST, layer=SilentDiscardLayer()
    )
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    supervisor.stop()
    await task
    stuck = [r.getMessage() for r in caplog.records if "did not stop in time" in r.getMessage()]
    assert stuck == []
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name() == "waconnect-doorbell")


async def test_a_webhook_dispatcher_stops_too() -> None:
    dispatcher = Dispatcher(layer=SilentDiscardLayer())
    task = asyncio.create_task(dispatcher.run())
    await dispatcher.ready.wait()
    dispatcher.stop()
    async with asyncio.timeout(10):  # without the bound: never
        await task


class SlowDiscardLayer(InMemoryChannelLayer):
    """A layer whose ``group_discard`` takes 0.2 s (a busy Redis) and says when done."""

    def __init__(self) -> None:
        super().__init__()
        self.left = asyncio.Event()

    async def group_discard(self, group: str, channel: str) -> None:
        await asyncio.sleep(0.2)  # the layer's own latency, not a wait for an outcome
        await super().group_discard(group, channel)
        self.left.set()


@pytest.mark.parametrize("who", ["supervisor", "webhook dispatcher"])
async def test_a_slow_leave_is_not_cut_short_by_the_stop(who: str) -> None:
    """A stop cancels its side tasks again until they end; the doorbell's leave in
    their ``finally`` was cancelled with them, and the channel stayed in its group
    (every ring written to it until the group expiry, a day)."""
    layer = SlowDiscardLayer()
    if who == "supervisor":
        runs: Supervisor | Dispatcher = Supervisor(
            SimulatedDriver(SimulatedWhatsApp()), config=FAST, layer=layer
        )
    else:
        runs = Dispatcher(layer=layer)
    task = asyncio.create_task(runs.run())
    await runs.ready.wait()
    runs.stop()
    await task
    async with asyncio.timeout(5):
        await layer.left.wait()
    assert not any(layer.groups.values()), "the channel left its group"
