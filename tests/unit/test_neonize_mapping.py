"""Real neonize event objects (its own protobuf classes) through the worker's mapping,
the wire protocol and back into driver events: one test per event type. The three
conditions whose events are empty (stream replaced, keep-alive restored, client
outdated) come as whatsmeow's own log lines through neonize's log pipeline, or
from the keep-alive cycle."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from neonize.proto import Neonize_pb2 as P
from neonize.utils.jid import build_jid

from sessions_app.drivers import wire
from sessions_app.drivers.base import (
    Banned,
    Connected,
    ConnectError,
    Disconnected,
    DriverEvent,
    KeepAliveTimeout,
    LoggedOut,
    PairSuccess,
    QrTimeout,
)
from sessions_app.drivers.neonize_worker import event_message, login_status_message


def through_the_wire(message: tuple[str, dict[str, Any]] | None) -> DriverEvent | None:
    assert message is not None
    kind, fields = message
    decoded = wire.decode(wire.encode(kind, **fields), wire.EVENTS)
    return wire.to_driver_event(42, decoded)


def test_pair_success_carries_the_device_jid_and_push_name() -> None:
    jid = build_jid("4915112345678")
    jid.Device = 12
    event = P.PairStatus(ID=jid, BusinessName="", Platform="android", Status=P.PairStatus.SUCCESS)
    assert through_the_wire(event_message(event, "Ada")) == PairSuccess(
        42, jid="4915112345678:12@s.whatsapp.net", push_name="Ada"
    )


def test_pair_error_is_a_retryable_error() -> None:
    event = P.PairStatus(
        ID=build_jid(""), BusinessName="", Platform="", Status=P.PairStatus.ERROR, Error="boom"
    )
    assert through_the_wire(event_message(event)) == ConnectError(42, "pairing failed: boom")


def test_connected() -> None:
    assert through_the_wire(event_message(P.Connected(status=True))) == Connected(42)


def test_disconnected_is_left_to_whatsmeow_to_reconnect() -> None:
    event = through_the_wire(event_message(P.Disconnected(status=True)))
    assert isinstance(event, Disconnected)
    assert event.will_retry


def test_keepalive_timeout() -> None:
    timeout = P.KeepAliveTimeout(ErrorCount=2, LastSuccess=1_700_000_000)
    assert through_the_wire(event_message(timeout)) == KeepAliveTimeout(42)


def test_logged_out_names_the_reason() -> None:
    event = P.LoggedOut(OnConnect=True, Reason=P.ConnectFailureReason.MAIN_DEVICE_GONE)
    assert through_the_wire(event_message(event)) == LoggedOut(42, reason="MAIN_DEVICE_GONE")


def test_temporary_ban_lasts_its_expiry() -> None:
    event = P.TemporaryBan(Code=P.TemporaryBan.BLOCKED_BY_USERS, Expire=3600)
    before = dt.datetime.now(dt.UTC)
    banned = through_the_wire(event_message(event))
    assert isinstance(banned, Banned)
    assert banned.reason == "BLOCKED_BY_USERS"
    assert banned.until is not None
    assert 3599 <= (banned.until - before).total_seconds() <= 3601


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("SERVICE_UNAVAILABLE", ConnectError(42, "connect failure SERVICE_UNAVAILABLE: 503")),
        ("LOGGED_OUT", LoggedOut(42, reason="LOGGED_OUT")),
        (
            "CLIENT_OUTDATED",
            ConnectError(42, "connect failure CLIENT_OUTDATED: 503", retryable=False),
        ),
    ],
)
def test_connect_failure(reason: str, expected: DriverEvent) -> None:
    event = P.ConnectFailure(
        Reason=P.ConnectFailureReason.Value(reason), Message="503", Raw=P.Node(Tag="failure")
    )
    assert through_the_wire(event_message(event)) == expected


def test_stream_error_is_retryable() -> None:
    event = P.StreamError(Code="515", Raw=P.Node(Tag="stream:error"))
    assert through_the_wire(event_message(event)) == ConnectError(42, "stream error 515")


def test_the_login_timeout_ends_the_qr_round() -> None:
    assert through_the_wire(login_status_message("timeout")) == QrTimeout(42)
    assert login_status_message("success") is None
    outdated = through_the_wire(login_status_message("err-client-outdated"))
    assert isinstance(outdated, ConnectError)
    assert not outdated.retryable


def test_qr_events_are_ignored_because_codes_come_through_the_qr_callback() -> None:
    assert event_message(P.QR(Codes=["2@a,b,c,d"])) is None


def test_malformed_worker_messages_are_protocol_errors() -> None:
    for line in [
        b"garbage\n",
        b"[]\n",
        b'{"v":2,"t":"connected"}\n',
        b'{"v":1,"t":"nope"}\n',
        b'{"v":1,"t":"qr","code":5,"valid_for":60}\n',
        b"x" * (wire.MAX_LINE + 1),
    ]:
        with pytest.raises(wire.ProtocolError):
            wire.decode(line, wire.EVENTS)
