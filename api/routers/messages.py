"""Messages over the API: send from a session, read one, list a session's.

- ``POST /sessions/{session_id}/messages`` queues an outbound message through
  :func:`messaging.intents.enqueue` (the web side's only writer of messages; it
  rings the session's owner) and answers ``202`` with it. With ``Idempotency-Key``
  a repeat queues nothing and answers with the first message *as it is now*.
  With ``?wait=sent&timeout=S`` the answer waits (at most ``S`` ≤ 30 s) until the
  message is ``sent`` or settled otherwise (``delivered``, ``read``, ``failed``,
  ``expired``, ``unknown``): fed by the push the owner sends to the session's
  channel-layer group (:mod:`messaging.live`), not by polling the database,
  with the request's database connection handed back while it waits.
- ``GET /messages/{message_id}``: one message, by the id the API gave out (a
  message id is unique across sessions, so it needs no session in its path).
- ``GET /sessions/{session_id}/messages``: a session's messages, in and out,
  newest first, in cursor pages, filtered by direction, status and time.

Scopes and permissions (:data:`api.scopes.MESSAGE_PERMISSIONS`): sending needs
``messages:send`` and the user's ``change_wasession`` (it acts for the session,
like Start); reading needs ``messages:read`` and ``view_wasession``. A session
outside the token's list, and any of its messages, is 404, like a missing one.
Message texts appear in bodies only: nothing here logs a request's body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Literal

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Query, Router, Schema
from ninja.responses import Status
from pydantic import Field, field_validator

from api import idempotency, scopes
from api.errors import ApiError, not_found
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, paginate
from api.routers.message_schemas import (
    DirectionName,
    MessageIn,
    MessageOut,
    StatusName,
    as_utc,
    message_out,
)
from api.routers.sessions import get_session, principal
from messaging import intents as message_intents
from messaging import live
from messaging.models import Message
from messaging.states import Status as MessageStatus
from sessions_app import conf

router = Router(tags=["messages"])

#: ``wait=sent`` ends at the first of these: sent, or settled without being sent.
SETTLED = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.DELIVERED,
        MessageStatus.READ,
        MessageStatus.FAILED,
        MessageStatus.EXPIRED,
        MessageStatus.UNKNOWN,
    }
)

SEND_PERMISSION = scopes.MESSAGE_PERMISSIONS[scopes.MESSAGES_SEND]
READ_PERMISSION = scopes.MESSAGE_PERMISSIONS[scopes.MESSAGES_READ]

IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": (
        "Repeat a request safely: the same key (for 24 h, per token) queues nothing "
        "new and answers with the first message as it is now."
    ),
}


def visible_message(request: HttpRequest, message_id: str) -> Message:
    """The message, if it exists and the token may see its session; else 404."""
    message = Message.objects.filter(ref=message_id).first()
    if message is None or not principal(request).may_see(message.session_id):
        raise not_found("message")
    return message


# -- send ---------------------------------------------------------------------------


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_error",
        "The request is not valid; see errors.",
        errors=[{"field": field, "in": "body", "message": message, "type": "value_error"}],
    )


def _queue(request: HttpRequest, session_id: int, body: MessageIn) -> tuple[dict[str, Any], bool]:
    """Queue the message (once per idempotency key); its answer and whether replayed."""
    who = principal(request)
    session = get_session(request, session_id)
    if body.deadline is not None and body.ttl is not None:
        raise _refuse("deadline", "Give a deadline or a ttl, not both.")

    def work() -> tuple[int, dict[str, Any]]:
        deadline = body.deadline
        if body.ttl is not None:
            deadline = timezone.now() + dt.timedelta(seconds=body.ttl)
        try:
            # A session being deleted (or gone meanwhile): IntentRefused, 409.
            message = message_intents.enqueue(
                session, body.to, body.text, deadline=deadline, actor=who.actor
            )
        except ValidationError as invalid:
            raise ApiError(
                422,
                "validation_error",
                "The request is not valid; see errors.",
                errors=[
                    {"field": field, "in": "body", "message": m, "type": "value_error"}
                    for field, messages in invalid.message_dict.items()
                    for m in messages
                ],
            ) from None
        # Only the id is remembered with the key (no second copy of the text);
        # the answer is the message as it is when answered.
        return 202, {"id": message.ref}

    _, first, replayed = idempotency.remembered(request, body.model_dump(mode="json"), work)
    message = Message.objects.filter(ref=first["id"], session_id=session_id).first()
    if message is None:  # its session was deleted since (the messages went with it)
        raise not_found("message")
    return message_out(message), replayed


@sync_to_async
def _queue_async(
    request: HttpRequest, session_id: int, body: MessageIn
) -> tuple[dict[str, Any], bool]:
    return _queue(request, session_id, body)


def pushed_message(pushed: dict[str, Any]) -> dict[str, Any] | None:
    """The payload of a ``message.update`` push (:mod:`messaging.live`), or None."""
    if pushed.get("type") != live.MESSAGE_UPDATE:
        return None
    message = pushed.get("message")
    return message if isinstance(message, dict) else None


@sync_to_async
def _read_message(ref: str) -> dict[str, Any] | None:
    message = Message.objects.filter(ref=ref).first()
    return None if message is None else message_out(message)


@sync_to_async
def _release_connections() -> None:
    """Close (with a pool: give back) the connections of this request's thread."""
    connections.close_all()


