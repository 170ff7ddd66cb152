"""Work a test keeps going in the background, stopped for sure at the end of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from sessions_app import stopping

#: Seconds a loop may take to end once its block ended.
STOP_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def repeating(
    step: Callable[[], Awaitable[object]], *, pause: float = 0.0, name: str = "repeating"
) -> AsyncIterator[asyncio.Task[None]]:
    """Await ``step()`` again and again, ``pause`` seconds apart, while the block runs.

    At the block's end the loop is stopped and awaited, even where a library
    swallowed the cancellation: Python 3.11's ``asyncio.wait_for`` (redis-py's
    socket writes, so channels-redis's ``group_send``) returns the inner call's
    outcome when that call finished as the cancellation came (gh-86296; so does
    asgiref's ``sync_to_async`` for a call that runs ``async_to_sync`` inside). A
    ``while True`` loop stopped by one ``cancel()`` then went on for ever, and the
    event loop's close waited for it (CI, stop 18: a teardown timed out after 60 s).
    Here the loop checks a halt flag every round and is cancelled again until it
    ends (:func:`sessions_app.stopping.cancel_until_done`).

    Raises, at a normal end of the block, what ``step`` raised: a loop that died
    early is a test failure.
    """
    halt = asyncio.Event()

    async def loop() -> None:
        while not halt.is_set():
            await step()
            await asyncio.sleep(pause)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield task
    finally:
        halt.set()
        stuck = await stopping.cancel_until_done([task], timeout=STOP_TIMEOUT)
        assert not stuck, f"{name} did not stop within {STOP_TIMEOUT}s"
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


class LosesOneCancellation:
    """A call that loses the first cancellation reaching it, as 3.11's ``wait_for``
    does when its inner call finished as the cancellation came; later ones go
    through. It waits until cancelled, then returns 0 (the lost one) or raises.
    ``entered`` is set at every call, ``lost`` counts the lost cancellations."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.lost = 0

    async def __call__(self, *args: object, **kwargs: object) -> int:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1
        return 0
