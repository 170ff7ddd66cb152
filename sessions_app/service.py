"""Starting the supervisor: alone (``run_supervisor``) or inside ``runserver``.

Both build the same :class:`~sessions_app.supervisor.Supervisor` with the driver
the settings name, with the webhook dispatcher beside it; only who owns the event
loop and the signals differs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from ops import metrics
from ops.instrument import instrument
from sessions_app import conf
from sessions_app.drivers.factory import build_driver
from sessions_app.supervisor import Supervisor
from webhooks.dispatcher import Dispatcher, run_beside

logger = logging.getLogger(__name__)


def build_supervisor(*, max_sessions: int | None = None, poll_only: bool = False) -> Supervisor:
    overrides = {"max_sessions": max_sessions} if max_sessions else {}
    return metrics.track(
        Supervisor(
            instrument(build_driver()),
            config=conf.supervisor_config(**overrides),
            poll_only=poll_only,
        )
    )


async def serve(
    *,
    max_sessions: int | None = None,
    poll_only: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    on_first_signal: Callable[[], None] | None = None,
) -> None:
    """Run a supervisor until SIGTERM or SIGINT, then hand its sessions over.

    ``on_first_signal`` is called at the first of those signals (``run_supervisor``
    bounds its process's whole stop there). With ``metrics_port``, serve its
    ``/metrics``, ``/healthz`` and ``/readyz`` there while it runs.
    """
    supervisor = build_supervisor(max_sessions=max_sessions, poll_only=poll_only)
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        signalled = False

        def on_signal() -> None:
            nonlocal signalled
            if not signalled and on_first_signal is not None:
                on_first_signal()
            signalled = True
            supervisor.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
    server = None
    if metrics_port is not None:
        from ops.server import serve_supervisor

        server = serve_supervisor(supervisor, metrics_host, metrics_port)
    try:
        # The webhook dispatcher runs beside the supervisor, as a named side task.
        await run_beside(supervisor.run(), Dispatcher(), supervisor.stop)
    finally:
        if server is not None:
            server.close()


#: Tasks of the supervisors started in this process by :func:`start_inline`, while they run.
_inline_tasks: set[asyncio.Task[None]] = set()


def start_inline() -> Supervisor:
    """Start a supervisor as a task on the running loop (the web server's).

    Returns it so the caller can ``stop()`` it and await ``finished`` on shutdown.
    """
    supervisor = build_supervisor()
    work = run_beside(supervisor.run(), Dispatcher(), supervisor.stop)  # webhooks beside it
    task = asyncio.get_running_loop().create_task(work, name="waconnect-supervisor")
    supervisor.task = task  # type: ignore[attr-defined]
    _inline_tasks.add(task)
    task.add_done_callback(_inline_tasks.discard)
    logger.info("supervisor running inside the web process (%s)", supervisor.owner)
    return supervisor


def inline_running() -> bool:
    """Whether a supervisor started by :func:`start_inline` runs in this process now
    (then it shares the web tier's event loop and GIL)."""
    return bool(_inline_tasks)
