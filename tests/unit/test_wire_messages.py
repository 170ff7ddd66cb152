"""The message events on the wire: every one survives a round trip, and a line with a
value outside the contract is a protocol error, not an event."""

from __future__ import annotations

import datetime as dt

import pytest

from sessions_app.drivers import wire
from sessions_app.drivers.base import (
    DriverEvent,
    MessageReceived,
    MessageSent,
    Receipt,
    SendFailed,
)

WHEN = dt.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)

EVENTS: list[DriverEvent] = [
    MessageSent(7, ref="r1", message_id="3EB0AA", timestamp=WHEN),
    SendFailed(7, ref="r2", outcome="refused", reason="not_on_whatsapp", detail="no account"),
    SendFailed(7, ref="r3", outcome="unknown", reason="timeout"),
    MessageReceived(
        7,
        message_id="3EB0BB",
        chat="123@lid",
        sender="123@lid",
        sender_phone="4915112345678@s.whatsapp.net",
        from_me=False,
        timestamp=WHEN,
        push_name="Ada",
        kind="text",
        text='Grüße 👋 "quoted"\nnew line',
    ),
    Receipt(7, message_ids=("a", "b"), status="read", timestamp=WHEN, chat="x@s.whatsapp.net"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_round_trip(event: DriverEvent) -> None:
    line = wire.from_driver_event(event)
    assert wire.to_driver_event(7, wire.decode(line, wire.EVENTS)) == event


def test_the_longest_text_fits_on_a_line() -> None:
    text = "👋" * wire.MAX_TEXT  # the worst case for JSON's escaping
    line = wire.encode("send", ref="r", to="4915112345678", text=text)
    assert wire.decode(line, wire.COMMANDS)["text"] == text


@pytest.mark.parametrize(
    ("kind", "fields", "error"),
    [
        (
            "send_failed",
            {"ref": "r", "outcome": "maybe", "reason": "error", "detail": ""},
            "outcome",
        ),
        (
            "send_failed",
            {"ref": "r", "outcome": "refused", "reason": "bad luck", "detail": ""},
            "reason",
        ),
        ("receipt", {"message_ids": ["a"], "status": "seen", "timestamp": 0, "chat": ""}, "status"),
        ("receipt", {"message_ids": [1], "status": "read", "timestamp": 0, "chat": ""}, "strings"),
        ("sent", {"ref": "r", "message_id": "m", "timestamp": 1e20}, "out of range"),
        ("sent", {"ref": "r", "message_id": "m"}, "timestamp"),
    ],
)
def test_values_outside_the_contract_are_protocol_errors(
    kind: str, fields: dict[str, object], error: str
) -> None:
    with pytest.raises(wire.ProtocolError, match=error):
        wire.to_driver_event(7, wire.decode(wire.encode(kind, **fields), wire.EVENTS))


def test_connecting_may_carry_the_workers_clock() -> None:
    """``at`` is optional: a worker of an older deploy sends none."""
    for fields in ({}, {"at": 12.5}):
        message = wire.decode(wire.encode("connecting", **fields), wire.EVENTS)
        assert message.get("at") == fields.get("at")
