"""Request and response bodies of the sessions resource.

A session is shown from its snapshot (:func:`sessions_app.snapshots.snapshot`),
the same dict the pages render and the supervisor pushes, so the long poll can
answer straight from a push with exactly what a plain GET would show.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from ninja import Schema
from pydantic import Field

from sessions_app.states import Desired, State

StateName = Literal[tuple(s.value for s in State)]  # type: ignore[valid-type]
DesiredName = Literal[tuple(d.value for d in Desired)]  # type: ignore[valid-type]


class SessionIn(Schema):
    name: str = Field(
        description="2–64 letters, digits, '.', '-', '_', starting with a letter or digit.",
        examples=["sales-team"],
    )


class PairPhoneIn(Schema):
    phone: str = Field(description="International format, e.g. +49 151 12345678.")


class SessionOut(Schema):
    id: int
    name: str
    state: StateName = Field(description="What the supervisor last saw (observed).")
    desired_state: DesiredName = Field(description="What was asked for (intent).")
    version: int = Field(description="Grows with every observed change; see after_version.")
    phone: str = Field(description="The linked phone number, once paired.")
    push_name: str
    qr_available: bool = Field(description="A QR code is waiting: GET /sessions/{id}/qr.")
    qr_expires_at: dt.datetime | None
    pairing_code: str = Field(description="The code to type on the phone, when one was asked.")
    last_error: str
    retry_count: int
    next_retry_at: dt.datetime | None
    banned_until: dt.datetime | None


class QrOut(Schema):
    code: str = Field(description="The QR payload, for clients that draw the code themselves.")
    expires_at: dt.datetime | None


class EventOut(Schema):
    id: int
    at: dt.datetime
    kind: str
    from_state: str
    to_state: str
    message: str
    actor: str = Field(description="A username, token:<name>, or supervisor:<owner>.")


def _when(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def session_out(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The API's view of a snapshot (no QR code: that is ``GET …/qr``; no lease details)."""
    return {
        "id": snapshot["id"],
        "name": snapshot["name"],
        "state": snapshot["state"],
        "desired_state": snapshot["desired_state"],
        "version": snapshot["version"],
        "phone": snapshot["phone"],
        "push_name": snapshot["push_name"],
        "qr_available": bool(snapshot["qr_code"]),
        "qr_expires_at": _when(snapshot["qr_expires_at"]),
        "pairing_code": snapshot["pairing_code"],
        "last_error": snapshot["last_error"],
        "retry_count": snapshot["retry_count"],
        "next_retry_at": _when(snapshot["next_retry_at"]),
        "banned_until": _when(snapshot["banned_until"]),
    }
