"""A stop that ends: bounded shutdown steps, and a process exit nothing can hold up.

A database call runs in a thread and blocks on its socket until the server
answers. Cut off from PostgreSQL (a partition, a frozen server, a proxy that
holds the bytes), that is forever: a shutdown that awaits such a call never goes
on (cancelling the await lets the caller go, the thread itself goes on), and the
interpreter joins every executor thread before it exits. A supervisor asked to
stop would then never stop, and a deploy would wait for its SIGKILL. Two bounds
keep that from happening:

- :func:`steps_within`: the shutdown's steps run in order until a deadline; a
  step still waiting then is left behind (and logged), the later ones skipped.
  For the supervisor the deadline is its lease TTL: by then its leases have
  expired and the others take its sessions anyway.
- :func:`exit_within`: once the work is done, the process exits within a grace
  period even if a thread is still blocked; the blocked threads are logged. The
  whole stop is bounded the same way from the signal on (``WACONNECT_STOP_GRACE``).

And one rule for stopping a session's connection again (:func:`stop_after`): a
new stop only after the last one ended, so that only a stop that finished says
the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[object]]]


async def steps_within(seconds: float, steps: Sequence[Step]) -> bool:
    """Run ``steps`` (``(name, start)`` pairs) one after another for at most
    ``seconds`` in all; True if every step ended.

    A step's exception is logged and the next step runs (each is worth trying on
    its own). A step still running at the deadline keeps running in the
    background, unawaited; the ones after it are not started (a database that
    left one step waiting would leave the next waiting too, and on SQLite it
    would queue behind it in the one database thread) and are named in the
    warning.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for index, (name, start) in enumerate(steps):
        task = asyncio.ensure_future(start())
        await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not task.done():
            skipped = [later for later, _ in steps[index + 1 :]]
            logger.warning(
                "stopping: %s did not end within %.1fs; left behind%s",
                name,
                seconds,
                f", skipped: {', '.join(skipped)}" if skipped else "",
            )
            return False
        if not task.cancelled() and task.exception() is not None:
            logger.warning("stopping: %s failed", name, exc_info=task.exception())
    return True


#: Seconds between cancellations of a task that has not ended yet.
CANCEL_REPEAT = 0.05


async def cancel_until_done(
    tasks: Collection[asyncio.Task[Any]], timeout: float
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks``, and again every :data:`CANCEL_REPEAT` s those still
    running, for at most ``timeout`` s; return the ones still running then.

    A cancellation can be lost in a library: Python 3.11's ``asyncio.wait_for``
    (redis-py's socket writes, so every ring and push) returns the inner call's
    outcome when that call finished as the cancellation came (gh-86296). A
    ``while True`` loop that lost its one ``cancel()`` ran on for ever."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(CANCEL_REPEAT, left))
    for task in tasks:  # read, so none is reported "never retrieved"; callers may look
        if task.done() and not task.cancelled():
            task.exception()
    return pending


def exit_within(grace: float, status: int = 0, since: str = "stopping") -> None:
    """Make sure this process exits within ``grace`` seconds from now (``since``:
    what happened now, for the log line).

    Call it once the process's work is done (its sessions handed over), or when
    told to stop (the stop's overall bound: ``WACONNECT_STOP_GRACE``). A daemon
    thread waits; if the process is still alive then (the interpreter joining a
    thread stuck in a database call), it logs each thread still there with where
    it waits (functions, files and lines: no data) and ends the process with
    ``status`` via ``os._exit``. The watcher is a thread of its own: once armed,
    a stuck event loop does not hold it up (arming it from a signal handler on
    the loop needs the loop to run that handler).
    """

    def watch() -> None:
        threading.Event().wait(grace)
        stuck = [
            f"{thread.name} in {_where(thread)}"
            for thread in threading.enumerate()
            if thread not in (threading.current_thread(), threading.main_thread())
            and not thread.daemon
        ]
        main = threading.main_thread()
        if main.is_alive():  # the event loop's, where a stop that did not end waits
            stuck.append(f"{main.name} in {_where(main)}")
        logger.warning(
            "still running %.1fs after %s (%s); exiting anyway",
            grace,
            since,
            "; ".join(stuck) or "no thread left",
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    threading.Thread(target=watch, name="waconnect-exit-watch", daemon=True).start()


_OURS = str(Path(__file__).resolve().parent.parent)


def _where(thread: threading.Thread) -> str:
    """Where ``thread`` waits: its innermost frame, and the innermost of our code."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "?"
    places = [f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"]
    outer = frame
    while outer is not None:
        name = outer.f_code.co_filename
        if name.startswith(_OURS) and "site-packages" not in name:
            if outer is not frame:
                places.append(f"{outer.f_code.co_name} ({name}:{outer.f_lineno})")
            break
        outer = outer.f_back
    return " called from ".join(places)


def stop_after(
    earlier: asyncio.Future[None] | None, stop: Callable[[], Awaitable[None]]
) -> asyncio.Future[None]:
    """Run ``stop`` (a driver's stop or logout of one session) in a task of its own,
    once ``earlier`` (a stop of the same session still under way since a timeout),
    if any, has ended: its end, not its result, and it is never cancelled (a stop
    cut short may leave the connection open with nothing left to stop it). A
    second stop alone may find nothing left to stop and return at once (neonize's
    forgets the worker before ending it), so only the returned task finishing
    without error says the connection is closed."""

    async def in_order() -> None:
        if earlier is not None and not earlier.done():
            await asyncio.wait({earlier})
        await stop()

    return asyncio.ensure_future(in_order())
