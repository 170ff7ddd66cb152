"""What every driver does the same way around ``send_text``: read the recipient,
and keep each send's deadline so that its outcome is reported exactly once.

Pure and standard library only: imported by the supervisor's drivers and by the
neonize worker process alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Protocol

#: WhatsApp's server for phone-number accounts (``<digits>@s.whatsapp.net``).
USER_SERVER = "s.whatsapp.net"

#: Servers whose JIDs name one account (a device part is not allowed in a recipient).
ACCOUNT_SERVERS = (USER_SERVER, "lid")

_NUMBER = re.compile(r"\+?([0-9]{6,15})")
_JID = re.compile(r"([0-9A-Za-z._-]+)@([a-z.]+)")

#: Seconds a send may wait for WhatsApp's acknowledgement before its outcome is
#: ``unknown`` (whatsmeow itself waits 75 s; the supervisor sends one message at a
#: time per session, so a hung send holds up the session's queue this long).
SEND_TIMEOUT = 20.0


class InvalidRecipient(ValueError):
    """``to`` is neither a phone number with its country code nor a JID."""


@dataclasses.dataclass(frozen=True)
class Recipient:
    """A recipient as a JID: ``user@server``."""

    user: str
    server: str

    @property
    def jid(self) -> str:
        return f"{self.user}@{self.server}"

    @property
    def number(self) -> str:
        """The phone number (digits) for a phone-number JID, else ""."""
        return self.user if self.server == USER_SERVER else ""


def parse_recipient(to: str) -> Recipient:
    """``"+4915112345678"``, ``"4915112345678"`` or a JID → :class:`Recipient`.

    A phone number is 6 to 15 digits (E.164), a leading "+" dropped; a JID is
    taken as given, except that a JID of one account must not name a device
    (whatsmeow refuses those). Raises :class:`InvalidRecipient`.
    """
    to = to.strip()
    if number := _NUMBER.fullmatch(to):
        return Recipient(number.group(1), USER_SERVER)
    jid = _JID.fullmatch(to)
    if jid is None:
        raise InvalidRecipient("not a phone number with its country code, nor a JID")
    user, server = jid.groups()
    if server in ACCOUNT_SERVERS and not user.isdigit():
        raise InvalidRecipient("a recipient JID names an account, not one of its devices")
    return Recipient(user, server)


def number_of(jid: str) -> str:
    """The user part of a JID without its device: ``"49151:3@s.whatsapp.net"`` → ``"49151"``."""
    return jid.partition("@")[0].partition(":")[0].partition(".")[0]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class PendingSends:
    """The sends of one connection that await WhatsApp's answer, by ``ref``.

    ``add`` starts a send's deadline (a timer from the caller's clock); the
    first of its answer (``settle``) or its deadline wins, the other is dropped,
    so each send's outcome is reported once.
    """

    def __init__(self) -> None:
        self._timers: dict[str, Cancellable] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def __contains__(self, ref: object) -> bool:
        return ref in self._timers

    def add(
        self,
        ref: str,
        start_timer: Callable[[Callable[[], None]], Cancellable],
        on_timeout: Callable[[], None],
    ) -> None:
        """Track ``ref``; ``start_timer(fire)`` arms its deadline, which calls
        ``on_timeout`` unless an answer settled it first."""

        def fire() -> None:
            if self._timers.pop(ref, None) is not None:
                on_timeout()

        old = self._timers.pop(ref, None)
        if old is not None:
            old.cancel()
        self._timers[ref] = start_timer(fire)

    def settle(self, ref: str) -> bool:
        """An answer for ``ref`` arrived: True if it is still awaited (report it),
        False if its deadline already reported it (drop it)."""
        timer = self._timers.pop(ref, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def clear(self) -> None:
        """The connection is closed: no deadline fires any more."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
