"""Drivers: how the supervisor reaches WhatsApp. Only the supervisor imports this."""

from __future__ import annotations

from sessions_app import conf
from sessions_app.drivers.base import Driver


def build_driver() -> Driver:
    """The driver the settings ask for (``WACONNECT_DRIVER``)."""
    name = conf.driver_name()
    if name == "simulated":
        from sessions_app.drivers.simulated import (
            SimulatedDriver,
            SimulatedTiming,
            SimulatedWhatsApp,
        )

        timing = SimulatedTiming(**conf.simulated_timing())
        return SimulatedDriver(SimulatedWhatsApp(timing))
    raise ValueError(f"unknown WACONNECT_DRIVER {name!r}; expected 'simulated'")
