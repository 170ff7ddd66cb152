"""Build the driver the settings name (``WACONNECT_DRIVER``)."""

from __future__ import annotations

from sessions_app import conf
from sessions_app.drivers.base import Driver


def build_driver() -> Driver:
    name = conf.driver_name()
    if name == "simulated" and conf.simulated_service():
        from sessions_app.drivers.simulated_remote import RemoteSimulatedDriver

        return RemoteSimulatedDriver(
            conf.simulated_service(), conf.simulated_keepalive(), conf.send_timeout()
        )
    if name == "simulated":
        from sessions_app.drivers.simulated import (
            SimulatedDriver,
            SimulatedTiming,
            SimulatedWhatsApp,
        )

        # Devices persist in the data directory, as WhatsApp and the device store keep
        # them: a restarted `make run` resumes its sessions without a new QR code.
        timing = SimulatedTiming(**conf.simulated_timing())
        world = SimulatedWhatsApp(timing, state_file=conf.simulated_state_file())
        return SimulatedDriver(world, send_timeout=conf.send_timeout())
    if name == "neonize":
        from sessions_app.drivers.neonize_driver import NeonizeDriver

        workers = conf.worker_config()
        conf.check_gives_up_before_lease_passes("WACONNECT_WORKER_DEADLINE", workers.deadline)
        return NeonizeDriver(workers)
    raise ValueError(f"unknown WACONNECT_DRIVER {name!r}; expected 'neonize' or 'simulated'")
