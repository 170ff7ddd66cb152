"""``manage.py run_supervisor``: the connection supervisor as its own process."""

from __future__ import annotations

import asyncio
import faulthandler
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ops.heap import freeze_startup_heap, observe_pauses
from sessions_app import conf
from sessions_app.service import serve
from sessions_app.stopping import exit_within

#: Seconds the process may take to exit once the supervisor stopped.
EXIT_GRACE = 5.0


class Command(BaseCommand):
    help = (
        "Run the WhatsApp connection supervisor until SIGTERM/SIGINT. Any number may "
        "run at once: leases in the database give each session exactly one owner."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-sessions",
            type=int,
            default=None,
            help="Own at most this many sessions (default: WACONNECT_MAX_SESSIONS).",
        )

        parser.add_argument(
            "--poll-only",
            action="store_true",
            help=(
                "Do not listen to the doorbell: find work only on the periodic reconcile "
                "(WACONNECT_RECONCILE_INTERVAL). The design waconnect replaces; for "
                "comparison benchmarks."
            ),
        )

        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help=(
                "Serve this process's Prometheus /metrics, /healthz and /readyz on this "
                "port (off by default; 0 picks a free port)."
            ),
        )
        parser.add_argument(
            "--metrics-host",
            default="127.0.0.1",
            help="Address the metrics port binds to (default 127.0.0.1; 0.0.0.0 for all).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck
        # supervisor is waiting on, without stopping it.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        freeze_startup_heap("supervisor")  # full collections skip start-up's objects
        observe_pauses()
        asyncio.run(self.serve_then_exit(options))

    async def serve_then_exit(self, options: dict[str, Any]) -> None:
        """Serve until stopped; then the process exits within :data:`EXIT_GRACE`
        seconds, even with a thread stuck in a call to a database that does not
        answer (the sessions are handed over, or their leases expire); with status
        1 if serving failed, as the traceback's exit would have. And it has exited
        ``WACONNECT_STOP_GRACE`` seconds after the first SIGTERM/SIGINT, with
        status 0, however far the stop got."""
        served = False
        grace = conf.stop_grace()  # refused at start if not positive

        def bound_the_stop() -> None:
            # The whole stop, from the signal on: under the orchestrator's grace
            # period (its SIGKILL is no safer than this exit).
            exit_within(grace, status=0, since="the signal to stop")

        try:
            await serve(
                max_sessions=options["max_sessions"],
                poll_only=options["poll_only"],
                metrics_port=options["metrics_port"],
                metrics_host=options["metrics_host"],
                on_first_signal=bound_the_stop,
            )
            served = True
        finally:
            exit_within(EXIT_GRACE, status=0 if served else 1)
