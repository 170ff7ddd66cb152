"""``manage.py simulated_whatsapp``: one simulated WhatsApp for many processes."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app import conf
from sessions_app.drivers.simulated import SimulatedTiming, SimulatedWhatsApp
from sessions_app.drivers.simulated_service import SimulatedWhatsAppService


class Command(BaseCommand):
    help = (
        "Serve a simulated WhatsApp on the loopback interface until SIGTERM/SIGINT. "
        "Point supervisors at it with WACONNECT_DRIVER=simulated and "
        "WACONNECT_SIM_SERVICE=HOST:PORT; like WhatsApp it allows one live connection "
        "per device and records every overlap. Prints 'listening on HOST:PORT' when ready."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Default: 127.0.0.1.")
        parser.add_argument("--port", type=int, default=7480, help="0: any free port.")
        parser.add_argument(
            "--client-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help=(
                "Drop a connection whose client sent nothing (clients ping every "
                "WACONNECT_SIM_KEEPALIVE seconds) for this long, as WhatsApp drops a "
                "client whose keep-alives stop. Must be shorter than WACONNECT_LEASE_TTL "
                "minus WACONNECT_SELF_FENCE_MARGIN, so a frozen supervisor's connections "
                "end before its leases pass. Default: WACONNECT_SIM_CLIENT_TIMEOUT (10)."
            ),
        )
        parser.add_argument(
            "--state-file",
            type=Path,
            default=None,
            metavar="PATH",
            help=(
                "Keep the linked devices in this JSON file (mode 600), so they outlive a "
                "restart of the service as they outlive one of WhatsApp. Default: none "
                "(every start begins with no device linked)."
            ),
        )
        parser.add_argument(
            "--auto-scan",
            type=float,
            default=None,
            metavar="SECONDS",
            help="The phone scans every QR round by itself after SECONDS (load tests).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["host"] not in ("127.0.0.1", "::1", "localhost"):
            raise CommandError("the simulated WhatsApp serves the loopback interface only")
        timing = SimulatedTiming(**conf.simulated_timing())
        if options["auto_scan"] is not None:
            timing = dataclasses.replace(timing, auto_scan=options["auto_scan"])
        client_timeout = check_client_timeout(options["client_timeout"])
        try:
            world = SimulatedWhatsApp(timing, state_file=options["state_file"])
        except ValueError as exc:  # an unreadable device file
            raise CommandError(str(exc)) from None
        service = SimulatedWhatsAppService(world, options["host"], options["port"], client_timeout)
        asyncio.run(self._serve(service))

    async def _serve(self, service: SimulatedWhatsAppService) -> None:
        world, host, port = service.world, service.host, service.port
        try:
            bound_host, bound_port = await service.start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.stdout.write(f"listening on {bound_host}:{bound_port}")
        self.stdout.flush()
        await stop.wait()
        await service.aclose()
        overlaps = len(world.overlaps)
        self.stdout.write(f"stopped; {overlaps} overlap(s) of live connections recorded")


def check_client_timeout(given: float | None) -> float:
    """The client timeout to serve with; refused when it breaks the leases' promise
    (a frozen supervisor's connections end before its leases can pass) or when the
    clients' keep-alive pings could not keep a live connection open."""
    timeout = conf.simulated_client_timeout() if given is None else given
    try:
        conf.check_gives_up_before_lease_passes("--client-timeout", timeout)
    except (ImproperlyConfigured, ValueError) as exc:  # ValueError: bad lease timings
        raise CommandError(str(exc)) from None
    keepalive = conf.simulated_keepalive()
    if keepalive >= timeout:
        raise CommandError(
            f"WACONNECT_SIM_KEEPALIVE ({keepalive:g} s) must be shorter than the client "
            f"timeout ({timeout:g} s), or live clients would be dropped between two pings"
        )
    return timeout
