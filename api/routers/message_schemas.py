"""Request and response bodies of the messages resource, and their OpenAPI examples.

A message is shown to clients by :func:`message_out` from the
:class:`messaging.models.Message` row: ``id`` is the row's ``ref`` (32 hex
digits, the id the API hands out and the client message id passed to the
driver), never the database key. Texts are in bodies only, never in a log line.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, field_validator

from messaging.models import Message
from messaging.recipients import MAX_TEXT
from messaging.states import Status

StatusName = Literal[tuple(s.value for s in Status)]  # type: ignore[valid-type]
DirectionName = Literal["in", "out"]

#: WhatsApp takes texts up to 65,536 characters; longer ones are refused here (422).
TEXT_MAX = MAX_TEXT
#: A recipient is a phone number or a JID; the model's column is this long.
TO_MAX = 128
#: The longest ``ttl`` a client may ask for (a week): a message that old is no news.
TTL_MAX = 7 * 24 * 3600

EXAMPLE_REF = "0f3c9a7e5b2d4c1f8e6a9b0c7d5e3f21"

EXAMPLE_OUT: dict[str, Any] = {
    "id": EXAMPLE_REF,
    "session_id": 12,
    "direction": "out",
    "status": "queued",
    "to": "+4915112345678",
    "chat": "",
    "sender": "",
    "sender_phone": "",
    "from_me": True,
    "push_name": "",
    "kind": "text",
    "text": "Hello!",
    "failure_reason": "",
    "failure_detail": "",
    "deadline": "2026-11-30T15:00:00Z",
    "created_at": "2026-11-30T14:00:00Z",
    "wa_id": "",
    "wa_timestamp": None,
    "sent_at": None,
    "delivered_at": None,
    "read_at": None,
    "status_changed_at": "2026-11-30T14:00:00Z",
    "version": 0,
}


class MessageIn(Schema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"to": "+4915112345678", "text": "Hello!", "ttl": 600}]}
    )

    to: str = Field(
        min_length=1,
        max_length=TO_MAX,
        description=(
            "The recipient: a phone number with its country code (`+49 151 12345678`, "
            "`4915112345678`) or a WhatsApp JID (`4915112345678@s.whatsapp.net`)."
        ),
        examples=["+4915112345678"],
    )
    text: str = Field(
        min_length=1, max_length=TEXT_MAX, description="The text to send.", examples=["Hello!"]
    )
    deadline: dt.datetime | None = Field(
        None,
        description=(
            "Not sent by then (the session not connected, say), the message expires. "
            "ISO 8601 with a time zone, in the future. Default: now + WACONNECT_MESSAGE_TTL."
        ),
    )
    ttl: int | None = Field(
        None,
        ge=1,
        le=TTL_MAX,
        description="Or: seconds from now until the deadline. Not both.",
        examples=[600],
    )

    @field_validator("deadline")
    @classmethod
    def _deadline_in_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None else as_utc(value, naive_ok=False)


def as_utc(value: dt.datetime, *, naive_ok: bool) -> dt.datetime:
    """``value`` in UTC (naive: read as UTC when ``naive_ok``); ValueError (a 422) for
    a naive one otherwise, or one whose offset takes it past year 1 or 9999."""
    if value.tzinfo is None:
        if not naive_ok:
            raise ValueError("give a time zone, e.g. 2026-11-30T15:00:00Z")
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("out of range") from None


class MessageOut(Schema):
    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_OUT]})

    id: str = Field(description="The message's id (32 hex digits).", examples=[EXAMPLE_REF])
    session_id: int = Field(description="The session that sends or received it.")
    direction: DirectionName = Field(
        description="`out`: sent through the API or a page; `in`: received."
    )
    status: StatusName = Field(
        description=(
            "Outbound: queued → sending → sent → delivered → read, or failed (refused, "
            "see failure_reason), expired (not sent before its deadline) or unknown (the "
            "sender lost its connection or lease mid-send: it may or may not have gone out; "
            "never sent again). Inbound: received."
        )
    )
    to: str = Field(description="Outbound: the recipient as given.")
    chat: str = Field(description="The chat's JID.")
    sender: str = Field(description="Inbound: the sender's JID (may be an @lid).")
    sender_phone: str = Field(description="Inbound: the sender's phone-number JID, when known.")
    from_me: bool = Field(description="Sent by this account (outbound, or from its phone).")
    push_name: str = Field(description="Inbound: the sender's display name.")
    kind: str = Field(description="`text`, or the media type (the caption is in `text`).")
    text: str
    failure_reason: str = Field(
        description=(
            "Why it failed, expired or is unknown: not_on_whatsapp, invalid_recipient, "
            "rate_limited, not_connected, timeout, error, deadline, owner_lost."
        )
    )
    failure_detail: str
    deadline: dt.datetime | None = Field(description="Outbound: expires if not sent by then.")
    created_at: dt.datetime
    wa_id: str = Field(description="WhatsApp's message id, once sent (or as received).")
    wa_timestamp: dt.datetime | None = Field(description="WhatsApp's time of the message.")
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    read_at: dt.datetime | None
    status_changed_at: dt.datetime
    version: int = Field(description="Grows with every change of the message.")


FIELDS = (
    "session_id",
    "direction",
    "status",
    "to",
    "chat",
    "sender",
    "sender_phone",
    "from_me",
    "push_name",
    "kind",
    "text",
    "failure_reason",
    "failure_detail",
    "deadline",
    "created_at",
    "wa_id",
    "wa_timestamp",
    "sent_at",
    "delivered_at",
    "read_at",
    "status_changed_at",
    "version",
)


def message_out(message: Message) -> dict[str, Any]:
    """The API's view of a message row (JSON-ready: datetimes as ISO 8601)."""
    body = {"id": message.ref, **{name: getattr(message, name) for name in FIELDS}}
    return MessageOut.model_validate(body).model_dump(mode="json")
