"""How a dispatcher learns of new work: rung when an event commits (in this process
directly, from another over the channel layer), the periodic pass when a ring was
lost; and how many lanes it sends at once: never more than ``max_in_flight``.

Each dispatcher here sweeps far less often than the test waits, unless the test is
about the sweep: a delivery that arrives in time arrived because of a ring.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from tests.unit.test_webhooks_dispatch import FAST, emit_many, make_world
from tests.webhooks.receiver import Receiver
from webhooks import ring
from webhooks.conf import webhook_config
from webhooks.dispatcher import Dispatcher
from webhooks.models import Delivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

#: Far past every wait below: only a ring can start an attempt in time.
LONG_SWEEP = 300.0
#: How long a rung delivery may take to arrive (it takes milliseconds).
RUNG_WITHIN = 5.0


@contextlib.asynccontextmanager
async def dispatching(**overrides: Any) -> AsyncIterator[Dispatcher]:
    """A running dispatcher (FAST, with ``overrides``), its first pass done."""
    dispatcher = Dispatcher(config=webhook_config(**{**FAST, **overrides}))
    task = asyncio.create_task(dispatcher.run())
    try:
        await dispatcher.ready.wait()
        yield dispatcher
    finally:
        dispatcher.stop()
        await task


async def test_a_committed_event_rings_the_dispatcher_of_this_process() -> None:
    async with Receiver() as receiver:
        hook, sessions = await make_world(receiver.url, 1)
        receiver.secret = hook.secret
        async with dispatching(sweep_interval=LONG_SWEEP):
            await emit_many(sessions, 1)
            (payload,) = await receiver.wait_accepted(1, timeout=RUNG_WITHIN)
    assert payload["type"] == "session.status"


async def test_a_ring_from_another_process_comes_over_the_channel_layer() -> None:
    """The web tier runs no dispatcher (a redelivery, a test event, an endpoint
    enabled there): its commit rings the supervisors' dispatchers by the layer."""
    async with Receiver() as receiver:
        hook, sessions = await make_world(receiver.url, 1)
        receiver.secret = hook.secret
        async with dispatching(sweep_interval=LONG_SWEEP) as dispatcher:
            ring.unregister(id(dispatcher))  # as if it ran in another process
            await emit_many(sessions, 1)
            (payload,) = await receiver.wait_accepted(1, timeout=RUNG_WITHIN)
    assert payload["type"] == "session.status"


async def test_the_periodic_pass_delivers_an_event_whose_ring_was_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ring, "ring_dispatchers", lambda: None)  # every ring lost
    async with Receiver() as receiver:
        hook, sessions = await make_world(receiver.url, 1)
        receiver.secret = hook.secret
        async with dispatching(sweep_interval=0.2):
            await emit_many(sessions, 1)
            (payload,) = await receiver.wait_accepted(1, timeout=RUNG_WITHIN)
    assert payload["type"] == "session.status"


async def test_lanes_go_in_parallel_but_never_more_than_max_in_flight() -> None:
    """Five lanes due, a bound of two, a receiver that never answers: one pass
    starts two attempts (two lanes at once) and claims nothing more."""
    async with Receiver(script=["stall"] * 5) as receiver:
        _, sessions = await make_world(receiver.url, 5)
        await emit_many(sessions, 1)
        dispatcher = Dispatcher(
            config=webhook_config(**{**FAST, "max_in_flight": 2, "total_timeout": 3.0})
        )
        try:
            await dispatcher.pass_once()
            await receiver.wait_requests(2)
            in_flight = await sync_to_async(Delivery.objects.filter(status="delivering").count)()
            assert len(dispatcher._inflight) == 2 and in_flight == 2
            await dispatcher.pass_once()  # no free slot: claims nothing
            in_flight = await sync_to_async(Delivery.objects.filter(status="delivering").count)()
            assert len(dispatcher._inflight) == 2 and in_flight == 2
            assert len({r["body"] for r in receiver.requests}) == 2  # two lanes' heads
        finally:
            tasks = list(dispatcher._inflight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await dispatcher._connections.aclose()
            dispatcher._executor.shutdown(wait=True)
