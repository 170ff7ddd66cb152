"""The simulated WhatsApp's messaging: numbers, an offline queue, receipts, faults,
and a record of every message it carried.

It behaves like WhatsApp for what waconnect relies on:

- **Numbers.** A linked device's number is the user part of its JID. A message to
  the number of another session's linked device reaches that session; any other
  number is a peer's phone, which exists if it is in ``peers`` (``"*"``: every
  well-formed number) and has no ``not_on_whatsapp`` fault; a number that messaged
  a session exists from then on.
- **Offline queue.** A message for a session whose device is linked but not
  connected is held and delivered, in order, when it connects (WhatsApp keeps
  messages for an offline device); receipts for a sender that is offline are held
  the same way. Unlinking the device drops what was held for it.
- **Acks.** A delivered message stays on WhatsApp's side until the client acks it
  (:meth:`Messaging.ack`; whatsmeow acks once its handler returned, the simulated
  drivers once ``on_event`` returned); one not acked when its connection ends is
  delivered again when the device next connects, so a client can receive the same
  id twice (whatsmeow redelivers after reconnects too).
- **Receipts.** ``delivered`` ``delivered_delay`` seconds after the message reached
  the recipient (a session's connection, or a peer's phone at once), then
  ``read`` ``read_delay`` seconds later (negative: never), back to the sender.
- **Ids.** A send's ``ref`` is its WhatsApp message id, so a resend with the same
  ref is recognisable: :attr:`Messaging.carried` counts every acceptance of an
  id (``accepted``) and every delivery to a connection (with its owner and
  epoch), for tests that count duplicates and losses.
- **Faults**, per recipient number or for all (``"*"``), for the next N sends or
  until cleared: ``not_on_whatsapp`` and ``rate_limited`` refuse the send;
  ``no_ack`` carries it but never acknowledges it (the driver's own deadline then
  reports the outcome as unknown).

Time comes from a :class:`Clock`: the event loop's in the service and the
supervisor, :class:`ManualClock` in tests (receipt delays without sleeping).
Message texts are kept in memory only and never logged.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import heapq
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sessions_app.drivers.base import MessageReceived, MessageSent, Receipt, SendFailed
from sessions_app.drivers.sends import (
    USER_SERVER,
    Cancellable,
    InvalidRecipient,
    number_of,
    parse_recipient,
)
from sessions_app.drivers.wire import MAX_TEXT

if TYPE_CHECKING:
    from sessions_app.drivers.simulated import SimulatedWhatsApp, _Connection

logger = logging.getLogger(__name__)

FAULTS = ("not_on_whatsapp", "rate_limited", "no_ack")

#: The push name a session's device sends with its messages.
SESSION_PUSH_NAME = "Simulated phone"


class Clock(Protocol):
    """Wall-clock seconds and timers: what the messaging needs of time."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class LoopClock:
    """Real time, timers on the running event loop."""

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _Timer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time that moves only when a test says so: ``advance(seconds)`` runs every
    timer due by then, in order (timers they start included)."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01 UTC
        self.now = start
        self._due: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        timer = _Timer(callback)
        heapq.heappush(self._due, (self.now + max(0.0, delay), next(self._seq), timer))
        return timer

    def advance(self, seconds: float = 0.0) -> None:
        target = self.now + seconds
        while self._due and self._due[0][0] <= target:
            when, _, timer = heapq.heappop(self._due)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback()
        self.now = target


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A message reached a recipient: a session's connection (its lease's owner and
    epoch) or a peer's phone (``owner`` "")."""

    session_id: int | None
    owner: str
    epoch: int
    at: float  # clock seconds


