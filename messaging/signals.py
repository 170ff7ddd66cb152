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

from django.dispatch import Signal

messages_changed = Signal()

QUEUED = "queued"
STATUS = "status"
RECEIVED = "received"
