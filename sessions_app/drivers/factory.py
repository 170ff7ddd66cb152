"""Build the driver the settings name (``WACONNECT_DRIVER``)."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from sessions_app import conf
from sessions_app.drivers.base import Driver


def build_driver() -> Driver:
    name = conf.driver_name()
    if name == "simulated" and conf.simulated_service():
        from sessions_app.drivers.simulated_remote import RemoteSimulatedDriver

        return RemoteSimulatedDriver(conf.simulated_service(), conf.simulated_keepalive())
    if name == "simulated":
        from sessions_app.drivers.simulated import (
            SimulatedDriver,
            SimulatedTiming,
            SimulatedWhatsApp,
        )

        return SimulatedDriver(SimulatedWhatsApp(SimulatedTiming(**conf.simulated_timing())))
    if name == "neonize":
        from sessions_app.drivers.neonize_driver import NeonizeDriver

        workers = conf.worker_config()
        leases = conf.supervisor_config()
        if workers.deadline >= leases.lease_ttl - leases.self_fence_margin:
            # A worker must give up on a frozen supervisor before its lease can pass.
            raise ImproperlyConfigured(
                "WACONNECT_WORKER_DEADLINE must be shorter than WACONNECT_LEASE_TTL minus "
                "WACONNECT_SELF_FENCE_MARGIN, or a frozen supervisor's workers could stay "
                "connected after another supervisor took their sessions"
            )
        return NeonizeDriver(workers)
    raise ValueError(f"unknown WACONNECT_DRIVER {name!r}; expected 'neonize' or 'simulated'")
