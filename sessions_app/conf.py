"""waconnect's own settings, read when asked for (never at import time).

Every setting is prefixed ``WACONNECT_`` and has a default here, so a bare
``settings.py`` runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings


def _get(name: str, default: Any) -> Any:
    return getattr(settings, f"WACONNECT_{name}", default)


def driver_name() -> str:
    """``simulated`` or ``neonize``."""
    return str(_get("DRIVER", "simulated"))


def is_simulated() -> bool:
    return driver_name() == "simulated"


def inline_supervisor() -> bool:
    """Whether ``runserver`` runs the supervisor inside the web process."""
    return bool(_get("INLINE_SUPERVISOR", True))


@dataclasses.dataclass(frozen=True)
class SupervisorConfig:
    """Lease and loop timings, in seconds; see docs/architecture.md for why."""

    lease_ttl: float = 15.0
    renew_interval: float = 5.0
    self_fence_margin: float = 2.0
    reconcile_interval: float = 10.0
    max_sessions: int = 1000
    claim_batch: int = 50
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    stop_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.lease_ttl - self.self_fence_margin:
            raise ValueError(
                "WACONNECT_RENEW_INTERVAL must be positive and shorter than "
                "WACONNECT_LEASE_TTL minus WACONNECT_SELF_FENCE_MARGIN"
            )


def supervisor_config(**overrides: Any) -> SupervisorConfig:
    values = {
        field.name: _get(field.name.upper(), field.default)
        for field in dataclasses.fields(SupervisorConfig)
    }
    values.update(overrides)
    return SupervisorConfig(**values)


def simulated_timing() -> dict[str, float]:
    """Overrides for :class:`~sessions_app.drivers.simulated.SimulatedTiming`."""
    return dict(_get("SIMULATED_TIMING", {}))
