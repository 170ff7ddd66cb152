"""The messages between the supervisor and a neonize worker process: small, versioned
JSON lines over a socket pair.

Both sides import this module; it depends on the standard library and the driver
event types only. Anything that does not decode to a known, well-formed message is
a :class:`ProtocolError`, which the supervisor treats as that session's error.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sessions_app.drivers.base import (
    SEND_FAILURE_REASONS,
    Banned,
    Connected,
    ConnectError,
    Disconnected,
    DriverEvent,
    KeepAliveRestored,
    KeepAliveTimeout,
    LoggedOut,
    MessageReceived,
    MessageSent,
    PairingCode,
    PairSuccess,
    QrCode,
    QrTimeout,
    Receipt,
    Replaced,
    SendFailed,
)

VERSION = 1

#: The longest text a message may carry, in characters (WhatsApp's own limit).
MAX_TEXT = 65536

#: The longest line, in bytes: a message of MAX_TEXT characters, each escaped by
#: JSON as up to 12 bytes (a surrogate pair), fits with room for its fields.
MAX_LINE = 1024 * 1024

#: Receipt statuses a ``receipt`` message may carry (``Receipt.status``).
RECEIPT_STATUSES = ("delivered", "read", "played")

#: Commands the supervisor sends, with their required fields and types.
COMMANDS: dict[str, dict[str, type]] = {
    "start": {"session": int, "store": str, "jid": str},
    "stop": {},
    "logout": {},
    "pair_phone": {"phone": str},
    "send": {"ref": str, "to": str, "text": str},
    "ping": {},
}

#: Events a worker sends, with their required fields and types.
EVENTS: dict[str, dict[str, type]] = {
    "ready": {},  # warm: neonize imported, waiting for "start"
    "heartbeat": {},
    # About to call neonize's connect(). Optional ``at`` (a float, timing only;
    # a worker of an older deploy sends none): the worker's time.monotonic() then
    # (CLOCK_MONOTONIC: one clock for every process of the host).
    "connecting": {},
    "qr": {"code": str, "valid_for": float},
    "pair_code": {"code": str},
    "paired": {"jid": str, "push_name": str},
    "connected": {},
    "disconnected": {},
    "keepalive_timeout": {},
    "keepalive_restored": {},
    "logged_out": {"reason": str},
    "replaced": {},
    "banned": {"expire": float, "reason": str},
    "qr_timeout": {},
    "error": {"message": str, "retryable": bool},
    "stopped": {},
    # messages (timestamps: seconds since the epoch, UTC)
    "sent": {"ref": str, "message_id": str, "timestamp": float},
    "send_failed": {"ref": str, "outcome": str, "reason": str, "detail": str},
    "message": {
        "message_id": str,
        "chat": str,
        "sender": str,
        "sender_phone": str,
        "from_me": bool,
        "timestamp": float,
        "push_name": str,
        "kind": str,
        "text": str,
    },
    "receipt": {"message_ids": list, "status": str, "timestamp": float, "chat": str},
}


class ProtocolError(ValueError):
    """A line from the other side that is not a valid message."""


def encode(kind: str, /, **fields: Any) -> bytes:
    """One message as a JSON line; ``kind`` is the command or event name."""
    return json.dumps({"v": VERSION, "t": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes, schema: dict[str, dict[str, type]]) -> dict[str, Any]:
    """Parse and validate one line against ``schema`` (COMMANDS or EVENTS)."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError("not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("not an object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    kind = message.get("t")
    if kind not in schema:
        raise ProtocolError(f"unknown message type {kind!r}")
    for name, expected in schema[kind].items():
        value = message.get(name)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = message[name] = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ProtocolError(f"{kind}: field {name!r} must be {expected.__name__}")
    return message


def to_driver_event(session_id: int, message: dict[str, Any]) -> DriverEvent | None:
    """The driver event a worker message stands for (None for housekeeping)."""
    kind = message["t"]
    if kind == "qr":
        return QrCode(session_id, code=message["code"], valid_for=message["valid_for"])
    if kind == "pair_code":
        return PairingCode(session_id, code=message["code"])
    if kind == "paired":
        return PairSuccess(session_id, jid=message["jid"], push_name=message["push_name"])
    if kind == "connected":
        return Connected(session_id)
    if kind == "disconnected":
        # whatsmeow reconnects by itself after a network drop (a sender may say not).
        will_retry = message.get("will_retry", True)
        reason = message.get("reason", "connection lost")
        return Disconnected(session_id, reason=str(reason), will_retry=will_retry is not False)
    if kind == "keepalive_timeout":
        return KeepAliveTimeout(session_id)
    if kind == "keepalive_restored":
        return KeepAliveRestored(session_id)
    if kind == "logged_out":
        return LoggedOut(session_id, reason=message["reason"])
    if kind == "replaced":
        return Replaced(session_id)
    if kind == "banned":
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=message["expire"])
        return Banned(session_id, until=until, reason=message["reason"])
    if kind == "qr_timeout":
        return QrTimeout(session_id)
    if kind == "error":
        return ConnectError(session_id, message["message"], retryable=message["retryable"])
    if kind in ("sent", "send_failed", "message", "receipt"):
        return _message_event(session_id, message)
    return None


