"""Live updates of messages for pages and long polls: one group per session.

Contract (the messages-api helper's page, socket and ``?wait=sent`` build on it):

- Group: :func:`messages_group` ``(session_id)`` → ``"waconnect.messages.<id>"``; a
  group of its own, not the session's snapshot group, so sockets that do not know
  messages never receive a type they have no handler for.
- Channel-layer message: ``{"type": "message.update", "message": <payload>}`` (a
  consumer's handler is ``message_update``), sent after the change committed,
  for every change of a row: queued (by :mod:`messaging.intents`), sending, sent,
  delivered, read, failed, expired, unknown, requeued, and each inbound message
  stored (once).
- Payload (:func:`payload`, JSON-ready): ``id`` (database id, grows), ``ref``,
  ``session`` (session id), ``direction`` (``in``/``out``), ``status``, ``wa_id``,
  ``chat``, ``to``, ``sender``, ``sender_phone``, ``from_me``, ``push_name``,
  ``kind``, ``text``, ``failure_reason``, ``failure_detail``, and ISO 8601 UTC
  strings or null: ``deadline``, ``created_at``, ``wa_timestamp``, ``sent_at``,
  ``delivered_at``, ``read_at``, ``status_changed_at``; and ``version`` (grows with
  every change of the row: a receiver drops a payload whose ``version`` is not
  above the one it shows for that ``ref``, since pushes may arrive out of order).

Like every push, this is a doorbell, not a mailbox: a lost push loses nothing,
the database has the truth (a page reloads it on reconnect, a long poll reads it
again when its wait ends). Message texts travel to the page but never to a log.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from messaging.models import Message

logger = logging.getLogger(__name__)

MESSAGE_UPDATE = "message.update"

#: The doorbell's ``reason`` for a queued message (:func:`sessions_app.doorbell.ring_supervisors`):
#: the owner's runner only wakes its message pump, nothing else about the session changed.
RING_REASON = "message queued"

_TIMES = (
    "deadline",
    "created_at",
    "wa_timestamp",
    "sent_at",
    "delivered_at",
    "read_at",
    "status_changed_at",
)
_PLAIN = (
    "ref",
    "direction",
    "status",
    "wa_id",
    "chat",
    "to",
    "sender",
    "sender_phone",
    "from_me",
    "push_name",
    "kind",
    "text",
    "failure_reason",
    "failure_detail",
    "version",
)


def messages_group(session_id: int) -> str:
    """The group of everyone watching a session's messages."""
    return f"waconnect.messages.{int(session_id)}"


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def payload(message: Message) -> dict[str, Any]:
    """The JSON-ready shape of one message (see the module docstring)."""
    data: dict[str, Any] = {"id": message.pk, "session": message.session_id}
    data.update({name: getattr(message, name) for name in _PLAIN})
    data.update({name: _iso(getattr(message, name)) for name in _TIMES})
    return data


async def publish(messages: Iterable[Message]) -> None:
    """Push each message's payload to its session's group; a layer failure is logged."""
    layer = get_channel_layer()
    if layer is None:
        return
    for message in messages:
        try:
            await layer.group_send(
                messages_group(message.session_id),
                {"type": MESSAGE_UPDATE, "message": payload(message)},
            )
        except Exception:
            logger.warning(
                "could not push a message update; pages resync on reconnect",
                exc_info=True,
                extra={"session": message.session_id},
            )


def publish_sync(messages: Iterable[Message]) -> None:
    async_to_sync(publish)(list(messages))