@dataclasses.dataclass
class Carried:
    """One message id WhatsApp's servers accepted. ``accepted`` > 1: the same id was
    sent again (a duplicate); ``deliveries`` lists every time it reached its
    recipient. ``status``: held (waiting for the recipient's device), delivered,
    read, or dropped (the recipient's device was unlinked first)."""

    message_id: str
    sender: str  # number
    recipient: str  # number
    from_session: int | None
    to_session: int | None
    accepted_at: float
    text: str = dataclasses.field(repr=False)
    accepted: int = 1
    status: str = "held"
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)
    delivered_at: float | None = None
    read_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """For the control line: everything but the text."""
        data = dataclasses.asdict(self)
        del data["text"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Carried:
        fields = dict(data)
        fields["deliveries"] = [Delivery(**d) for d in fields["deliveries"]]
        return cls(text="", **fields)


@dataclasses.dataclass
class _Held:
    deliver: Callable[[_Connection], None]
    drop: Callable[[], None]
    reached: bool = False  # delivered at least once


def new_message_id() -> str:
    """A WhatsApp-style message id (``3EB0`` and 20 hex digits)."""
    return "3EB0" + secrets.token_hex(10).upper()


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class Messaging:
    """The messaging part of one :class:`~sessions_app.drivers.simulated.SimulatedWhatsApp`."""

    def __init__(self, world: SimulatedWhatsApp, clock: Clock, peers: tuple[str, ...]) -> None:
        self.world = world
        self.clock = clock
        self.peers: set[str] = set(peers)
        #: message id -> what was carried
        self.carried: dict[str, Carried] = {}
        self._held: dict[str, list[_Held]] = collections.defaultdict(list)
        #: device -> message id -> delivered, not acked yet (redelivered on connect)
        self._unacked: dict[str, dict[str, _Held]] = collections.defaultdict(dict)
        self._faults: dict[str, tuple[str, int | None]] = {}

    # -- settings ---------------------------------------------------------------------

    def set_fault(self, fault: str, number: str = "*", times: int | None = None) -> None:
        """Give sends to ``number`` (``"*"``: any) ``fault`` for the next ``times``
        sends (None: until cleared); ``fault`` "" clears it."""
        if fault and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        if not fault:
            self._faults.pop(number, None)
        else:
            self._faults[number] = (fault, times)

    def _take_fault(self, number: str) -> str:
        for key in (number, "*"):
            if key in self._faults:
                fault, left = self._faults[key]
                if left is not None:
                    if left <= 1:
                        del self._faults[key]
                    else:
                        self._faults[key] = (fault, left - 1)
                return fault
        return ""

    def peer_exists(self, number: str) -> bool:
        return bool(number) and ("*" in self.peers or number in self.peers)

    def device_of_number(self, number: str) -> str | None:
        """The linked device (JID) whose number is ``number``, if any."""
        if not number:
            return None
        for jid in self.world.devices:
            if number_of(jid) == number:
                return jid
        return None

    # -- a session sends --------------------------------------------------------------

    def send_text(self, conn: _Connection, ref: str, to: str, text: str) -> None:
        """A send on ``conn``; its answer (MessageSent or SendFailed) comes on
        ``conn`` through the clock, never before this returns."""
        sid = conn.session_id

        def answer(event: MessageSent | SendFailed, delay: float = 0.0) -> None:
            self.clock.call_later(delay, lambda: self.world.emit_live(conn, event))

        def refuse(reason: str, detail: str) -> None:
            answer(SendFailed(sid, ref=ref, outcome="refused", reason=reason, detail=detail))

        if not (conn.connected and conn.jid):
            return refuse("not_connected", "the connection is not logged in")
        if len(text) > MAX_TEXT:
            return refuse("error", f"text longer than {MAX_TEXT} characters")
        try:
            recipient = parse_recipient(to)
        except InvalidRecipient as exc:
            return refuse("invalid_recipient", str(exc))
        number = recipient.number
        fault = self._take_fault(number)
        if fault == "rate_limited":
            return refuse("rate_limited", "server returned error 429")
        device = self.device_of_number(number)
        if fault == "not_on_whatsapp" or (device is None and not self.peer_exists(number)):
            return refuse("not_on_whatsapp", "no account for this number")
        message_id = ref or new_message_id()
        now = self.clock.time()
        record = self._accept(message_id, conn, number, device, text, now)
        if fault != "no_ack":  # the server's ack, before any receipt
            sent = MessageSent(sid, ref=ref, message_id=message_id, timestamp=_utc(int(now)))
            answer(sent, self.world.timing.ack_delay)
        sender_jid = f"{number_of(conn.jid)}@{USER_SERVER}"
        if device is not None and self.world.devices.get(device) != sid:
            self._to_device(device, record, sender_jid, SESSION_PUSH_NAME, conn.jid)
        else:  # a peer's phone (or a note to self): it has it at once
            record.deliveries.append(Delivery(None, "", 0, now))
            self._delivered(record, now, conn.jid)

    def _accept(
        self,
        message_id: str,
        conn: _Connection | None,
        recipient: str,
        device: str | None,
        text: str,
        now: float,
    ) -> Carried:
        record = self.carried.get(message_id)
        if record is not None:  # the same id again: WhatsApp carries it again
            record.accepted += 1
            logger.warning(
                "simulated WhatsApp: message %s accepted %d times",
                message_id,
                record.accepted,
                extra={"session": conn.session_id if conn else None},
            )
            return record
        record = Carried(
            message_id=message_id,
            sender=number_of(conn.jid) if conn else "",
            recipient=recipient,
            from_session=conn.session_id if conn else None,
            to_session=self.world.devices.get(device) if device else None,
            accepted_at=now,
            text=text,
        )
        self.carried[message_id] = record
        self.world._notify()
        return record

    # -- a peer sends -----------------------------------------------------------------

    def peer_message(
        self, session_id: int, sender: str, text: str, push_name: str = ""
    ) -> str | None:
        """A peer's phone (number ``sender``) messages ``session_id``; the message id,
        or None when the session has no linked device (no number to message).
        Raises :class:`~sessions_app.drivers.sends.InvalidRecipient` for a sender
        that is not a phone number, ValueError for a text over WhatsApp's limit."""
        number = parse_recipient(sender).number
        if not number:
            raise InvalidRecipient("a peer is a phone number")
        if len(text) > MAX_TEXT:
            raise ValueError(f"text longer than {MAX_TEXT} characters")
        devices = [jid for jid, sid in self.world.devices.items() if sid == session_id]
        if not devices:
            return None
        self.peers.add(number)  # it has an account: it just used it
        device = devices[-1]
        record = Carried(
            message_id=new_message_id(),
            sender=number,
            recipient=number_of(device),
            from_session=None,
            to_session=session_id,
            accepted_at=self.clock.time(),
            text=text,
        )
        self.carried[record.message_id] = record
        self.world._notify()
        self._to_device(device, record, f"{number}@{USER_SERVER}", push_name, "")
        return record.message_id

    # -- delivery ---------------------------------------------------------------------

    def _to_device(
        self, device: str, record: Carried, sender_jid: str, push_name: str, back_to: str
    ) -> None:
        """Deliver ``record`` to the session of ``device`` now, or when it connects;
        receipts go back to the device ``back_to`` ("" for a peer)."""

        def deliver(conn: _Connection) -> None:
            self._unacked[device][record.message_id] = item
            conn.emit(
                MessageReceived(
                    conn.session_id,
                    message_id=record.message_id,
                    chat=sender_jid,
                    sender=sender_jid,
                    sender_phone=sender_jid,
                    from_me=False,
                    timestamp=_utc(record.accepted_at),
                    push_name=push_name,
                    kind="text",
                    text=record.text,
                )
            )
            if conn.auto_ack:  # in process: on_event has returned, the client has it
                self.ack(device, record.message_id)
            at = self.clock.time()
            record.deliveries.append(Delivery(conn.session_id, conn.owner, conn.epoch, at))
            if not item.reached:  # a redelivery (never acked) sends no new receipts
                item.reached = True
                self._delivered(record, at, back_to)

        def drop() -> None:
            if record.status == "held":
                record.status = "dropped"

        item = _Held(deliver, drop)
        self._hold_or_give(device, item)

    def _hold_or_give(self, device: str, item: _Held) -> None:
        conn = self.world.connected_device(device)
        if conn is not None and not self._held.get(device):
            item.deliver(conn)
        else:
            self._held[device].append(item)

    def _delivered(self, record: Carried, at: float, back_to: str) -> None:
        """``record`` reached its recipient (once per acceptance): the receipts follow."""
        if record.status in ("held", "dropped"):
            record.status = "delivered"
        if record.delivered_at is None:
            record.delivered_at = at
        timing = self.world.timing
        self.clock.call_later(
            timing.delivered_delay, lambda: self._receipt(record, "delivered", back_to)
        )
        if timing.read_delay >= 0:
            self.clock.call_later(
                timing.delivered_delay + timing.read_delay,
                lambda: self._receipt(record, "read", back_to),
            )

    def _receipt(self, record: Carried, status: str, back_to: str) -> None:
        now = self.clock.time()
        if status == "read":
            record.status = "read"
            record.read_at = record.read_at or now
        if not back_to or back_to not in self.world.devices:
            return
        chat = f"{record.recipient}@{USER_SERVER}"

        def deliver(conn: _Connection) -> None:
            conn.emit(
                Receipt(
                    conn.session_id,
                    message_ids=(record.message_id,),
                    status=status,
                    timestamp=_utc(int(now)),
                    chat=chat,
                )
            )

        self._hold_or_give(back_to, _Held(deliver, lambda: None))

    def ack(self, jid: str, message_id: str) -> None:
        """The client of device ``jid`` has message ``message_id``: WhatsApp forgets it."""
        unacked = self._unacked.get(jid)
        if unacked is not None:
            unacked.pop(message_id, None)

    def unacked_count(self, jid: str) -> int:
        return len(self._unacked.get(jid, ()))

    def flush(self, conn: _Connection) -> None:
        """``conn`` is connected: hand it what its device never acked, then what was
        held for it, in order."""
        items = list(self._unacked.pop(conn.jid, {}).values()) + self._held.pop(conn.jid, [])
        for index, item in enumerate(items):
            if not conn.connected:  # dropped while being handed its backlog
                self._held[conn.jid][:0] = items[index:]
                return
            item.deliver(conn)

    def drop_device(self, jid: str) -> None:
        """``jid`` was unlinked: what was held for it never reaches it."""
        for item in self._held.pop(jid, []):
            item.drop()
        self._unacked.pop(jid, None)

    def held_count(self, jid: str) -> int:
        return len(self._held.get(jid, ()))
