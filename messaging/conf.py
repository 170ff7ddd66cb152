"""The messages layer's settings, read when asked for (never at import time).

``WACONNECT_SEND_INTERVAL`` (seconds between the starts of two sends of one
session; 0: no pacing) and ``WACONNECT_MESSAGE_TTL`` (seconds a queued message
waits for its session by default). The driver's own deadline for one send is
``WACONNECT_SEND_TIMEOUT`` (:func:`sessions_app.conf.send_timeout`); the owner
waits :data:`ANSWER_GRACE` seconds longer for the driver's answer before it
records ``unknown`` itself (a safety net for a driver that never answers).
"""

from __future__ import annotations

import dataclasses

from django.conf import settings

from messaging.states import DEFAULT_MESSAGE_TTL, DEFAULT_SEND_INTERVAL
from sessions_app.conf import send_timeout as driver_send_timeout

#: Seconds past the driver's send deadline the owner still waits for its answer.
ANSWER_GRACE = 10.0


@dataclasses.dataclass(frozen=True)
class MessagingConfig:
    send_interval: float = DEFAULT_SEND_INTERVAL
    message_ttl: float = DEFAULT_MESSAGE_TTL
    answer_timeout: float = 20.0 + ANSWER_GRACE

    def __post_init__(self) -> None:
        if self.send_interval < 0:
            raise ValueError("WACONNECT_SEND_INTERVAL must be 0 (no pacing) or positive")
        if self.message_ttl <= 0:
            raise ValueError("WACONNECT_MESSAGE_TTL must be positive")
        if self.answer_timeout <= 0:
            raise ValueError("the answer timeout must be positive")


def messaging_config(**overrides: float) -> MessagingConfig:
    values = {
        "send_interval": float(getattr(settings, "WACONNECT_SEND_INTERVAL", DEFAULT_SEND_INTERVAL)),
        "message_ttl": float(getattr(settings, "WACONNECT_MESSAGE_TTL", DEFAULT_MESSAGE_TTL)),
        "answer_timeout": driver_send_timeout() + ANSWER_GRACE,
    }
    values.update(overrides)
    return MessagingConfig(**values)
