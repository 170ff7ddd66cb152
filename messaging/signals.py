"""Signals sent *inside* the transaction of every write about messages.

``messages_changed(sender=Message, messages=[...], change=...)`` is sent by
:mod:`messaging.outbound`, :mod:`messaging.inbound` and :mod:`messaging.intents`
after their statement and before their transaction commits, with the rows as they
now are. A receiver that writes (the webhooks outbox) writes in the same
transaction: its rows commit with the change or not at all. A receiver must not
do I/O outside the database, and an exception it raises rolls the change back.

``change`` is ``"queued"`` (a new outbound row), ``"status"`` (an outbound row's
status changed) or ``"received"`` (an inbound row stored, once).
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.db import transaction
from django.dispatch import Signal

messages_changed = Signal()

QUEUED = "queued"
STATUS = "status"
RECEIVED = "received"


def changing() -> Any:
    """The transaction a write about messages runs in: ``atomic()`` while someone
    listens to :data:`messages_changed` (their rows must commit with the change),
    else none — one statement commits on its own, and the owner's hot path (one
    take and one ``sent`` per message) saves the BEGIN and COMMIT round trips.
    Inside a caller's transaction ``atomic`` adds no savepoint (``savepoint=False``):
    an error rolls the caller's transaction back, which is what its rows need too.
    """
    if messages_changed.has_listeners() or transaction.get_connection().in_atomic_block:
        return transaction.atomic(savepoint=False)
    return contextlib.nullcontext()
