"""``manage.py simulated_whatsapp`` refuses a client timeout that breaks the leases."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command

from sessions_app import conf
from sessions_app.management.commands.simulated_whatsapp import check_client_timeout

pytestmark = pytest.mark.timeout(10)


def test_the_default_drops_a_silent_client_before_its_leases_can_pass(settings: Any) -> None:
    for name in ("SIM_CLIENT_TIMEOUT", "LEASE_TTL", "SELF_FENCE_MARGIN", "SIM_KEEPALIVE"):
        delattr(settings, f"WACONNECT_{name}")  # the code's own defaults, not settings.py's
    leases = conf.supervisor_config()
    timeout = check_client_timeout(None)
    assert timeout == conf.simulated_client_timeout()
    limit = leases.lease_ttl - leases.renew_interval - leases.self_fence_margin
    assert conf.simulated_keepalive() < timeout <= limit


def test_the_setting_is_the_default(settings: Any) -> None:
    settings.WACONNECT_SIM_CLIENT_TIMEOUT = 7.5
    assert check_client_timeout(None) == 7.5


@pytest.mark.parametrize("timeout", [8.1, 12.9, 15.0, 0.0, -1.0])
def test_a_timeout_that_outlasts_a_lease_frozen_before_renewal_is_refused(
    settings: Any, timeout: float
) -> None:
    """Frozen just before a renewal, a supervisor's leases expire TTL − renew
    interval later: 15 − 5 = 10 s, less the 2 s margin."""
    settings.WACONNECT_LEASE_TTL = 15.0
    settings.WACONNECT_RENEW_INTERVAL = 5.0
    settings.WACONNECT_SELF_FENCE_MARGIN = 2.0
    with pytest.raises(CommandError, match="WACONNECT_RENEW_INTERVAL"):
        check_client_timeout(timeout)
    assert check_client_timeout(8.0) == 8.0


def test_a_keepalive_that_cannot_keep_a_client_is_refused(settings: Any) -> None:
    settings.WACONNECT_SIM_KEEPALIVE = 5.0
    with pytest.raises(CommandError, match="WACONNECT_SIM_KEEPALIVE"):
        check_client_timeout(4.0)


def test_the_command_refuses_before_it_listens(settings: Any) -> None:
    settings.WACONNECT_LEASE_TTL = 15.0
    settings.WACONNECT_SELF_FENCE_MARGIN = 2.0
    with pytest.raises(CommandError, match="--client-timeout"):
        call_command("simulated_whatsapp", "--port", "0", "--client-timeout", "15")
