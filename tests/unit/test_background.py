"""tests.background.repeating: a test's background loop ends with its block."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.background import repeating


async def test_python_311_wait_for_can_swallow_a_cancellation() -> None:
    """The premise (gh-86296, fixed in 3.12): a cancellation that comes as the
    awaited call finishes is lost; ``wait_for`` returns the call's result. redis-py
    writes to Redis through ``wait_for`` when a socket timeout is set (ours is)."""
    done = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(asyncio.wait_for(done, 10))
    await asyncio.sleep(0)  # let the task start waiting
    done.set_result("written")
    waiting.cancel()
    if sys.version_info < (3, 12):
        assert await waiting == "written"
    else:
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_a_loop_whose_step_swallows_a_cancellation_ends_with_the_block() -> None:
    """One ``cancel()`` of a ``while True`` loop left it running for ever (CI, stop 18:
    the ringing loop of test_supervisor_rung_claim outlived its test)."""
    entered = asyncio.Event()
    swallowed = 0

    async def step() -> None:
        nonlocal swallowed
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed += 1  # as wait_for does above

    async with repeating(step) as task:
        await entered.wait()
    assert task.done()
    assert swallowed == 1


async def test_a_step_that_raises_fails_the_block() -> None:
    async def step() -> None:
        raise LookupError("the step broke")

    with pytest.raises(LookupError, match="the step broke"):
        async with repeating(step) as task:
            await asyncio.wait([task])
