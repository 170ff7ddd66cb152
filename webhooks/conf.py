"""Webhook settings, read when asked for (never at import time), all ``WACONNECT_WEBHOOKS_*``.

Durations are in seconds. See docs/webhooks.md for what each one changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings

#: Seconds to wait before each attempt: the first at once, then 5 s, 5 min, 30 min,
#: 2 h, 5 h, 10 h, 10 h (Svix's schedule, the one Standard Webhooks' authors use).
DEFAULT_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def _get(name: str, default: Any) -> Any:
    return getattr(settings, f"WACONNECT_WEBHOOKS_{name}", default)


@dataclasses.dataclass(frozen=True)
class WebhookConfig:
    """How deliveries are made and retried."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    allow_private: bool = False  # loopback/private/link-local receivers (tests, dev)
    connect_timeout: float = 5.0
    total_timeout: float = 15.0  # connect + send + the bounded read
    response_limit: int = 4096  # bytes of a receiver's answer read (and kept: 1000 chars)
    max_in_flight: int = 64  # lanes delivered at once by one dispatcher
    claim_ttl: float = 60.0  # a claim older than this is anyone's again (must exceed total)
    claim_batch: int = 200
    sweep_interval: float = 10.0  # the periodic pass (the safety net for a lost ring)
    disable_after: float = 5 * 24 * 3600.0  # an endpoint failing only, this long: disabled
    rotation_overlap: float = 24 * 3600.0  # both secrets sign this long after a rotation

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("WACONNECT_WEBHOOKS_SCHEDULE needs at least one attempt")
        if any(delay < 0 for delay in self.schedule):
            raise ValueError("WACONNECT_WEBHOOKS_SCHEDULE: delays cannot be negative")
        if self.claim_ttl <= self.total_timeout:
            raise ValueError(
                "WACONNECT_WEBHOOKS_CLAIM_TTL must exceed WACONNECT_WEBHOOKS_TOTAL_TIMEOUT"
            )
        if self.max_in_flight < 1:
            raise ValueError("WACONNECT_WEBHOOKS_MAX_IN_FLIGHT must be at least 1")


def webhook_config(**overrides: Any) -> WebhookConfig:
    values = {
        field.name: _get(field.name.upper(), field.default)
        for field in dataclasses.fields(WebhookConfig)
    }
    values.update(overrides)
    values["schedule"] = tuple(float(d) for d in values["schedule"])
    return WebhookConfig(**values)
