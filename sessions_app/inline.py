"""Run the supervisor inside Daphne's development server, and stop it cleanly.

Daphne runs an asyncio event loop under Twisted; the supervisor is started on that
loop once the reactor runs and is given up to ``HANDOVER_SECONDS`` to hand its
sessions over when the server stops — whether Twisted shuts down (``--noreload``)
or the autoreloader exits the process (code change, Ctrl-C).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading

from sessions_app import service
from sessions_app.supervisor import Supervisor

logger = logging.getLogger(__name__)

HANDOVER_SECONDS = 5.0


def attach_to_reactor() -> None:
    from twisted.internet import defer, reactor

    holder: dict[str, Supervisor] = {}
    finished = threading.Event()

    def start() -> None:
        try:
            supervisor = service.start_inline()
        except Exception:
            logger.exception("could not start the inline supervisor")
            raise
        holder["supervisor"] = supervisor
        supervisor.task.add_done_callback(lambda _task: finished.set())  # type: ignore[attr-defined]

    def before_shutdown() -> defer.Deferred[None] | None:
        supervisor = holder.get("supervisor")
        if supervisor is None or finished.is_set():
            return None
        supervisor.stop()
        waiting = asyncio.wait_for(asyncio.shield(supervisor.task), HANDOVER_SECONDS)  # type: ignore[attr-defined]
        return defer.Deferred.fromFuture(asyncio.ensure_future(waiting))

    def at_exit() -> None:
        supervisor = holder.get("supervisor")
        if supervisor is not None and not finished.is_set():
            supervisor.stop()
            finished.wait(HANDOVER_SECONDS)

    # callLater, not callWhenRunning: startup triggers fire before the asyncio
    # loop runs, and the supervisor needs the running loop.
    reactor.callLater(0, start)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    atexit.register(at_exit)
