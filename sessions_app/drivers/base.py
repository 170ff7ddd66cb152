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

    async def aclose(self) -> None: ...


class DriverError(Exception):
    """A driver could not do what it was asked."""