async def _wait_settled(session_id: int, first: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The message once ``sent`` or settled, or as it is when ``timeout`` runs out.

    Joins the session's messages group (:func:`messaging.live.messages_group`)
    *before* reading the row again, so an update between the read and the wait
    is not missed; then waits for a push naming the message with a settled status
    (:func:`pushed_message`) and reads it once more to answer (a push is a
    doorbell: the row is the truth; a deleted session's message answers 404).
    """
    layer = get_channel_layer()
    ref = first["id"]
    if layer is None or timeout <= 0:
        return first
    group = live.messages_group(session_id)
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        latest = await _read_message(ref)
        if latest is None:
            raise not_found("message")
        if latest["status"] in SETTLED:
            return latest
        # The wait needs no database connection: give it back (see the long poll).
        await _release_connections()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    pushed = await layer.receive(channel)
                    update = pushed_message(pushed)
                    if update is None or update.get("ref") != ref:
                        continue
                    if update.get("status") in SETTLED:
                        break
        except TimeoutError:
            pass
        latest = await _read_message(ref)
        await _release_connections()
        if latest is None:
            raise not_found("message")
        return latest
    finally:
        await layer.group_discard(group, channel)


class SendQuery(Schema):
    wait: Literal["sent"] | None = Field(
        None, description="`sent`: answer once the message is sent or settled (or `timeout`)."
    )
    timeout: float = Field(10, ge=0, le=30, description="Seconds `wait` may take (capped at 30).")


@router.post(
    "/sessions/{session_id}/messages",
    response={202: MessageOut},
    summary="Send a message",
    openapi_extra={"parameters": [IDEMPOTENCY_PARAMETER]},
)
async def send_message(
    request: HttpRequest,
    response: HttpResponse,
    session_id: int,
    body: MessageIn,
    query: Query[SendQuery],
) -> Status:
    """Queue a text for the session's owner to send: ``202`` with the message, ``queued``.

    It is sent in order, one at a time per session, once the session is connected;
    not sent by its ``deadline`` it becomes ``expired``. With ``wait=sent`` the
    answer comes once it is sent or settled, or after ``timeout`` seconds.
    """
    principal(request).require(scopes.MESSAGES_SEND, SEND_PERMISSION)
    out, replayed = await _queue_async(request, session_id, body)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    if query.wait == "sent":
        out = await _wait_settled(session_id, out, min(query.timeout, conf.api_max_wait()))
    return Status(202, out)


# -- read ---------------------------------------------------------------------------


@router.get("/messages/{message_id}", response=MessageOut, summary="Read a message")
def read_message(request: HttpRequest, message_id: str) -> dict[str, Any]:
    """One message, in or out, by its id."""
    principal(request).require(scopes.MESSAGES_READ, READ_PERMISSION)
    return message_out(visible_message(request, message_id))


class MessageFilters(Schema):
    direction: DirectionName | None = Field(None, description="`in` or `out` only.")
    status: StatusName | None = Field(None, description="Only messages with this status.")
    since: dt.datetime | None = Field(
        None, description="Only messages written at or after this time (ISO 8601; UTC if naive)."
    )
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)

    @field_validator("since")
    @classmethod
    def _since_in_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None else as_utc(value, naive_ok=True)


@router.get(
    "/sessions/{session_id}/messages",
    response=Page[MessageOut],
    summary="List a session's messages",
)
def list_messages(
    request: HttpRequest, session_id: int, filters: Query[MessageFilters]
) -> dict[str, Any]:
    """The session's messages in and out, newest first, filtered."""
    principal(request).require(scopes.MESSAGES_READ, READ_PERMISSION)
    session = get_session(request, session_id)
    queryset = Message.objects.filter(session=session)
    if filters.direction:
        queryset = queryset.filter(direction=filters.direction)
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    if filters.since is not None:
        queryset = queryset.filter(created_at__gte=filters.since)
    rows, links = paginate(queryset, cursor=filters.cursor, limit=filters.limit, newest_first=True)
    return {"data": [message_out(m) for m in rows], **links}
