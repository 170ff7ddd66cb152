"""Standard Webhooks signatures, made by the ``standardwebhooks`` package.

The headers of one attempt: ``webhook-id`` (the event id, the same on every retry:
the receiver's idempotency key), ``webhook-timestamp`` (Unix seconds of this
attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` per secret,
space-separated: during a rotation's overlap both the new and the old secret
sign, so a receiver holding either verifies).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from standardwebhooks import Webhook


def sign_headers(
    event_id: str, body: str, secrets: Sequence[str], now: dt.datetime
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (the exact text sent)."""
    timestamp = now.astimezone(dt.UTC)
    signatures = [
        Webhook(secret).sign(msg_id=event_id, timestamp=timestamp, data=body) for secret in secrets
    ]
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
