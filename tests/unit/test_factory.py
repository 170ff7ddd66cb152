"""The driver the settings name, and the settings that would break the leases."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from sessions_app.drivers.factory import build_driver
from sessions_app.drivers.neonize_driver import NeonizeDriver
from sessions_app.drivers.simulated import SimulatedDriver
from sessions_app.drivers.simulated_remote import RemoteSimulatedDriver


def test_simulated_in_process_or_through_the_service(settings: Any) -> None:
    settings.WACONNECT_DRIVER = "simulated"
    settings.WACONNECT_SIM_SERVICE = ""
    assert isinstance(build_driver(), SimulatedDriver)
    settings.WACONNECT_SIM_SERVICE = "127.0.0.1:7480"
    settings.WACONNECT_SIM_KEEPALIVE = 1.5
    driver = build_driver()
    assert isinstance(driver, RemoteSimulatedDriver)
    assert (driver.port, driver.keepalive) == (7480, 1.5)


def test_a_worker_must_give_up_on_its_supervisor_before_the_lease_passes(settings: Any) -> None:
    settings.WACONNECT_DRIVER = "neonize"
    settings.WACONNECT_LEASE_TTL = 15
    settings.WACONNECT_RENEW_INTERVAL = 5
    settings.WACONNECT_SELF_FENCE_MARGIN = 2
    settings.WACONNECT_WORKER_DEADLINE = 8  # frozen before a renewal: 15 − 5 − 2
    assert isinstance(build_driver(), NeonizeDriver)
    settings.WACONNECT_WORKER_DEADLINE = 10
    with pytest.raises(ImproperlyConfigured, match="WACONNECT_WORKER_DEADLINE"):
        build_driver()


def test_an_unknown_driver_is_named(settings: Any) -> None:
    settings.WACONNECT_DRIVER = "carrier-pigeon"
    with pytest.raises(ValueError, match="carrier-pigeon"):
        build_driver()


def test_the_worker_deadline_must_be_positive(settings: Any) -> None:
    settings.WACONNECT_DRIVER = "neonize"
    settings.WACONNECT_WORKER_DEADLINE = 0
    with pytest.raises(ImproperlyConfigured, match="WACONNECT_WORKER_DEADLINE"):
        build_driver()


def test_every_driver_takes_the_send_timeout_and_the_simulated_messaging_settings(
    settings: Any, tmp_path: Any
) -> None:
    settings.WACONNECT_SEND_TIMEOUT = 7.5
    settings.DATA_DIR = tmp_path
    settings.WACONNECT_DRIVER = "simulated"
    settings.WACONNECT_SIM_SERVICE = ""
    settings.WACONNECT_SIMULATED_TIMING = {"read_delay": -1.0, "peers": ("4917612345678",)}
    in_process = build_driver()
    assert isinstance(in_process, SimulatedDriver) and in_process.send_timeout == 7.5
    assert in_process.world.timing.read_delay == -1.0
    assert in_process.world.messages.peers == {"4917612345678"}
    settings.WACONNECT_SIM_SERVICE = "127.0.0.1:7480"
    remote = build_driver()
    assert isinstance(remote, RemoteSimulatedDriver) and remote.send_timeout == 7.5
    settings.WACONNECT_DRIVER = "neonize"
    neonize = build_driver()
    assert isinstance(neonize, NeonizeDriver) and neonize.config.send_timeout == 7.5
