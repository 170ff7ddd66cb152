"""The doorbell rung from synchronous code."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from sessions_app import doorbell

pytestmark = pytest.mark.timeout(30)


async def test_a_thread_working_for_the_loop_rings_without_waiting_for_it() -> None:
    """A request's thread hands the ring to its loop and goes on: the answer is not held
    until the loop gets round to it (here the loop is blocked until the thread has
    returned from the ring; a ring that waited for the loop never would)."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(doorbell.SUPERVISORS_GROUP, channel)
    returned = threading.Event()

    def request_thread() -> None:
        doorbell.ring_supervisors_sync(7, "created")
        returned.set()

    call = asyncio.ensure_future(sync_to_async(request_thread)())
    await asyncio.sleep(0)  # the call is handed to its thread
    assert returned.wait(timeout=5), "the ring waited for the (blocked) event loop"
    await call

    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert message == {"type": "intent.changed", "session": 7, "reason": "created"}


def test_without_a_loop_the_ring_is_sent_before_returning() -> None:
    """A management command or a plain test: no loop to hand it to."""
    layer = get_channel_layer()

    async def listen() -> str:
        channel = await layer.new_channel()
        await layer.group_add(doorbell.SUPERVISORS_GROUP, channel)
        return channel

    loop = asyncio.new_event_loop()
    try:
        channel = loop.run_until_complete(listen())
        doorbell.ring_supervisors_sync(8, "stop")
        message = loop.run_until_complete(asyncio.wait_for(layer.receive(channel), 5))
    finally:
        loop.close()
    assert message["session"] == 8
