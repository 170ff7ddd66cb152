"""The channel layer on the machine's Redis, as the doorbell and the pages use it."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(30)]

#: Longer than channels-redis' 5 s blocking pop and redis-py 8's default 5 s socket
#: timeout, which together failed every idle receive (redis-py #4091).
IDLE = 7.0


async def test_an_idle_receive_keeps_waiting(redis_layer: None) -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    receive = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(IDLE)  # idleness is what is under test
    assert not receive.done(), f"an idle receive ended: {receive.exception()!r}"
    await layer.send(channel, {"type": "wake.up"})
    async with asyncio.timeout(5):
        assert (await receive)["type"] == "wake.up"
