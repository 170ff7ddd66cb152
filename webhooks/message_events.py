"""``message.received`` and ``message.status`` events, from messaging's own signal.

:mod:`messaging` sends ``messages_changed`` inside the transaction of every write
about messages (the owner's fenced inbound store and outbound status updates,
the web side's enqueue): :func:`on_messages_changed` emits there, so the event
commits with the message row or not at all.

- ``received`` (an incoming message stored, once) → ``message.received``;
- ``status`` (an outgoing message's status moved) → ``message.status`` when the
  status is an outcome a client acts on: ``sent``, ``delivered``, ``read``,
  ``failed``, ``expired``, ``unknown``. The owner's own steps (``sending``, a
  requeue to ``queued``) are not reported; neither is ``queued`` (the API
  caller made it).

The data is the message's live payload (:func:`messaging.live.payload`), text
included: webhooks are how a client reads incoming texts. It is never logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhooks import outbox

#: Outbound statuses reported as ``message.status``.
REPORTED_STATUSES = frozenset({"sent", "delivered", "read", "failed", "expired", "unknown"})


def on_messages_changed(sender: Any, messages: Iterable[Any], change: str, **kwargs: Any) -> None:
    """The receiver of :data:`messaging.signals.messages_changed` (see the module doc)."""
    from messaging import live, signals

    if change == signals.RECEIVED:
        event_type = "message.received"
    elif change == signals.STATUS:
        event_type = "message.status"
    else:
        return
    reported = [
        message
        for message in messages
        if event_type != "message.status" or message.status in REPORTED_STATUSES
    ]
    # One endpoint lookup for the whole batch (the owner records many sessions' acks
    # in one statement); the events are stored in session order, as the rows come.
    outbox.emit_many(event_type, [(m.session_id, live.payload(m)) for m in reported])


def connect() -> None:
    """Listen to messaging's signal, if messaging is installed (idempotent)."""
    from django.apps import apps

    if not apps.is_installed("messaging"):
        return
    from messaging import signals

    signals.messages_changed.connect(on_messages_changed, dispatch_uid="webhooks-message-events")
