"""Request and response bodies of the webhooks resource (endpoints and deliveries)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from ninja import Schema
from pydantic import Field

from webhooks.endpoints import SUBSCRIBABLE
from webhooks.models import Delivery, Endpoint

EventTypeName = Literal[SUBSCRIBABLE]  # type: ignore[valid-type]
DeliveryStatus = Literal[tuple(s.value for s in Delivery.Status)]  # type: ignore[valid-type]


class EndpointIn(Schema):
    url: str = Field(
        max_length=2000,
        description="http(s) URL; loopback, private and link-local addresses are refused.",
        examples=["https://example.com/waconnect-hook"],
    )
    description: str = Field("", max_length=200)
    event_types: list[EventTypeName] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="Types to send; empty: every type except session.qr (opt-in).",
    )
    session_ids: list[int] | None = Field(
        None, description="Only these sessions' events; null: every session."
    )
    enabled: bool = True


class EndpointPatch(Schema):
    url: str | None = Field(None, max_length=2000)
    description: str | None = Field(None, max_length=200)
    event_types: list[EventTypeName] | None = None  # type: ignore[valid-type]
    session_ids: list[int] | None = Field(
        None, description="Only these sessions' events; omit to keep, [] is refused."
    )
    all_sessions: bool | None = Field(None, description="true: every session (clears the list).")
    enabled: bool | None = Field(None, description="true also restarts the failure clock.")


class EndpointOut(Schema):
    id: int
    url: str
    description: str
    event_types: list[str]
    all_sessions: bool
    session_ids: list[int]
    enabled: bool
    disabled_reason: str
    failing_since: dt.datetime | None
    previous_secret_expires_at: dt.datetime | None = Field(
        description="Until then the previous secret signs too (after a rotation)."
    )
    created_at: dt.datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="whsec_…: shown only in this answer. Keep it.")


class RotateIn(Schema):
    overlap_seconds: float | None = Field(
        None,
        ge=0,
        le=30 * 86400,
        description="Seconds the old secret also signs (default: the rotation overlap setting).",
    )


class RedeliverSinceIn(Schema):
    since: dt.datetime = Field(description="Dead deliveries created at or after this time.")


class CountOut(Schema):
    count: int


class DeliveryOut(Schema):
    id: int
    event_id: str
    event_type: str
    endpoint_id: int
    session_id: int | None
    sequence: int
    status: DeliveryStatus  # type: ignore[valid-type]
    attempts: int
    next_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str
    last_response: str = Field(description="The start of the receiver's last answer.")
    delivered_at: dt.datetime | None
    created_at: dt.datetime


def endpoint_out(endpoint: Endpoint, *, with_secret: bool = False) -> dict[str, Any]:
    out = {
        "id": endpoint.pk,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types or []),
        "all_sessions": endpoint.all_sessions,
        "session_ids": []
        if endpoint.all_sessions
        else sorted(endpoint.sessions.values_list("pk", flat=True)),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at
        if endpoint.previous_secret
        else None,
        "created_at": endpoint.created_at,
    }
    if with_secret:
        out["secret"] = endpoint.secret
    return out


def delivery_out(d: Delivery) -> dict[str, Any]:
    pending = d.status in (Delivery.Status.PENDING, Delivery.Status.DELIVERING)
    return {
        "id": d.pk,
        "event_id": d.event_id,
        "event_type": d.event.type,
        "endpoint_id": d.endpoint_id,
        "session_id": d.session_id or None,
        "sequence": d.seq,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at if pending else None,
        "last_attempt_at": d.last_attempt_at,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "last_response": d.last_response,
        "delivered_at": d.delivered_at,
        "created_at": d.created_at,
    }
