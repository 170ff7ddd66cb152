"""The cut between the supervisor and WhatsApp: a small ``Driver`` protocol and the
events that flow back from it.

Drivers take plain values (a session id, a JID, a phone number) and report plain
dataclasses through one callback per connection, so the supervisor never sees
neonize or the simulator, and a driver never sees Django.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class ConnectSpec:
    """What to connect: a new device to pair (``jid`` empty) or a stored one.

    ``owner`` and ``epoch`` name the lease the connection is opened under; a driver
    may pass them on (the simulated WhatsApp service records them with every
    overlap, so a test can tell whose connection kicked whose).
    """

    session_id: int
    jid: str = ""
    owner: str = ""
    epoch: int = 0

    @property
    def pairing(self) -> bool:
        return not self.jid


@dataclasses.dataclass(frozen=True)
class DriverEvent:
    """Base of everything a driver reports; ``session_id`` says whose connection."""

    session_id: int


@dataclasses.dataclass(frozen=True)
class QrCode(DriverEvent):
    """A QR code to show; it stops being scannable ``valid_for`` seconds from now."""

    code: str
    valid_for: float

    def __repr__(self) -> str:  # never let a QR payload reach a log
        return f"QrCode(session_id={self.session_id}, code=<hidden>, valid_for={self.valid_for})"


@dataclasses.dataclass(frozen=True)
class PairingCode(DriverEvent):
    """A code to type on the phone instead of scanning (linking by phone number)."""

    code: str

    def __repr__(self) -> str:
        return f"PairingCode(session_id={self.session_id}, code=<hidden>)"


@dataclasses.dataclass(frozen=True)
class QrTimeout(DriverEvent):
    """Every code of the round expired unscanned; the connection is over."""


@dataclasses.dataclass(frozen=True)
class PairSuccess(DriverEvent):
    """The phone accepted the link; the device now has a JID."""

    jid: str
    push_name: str = ""


@dataclasses.dataclass(frozen=True)
class Connected(DriverEvent):
    """The connection is up and logged in."""


@dataclasses.dataclass(frozen=True)
class KeepAliveTimeout(DriverEvent):
    """Keep-alives are failing; the connection may be dying."""


@dataclasses.dataclass(frozen=True)
class KeepAliveRestored(DriverEvent):
    """Keep-alives answer again."""


@dataclasses.dataclass(frozen=True)
class Disconnected(DriverEvent):
    """The connection dropped. ``will_retry``: the driver reconnects by itself."""

    reason: str = ""
    will_retry: bool = False


@dataclasses.dataclass(frozen=True)
class LoggedOut(DriverEvent):
    """The device was unlinked (from the phone, or by us); its credentials are gone."""

    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Replaced(DriverEvent):
    """Another connection took this device over ("stream replaced")."""


@dataclasses.dataclass(frozen=True)
class Banned(DriverEvent):
    """A temporary ban; nothing to do until ``until``."""

    until: dt.datetime | None = None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class ConnectError(DriverEvent):
    """The connection failed or broke; the supervisor retries with backoff."""

    message: str
    retryable: bool = True


@dataclasses.dataclass(frozen=True)
class MessageSent(DriverEvent):
    """WhatsApp acknowledged an outbound message (whatsmeow's ``SendResponse``).

    ``ref`` is the client message id the supervisor passed to ``send_text``;
    ``message_id`` is WhatsApp's id (the one receipts name); ``timestamp`` is
    WhatsApp's, aware UTC.
    """

    ref: str
    message_id: str
    timestamp: dt.datetime


@dataclasses.dataclass(frozen=True)
class SendFailed(DriverEvent):
    """An outbound message did not go out, or its outcome cannot be known.

    ``outcome``: ``"refused"`` (WhatsApp or the driver refused it: it was not sent;
    ``reason`` is one of :data:`SEND_FAILURE_REASONS`) or ``"unknown"`` (asked,
    but no answer before the deadline or the connection ended: it may have gone
    out). ``detail`` is for logs and the row, never the message text.
    """

    ref: str
    outcome: str
    reason: str
    detail: str = ""


#: ``SendFailed.reason`` values. ``not_on_whatsapp``: the number has no account;
#: ``invalid_recipient``: not a phone number or JID; ``rate_limited``: WhatsApp
#: asked to slow down; ``not_connected``: no logged-in connection; ``timeout``:
#: no server ack before the deadline (outcome unknown); ``error``: anything else.
SEND_FAILURE_REASONS = (
    "not_on_whatsapp",
    "invalid_recipient",
    "rate_limited",
    "not_connected",
    "timeout",
    "error",
)


@dataclasses.dataclass(frozen=True)
class MessageReceived(DriverEvent):
    """A message on the connection (whatsmeow's ``events.Message``), ours from
    another device of the account included (``from_me``).

    ``chat`` and ``sender`` are JIDs as WhatsApp gives them (either may be an
    ``@lid``); ``sender_phone`` is the phone-number JID when WhatsApp gives one
    (``SenderAlt``), else empty. ``timestamp`` is aware UTC. ``kind`` is
    ``"text"`` or the media type (``"image"``, ``"video"``, ``"audio"``,
    ``"document"``, ``"sticker"``, ...) or ``"other"``; ``text`` is the text or
    the caption.
    """

    message_id: str
    chat: str
    sender: str
    sender_phone: str
    from_me: bool
    timestamp: dt.datetime
    push_name: str
    kind: str
    text: str

    def __repr__(self) -> str:  # message texts never reach a log
        return (
            f"MessageReceived(session_id={self.session_id}, message_id={self.message_id!r}, "
            f"kind={self.kind!r}, from_me={self.from_me}, text=<hidden>)"
        )


@dataclasses.dataclass(frozen=True)
class Receipt(DriverEvent):
    """WhatsApp's receipt for messages this account sent (``events.Receipt``):
    ``status`` is ``"delivered"``, ``"read"`` or ``"played"``; ``timestamp`` aware UTC."""

    message_ids: tuple[str, ...]
    status: str
    timestamp: dt.datetime
    chat: str = ""


EventSink = Callable[[DriverEvent], None]


@runtime_checkable
class Driver(Protocol):
    """How the supervisor opens and closes WhatsApp connections.

    A driver keeps at most one connection per session id. ``start`` returns once
    the connection is under way; everything after that arrives through
    ``on_event``. ``stop`` and ``logout`` return promptly even when WhatsApp does
    not answer, and no event is reported for a connection after ``stop`` returns.
    """

    name: ClassVar[str]
    simulated: ClassVar[bool]

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None: ...

    async def stop(self, session_id: int) -> None: ...

    async def logout(self, session_id: int, jid: str) -> None: ...

    async def request_pairing_code(self, session_id: int, phone: str) -> None: ...

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        """Send ``text`` to ``to`` (digits of a phone number with country code, or a
        JID) on the session's logged-in connection.

        Returns once the send is under way; the outcome arrives through the
        connection's ``on_event`` as ``MessageSent`` or ``SendFailed`` naming
        ``ref``, exactly once (unless the connection is stopped first: after
        ``stop`` nothing is reported, so a send still pending then is of unknown
        outcome). ``ref`` is the client message id: a driver that can choose
        WhatsApp's message id uses it (the simulated one does; neonize 0.5.2
        cannot). An open connection that is not logged in answers
        ``SendFailed(refused, not_connected)``; with no connection open at all
        there is no ``on_event`` to answer through, and the driver raises
        :class:`DriverError`.
        """
        ...

    async def aclose(self) -> None: ...


class DriverError(Exception):
    """A driver could not do what it was asked."""
