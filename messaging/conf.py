"""The messages layer's settings, read when asked for (never at import time).

``WACONNECT_SEND_INTERVAL`` (seconds between the starts of two sends of one
session; 0: no pacing), ``WACONNECT_MESSAGE_TTL`` (seconds a queued message waits
for its session by default) and ``WACONNECT_SEND_TIMEOUT`` (seconds the owner
waits for the driver's answer to one send before it records ``unknown``).
"""

from __future__ import annotations

import dataclasses

from django.conf import settings

from messaging.states import DEFAULT_MESSAGE_TTL, DEFAULT_SEND_INTERVAL

#: Longer than the neonize worker's own send deadline, so the worker's answer
#: (sent, refused, or unknown with its reason) normally comes first; this is the
#: owner's safety net for a driver that never answers.
DEFAULT_SEND_TIMEOUT = 90.0


@dataclasses.dataclass(frozen=True)
class MessagingConfig:
    send_interval: float = DEFAULT_SEND_INTERVAL
    message_ttl: float = DEFAULT_MESSAGE_TTL
    send_timeout: float = DEFAULT_SEND_TIMEOUT

    def __post_init__(self) -> None:
        if self.send_interval < 0:
            raise ValueError("WACONNECT_SEND_INTERVAL must be 0 (no pacing) or positive")
        if self.message_ttl <= 0:
            raise ValueError("WACONNECT_MESSAGE_TTL must be positive")
        if self.send_timeout <= 0:
            raise ValueError("WACONNECT_SEND_TIMEOUT must be positive")


def messaging_config(**overrides: float) -> MessagingConfig:
    values = {
        field.name: float(getattr(settings, f"WACONNECT_{field.name.upper()}", field.default))
        for field in dataclasses.fields(MessagingConfig)
    }
    values.update(overrides)
    return MessagingConfig(**values)