def _when(seconds: float) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise ProtocolError(f"timestamp {seconds!r} out of range") from None


def _message_event(session_id: int, message: dict[str, Any]) -> DriverEvent:
    """The message events (sent, send_failed, message, receipt), their values checked."""
    kind = message["t"]
    if kind == "sent":
        return MessageSent(
            session_id,
            ref=message["ref"],
            message_id=message["message_id"],
            timestamp=_when(message["timestamp"]),
        )
    if kind == "send_failed":
        if message["outcome"] not in ("refused", "unknown"):
            raise ProtocolError(f"send_failed: unknown outcome {message['outcome']!r}")
        if message["reason"] not in SEND_FAILURE_REASONS:
            raise ProtocolError(f"send_failed: unknown reason {message['reason']!r}")
        return SendFailed(
            session_id,
            ref=message["ref"],
            outcome=message["outcome"],
            reason=message["reason"],
            detail=message["detail"],
        )
    if kind == "message":
        return MessageReceived(
            session_id,
            message_id=message["message_id"],
            chat=message["chat"],
            sender=message["sender"],
            sender_phone=message["sender_phone"],
            from_me=message["from_me"],
            timestamp=_when(message["timestamp"]),
            push_name=message["push_name"],
            kind=message["kind"],
            text=message["text"],
        )
    ids = message["message_ids"]
    if not all(isinstance(i, str) for i in ids):
        raise ProtocolError("receipt: message_ids must be strings")
    if message["status"] not in RECEIPT_STATUSES:
        raise ProtocolError(f"receipt: unknown status {message['status']!r}")
    return Receipt(
        session_id,
        message_ids=tuple(ids),
        status=message["status"],
        timestamp=_when(message["timestamp"]),
        chat=message["chat"],
    )


def from_driver_event(event: DriverEvent) -> bytes:
    """The message for a driver event: what a simulated WhatsApp sends its client."""
    if isinstance(event, QrCode):
        return encode("qr", code=event.code, valid_for=event.valid_for)
    if isinstance(event, PairingCode):
        return encode("pair_code", code=event.code)
    if isinstance(event, PairSuccess):
        return encode("paired", jid=event.jid, push_name=event.push_name)
    if isinstance(event, Disconnected):
        return encode("disconnected", reason=event.reason, will_retry=event.will_retry)
    if isinstance(event, LoggedOut):
        return encode("logged_out", reason=event.reason)
    if isinstance(event, Banned):
        left = (event.until - dt.datetime.now(dt.UTC)).total_seconds() if event.until else 0.0
        return encode("banned", expire=max(0.0, left), reason=event.reason)
    if isinstance(event, ConnectError):
        return encode("error", message=event.message, retryable=event.retryable)
    if isinstance(event, MessageSent):
        return encode(
            "sent",
            ref=event.ref,
            message_id=event.message_id,
            timestamp=event.timestamp.timestamp(),
        )
    if isinstance(event, SendFailed):
        return encode(
            "send_failed",
            ref=event.ref,
            outcome=event.outcome,
            reason=event.reason,
            detail=event.detail,
        )
    if isinstance(event, MessageReceived):
        return encode(
            "message",
            message_id=event.message_id,
            chat=event.chat,
            sender=event.sender,
            sender_phone=event.sender_phone,
            from_me=event.from_me,
            timestamp=event.timestamp.timestamp(),
            push_name=event.push_name,
            kind=event.kind,
            text=event.text,
        )
    if isinstance(event, Receipt):
        return encode(
            "receipt",
            message_ids=list(event.message_ids),
            status=event.status,
            timestamp=event.timestamp.timestamp(),
            chat=event.chat,
        )
    simple = {
        Connected: "connected",
        KeepAliveTimeout: "keepalive_timeout",
        KeepAliveRestored: "keepalive_restored",
        Replaced: "replaced",
        QrTimeout: "qr_timeout",
    }
    return encode(simple[type(event)])
