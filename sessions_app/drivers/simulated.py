"""A simulated WhatsApp, and the driver that connects to it.

Used by tests, demos and benchmarks, and labelled "simulated" in the UI wherever it
is in use. :class:`SimulatedWhatsApp` plays WhatsApp's side: it issues rotating QR
codes on WhatsApp's cadence, links devices when the simulated phone "scans", allows
one live connection per device (a second one kicks the first with "stream
replaced") and records every overlap, with both connections' owners, and every
connection count, so tests can assert that nobody ever connected a session twice.

It also carries messages as WhatsApp does (numbers that exist or not, an
offline queue, receipts after settable delays, settable faults, a record of
every message by id): see :mod:`sessions_app.drivers.simulated_messages`.

The world runs in the supervisor's process (:class:`SimulatedDriver`, unit tests
and ``make run``) or behind a loopback socket shared by many processes
(:mod:`sessions_app.drivers.simulated_service`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from sessions_app.drivers.base import (
    Connected,
    ConnectSpec,
    Disconnected,
    DriverError,
    DriverEvent,
    EventSink,
    LoggedOut,
    MessageSent,
    PairingCode,
    PairSuccess,
    QrCode,
    QrTimeout,
    Replaced,
    SendFailed,
)
from sessions_app.drivers.sends import SEND_TIMEOUT, InvalidRecipient, PendingSends
from sessions_app.drivers.simulated_devices import load_devices, save_devices
from sessions_app.drivers.simulated_messages import Clock, LoopClock, Messaging
from sessions_app.drivers.simulated_waits import WorldWaits

logger = logging.getLogger(__name__)

#: What the simulated phone can do; "message" (a peer messages the session) takes
#: a payload ``{"from": digits, "text": str, "push_name": str}``.
GESTURES = ("scan", "logout", "disconnect", "replace", "message")


@dataclasses.dataclass(frozen=True)
class SimulatedTiming:
    """WhatsApp's cadence, in seconds; tests shrink it."""

    connect_delay: float = 0.0
    first_qr_ttl: float = 60.0
    next_qr_ttl: float = 20.0
    qr_count: int = 6
    pair_delay: float = 0.2
    #: Seconds after the first QR code when the phone scans by itself; negative:
    #: never (a person, a test or ``simulate_phone`` scans). For load and chaos runs.
    auto_scan: float = -1.0
    #: Messaging: seconds from a send to WhatsApp's acknowledgement; from a
    #: message reaching its recipient to the "delivered" receipt; from that to the
    #: "read" receipt (negative: never read).
    ack_delay: float = 0.0
    delivered_delay: float = 0.2
    read_delay: float = 1.0
    #: Numbers of peers' phones that exist on WhatsApp; "*": every well-formed
    #: number (give one a ``not_on_whatsapp`` fault to make it absent).
    peers: tuple[str, ...] = ("*",)


@dataclasses.dataclass(frozen=True)
class Overlap:
    """Two live connections of one device: ``new`` kicked ``old`` ("stream replaced")."""

    session_id: int
    jid: str
    old_owner: str
    old_epoch: int
    new_owner: str
    new_epoch: int
    at: float  # wall clock, seconds


@dataclasses.dataclass
class _Connection:
    session_id: int
    jid: str
    on_event: EventSink
    owner: str = ""
    epoch: int = 0
    task: asyncio.Task[None] | None = None
    awaiting_scan: bool = False
    connected: bool = False
    scanned: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    token: int = 0
    #: Ends the transport when WhatsApp's side drops the connection (a kick).
    on_drop: Callable[[], None] | None = None
    #: A delivered message is acked once ``on_event`` returns (in process); the
    #: service's connections ack when their client says so (``Messaging.ack``).
    auto_ack: bool = True

    def emit(self, event: DriverEvent) -> None:
        self.on_event(event)


class SimulatedWhatsApp(WorldWaits):
    """WhatsApp's side of the simulation, shared by every driver in the process.

    Linked devices outlive connections, as on WhatsApp: only a logout (from the
    phone, or by the client) unlinks one, whether a connection is open or not.
    With a ``state_file`` they also outlive the process (see
    :mod:`~sessions_app.drivers.simulated_devices`).
    """

    def __init__(
        self,
        timing: SimulatedTiming | None = None,
        state_file: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.timing = timing or SimulatedTiming()
        self.state_file = state_file
        self.clock: Clock = clock or LoopClock()
        self.messages = Messaging(self, self.clock, tuple(self.timing.peers))
        #: jid -> session id that paired it
        self.devices: dict[str, int] = load_devices(state_file) if state_file else {}
        self.live: collections.Counter[int] = collections.Counter()
        self.max_live: collections.Counter[int] = collections.Counter()
        self.connects: collections.Counter[int] = collections.Counter()
        self.qr_issued: collections.Counter[int] = collections.Counter()
        self.overlaps: list[Overlap] = []
        #: When each session last became connected (wall clock): failover timings.
        self.connected_at: dict[int, float] = {}
        #: When each owner's connection last ended (wall clock): did a partitioned
        #: supervisor let go before its leases expired?
        self.ended_at: dict[str, float] = {}
        self._connections: dict[int, list[_Connection]] = collections.defaultdict(list)
        self._tokens = itertools.count(1)
        self._changed: asyncio.Condition | None = None

    # -- the connection side, used by SimulatedDriver -------------------------------

    def open(
        self,
        spec: ConnectSpec,
        on_event: EventSink,
        on_drop: Callable[[], None] | None = None,
        auto_ack: bool = True,
    ) -> _Connection:
        """A new connection for ``spec``; any live one of the same device is kicked.

        A session is one device here (before and after pairing): two live
        connections of one session are the double connection waconnect exists to
        prevent, so each is recorded as an :class:`Overlap`.
        """
        sid = spec.session_id
        conn = _Connection(
            sid,
            spec.jid,
            on_event,
            owner=spec.owner,
            epoch=spec.epoch,
            token=next(self._tokens),
            on_drop=on_drop,
            auto_ack=auto_ack,
        )
        self.live[sid] += 1
        self.connects[sid] += 1
        self.max_live[sid] = max(self.max_live[sid], self.live[sid])
        others = list(self._connections[sid])
        self._connections[sid].append(conn)
        for other in others:
            # One live connection per device: the newcomer kicks the old one.
            self.overlaps.append(
                Overlap(
                    sid, spec.jid, other.owner, other.epoch, spec.owner, spec.epoch, time.time()
                )
            )
            logger.warning(
                "stream replaced: %s (epoch %d) kicked %s (epoch %d)",
                spec.owner or "?",
                spec.epoch,
                other.owner or "?",
                other.epoch,
                extra={"session": sid},
            )
            other.emit(Replaced(sid))
            self._drop(other)
        conn.task = asyncio.get_running_loop().create_task(
            self._run(conn), name=f"simulated-whatsapp-{sid}"
        )
        self._notify()
        return conn

    def _drop(self, conn: _Connection) -> None:
        """Forget a connection now (WhatsApp's side ends it)."""
        if conn in self._connections[conn.session_id]:
            self._connections[conn.session_id].remove(conn)
            self.live[conn.session_id] -= 1
            self.ended_at[conn.owner] = time.time()
            self._notify()
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()
        if conn.on_drop is not None:
            conn.on_drop()

    async def close(self, conn: _Connection) -> None:
        """The client ends its connection (and waits until WhatsApp's side has)."""
        conn.on_drop = None
        self._drop(conn)
        if conn.task is not None and conn.task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await conn.task

    async def _run(self, conn: _Connection) -> None:
        timing = self.timing
        if timing.connect_delay:
            await asyncio.sleep(timing.connect_delay)
        if conn.jid:
            if self.devices.get(conn.jid) != conn.session_id:
                conn.emit(LoggedOut(conn.session_id, reason="device not linked"))
                return
            self._mark_connected(conn)
            return
        conn.awaiting_scan = True
        if timing.auto_scan >= 0:
            asyncio.get_running_loop().call_later(timing.auto_scan, conn.scanned.set)
        for index in range(timing.qr_count):
            ttl = timing.first_qr_ttl if index == 0 else timing.next_qr_ttl
            self.qr_issued[conn.session_id] += 1
            conn.emit(QrCode(conn.session_id, code=self._qr_payload(), valid_for=ttl))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ttl):
                    await conn.scanned.wait()
                break
        else:
            conn.awaiting_scan = False
            conn.emit(QrTimeout(conn.session_id))
            return
        conn.awaiting_scan = False
        # Eleven digits, never a leading 0 (no country code starts with one): the
        # number other sessions and the API address this device by.
        jid = f"{10**10 + secrets.randbelow(9 * 10**10)}@s.whatsapp.net"
        self.devices[jid] = conn.session_id
        self._save()
        conn.jid = jid
        conn.emit(PairSuccess(conn.session_id, jid=jid, push_name="Simulated phone"))
        if timing.pair_delay:
            await asyncio.sleep(timing.pair_delay)
        self._mark_connected(conn)

    def _mark_connected(self, conn: _Connection) -> None:
        conn.connected = True
        self.connected_at[conn.session_id] = time.time()
        conn.emit(Connected(conn.session_id))
        self.messages.flush(conn)  # what WhatsApp held while the device was away
        self._notify()

    def connected_device(self, jid: str) -> _Connection | None:
        """The logged-in connection of device ``jid``, if one is live."""
        sid = self.devices.get(jid)
        for conn in reversed(self._connections.get(sid, []) if sid is not None else []):
            if conn.jid == jid and conn.connected:
                return conn
        return None

    def is_live(self, conn: _Connection) -> bool:
        """Whether WhatsApp's side still holds ``conn`` (not kicked, not dropped)."""
        return conn in self._connections.get(conn.session_id, ())

    def emit_live(self, conn: _Connection, event: DriverEvent) -> None:
        """Report ``event`` on ``conn`` unless the connection has ended meanwhile."""
        if self.is_live(conn):
            conn.emit(event)

    def send_text(self, conn: _Connection, ref: str, to: str, text: str) -> None:
        """A send on ``conn``: see :meth:`Messaging.send_text`."""
        self.messages.send_text(conn, ref, to, text)

    @staticmethod
    def _qr_payload() -> str:
        return "https://wa.me/settings/linked_devices#SIMULATED," + secrets.token_urlsafe(48)

    def connection(self, session_id: int) -> _Connection | None:
        conns = self._connections.get(session_id) or []
        return conns[-1] if conns else None

    def forget(self, jid: str) -> None:
        """Unlink one device (the client logged out, or the phone removed it)."""
        if self.devices.pop(jid, None) is not None:
            self._save()
        self.messages.drop_device(jid)

    def unlink(self, session_id: int) -> bool:
        """Unlink every device ``session_id`` paired; False when it had none."""
        jids = [jid for jid, sid in self.devices.items() if sid == session_id]
        for jid in jids:
            del self.devices[jid]
            self.messages.drop_device(jid)
        if jids:
            self._save()
        return bool(jids)

    def _save(self) -> None:
        if self.state_file is not None:
            save_devices(self.state_file, self.devices)

    # -- the phone side: gestures a person makes --------------------------------------

    def gesture(self, session_id: int, gesture: str, payload: dict[str, Any] | None = None) -> bool:
        """Apply a phone gesture; False when it makes no sense right now.

        A logout needs no open connection: the phone unlinks the device anyway, and
        the client's next connection is refused as logged out. Nor does a peer's
        message: WhatsApp holds it until the device connects (False only when the
        session has no linked device, hence no number, or the payload is unusable).
        """
        if gesture == "message":
            return self._peer_message(session_id, payload or {})
        conn = self.connection(session_id)
        if conn is None:
            if gesture == "logout":
                return self.unlink(session_id)
            return False
        if gesture == "scan":
            if not conn.awaiting_scan:
                return False
            conn.scanned.set()
            return True
        if gesture == "logout":
            if conn.jid:
                self.forget(conn.jid)
            conn.connected = False
            conn.emit(LoggedOut(session_id, reason="removed from the phone"))
            return True
        if gesture == "disconnect":
            conn.connected = False
            conn.emit(Disconnected(session_id, reason="network dropped", will_retry=False))
            return True
        if gesture == "replace":
            # Somebody else's client took the device: not one of waconnect's overlaps.
            conn.connected = False
            conn.emit(Replaced(session_id))
            return True
        raise ValueError(f"unknown gesture {gesture!r}; expected one of {GESTURES}")

    def _peer_message(self, session_id: int, payload: dict[str, Any]) -> bool:
        try:
            message_id = self.messages.peer_message(
                session_id,
                str(payload.get("from", "")),
                str(payload.get("text", "")),
                str(payload.get("push_name", "")),
            )
        except (InvalidRecipient, ValueError) as exc:
            logger.warning(
                "simulated phone: a peer's message refused: %s", exc, extra={"session": session_id}
            )
            return False
        return message_id is not None

    def pairing_code(self, session_id: int) -> bool:
        conn = self.connection(session_id)
        if conn is None or not conn.awaiting_scan:
            return False
        code = secrets.token_hex(4).upper()
        conn.emit(PairingCode(session_id, code=f"{code[:4]}-{code[4:]}"))
        return True


class SimulatedDriver:
    """The :class:`~sessions_app.drivers.base.Driver` for :class:`SimulatedWhatsApp`.

    Keeps a call log (``calls``) so tests can assert what the supervisor asked for.
    """

    name: ClassVar[str] = "simulated"
    simulated: ClassVar[bool] = True

    def __init__(
        self, world: SimulatedWhatsApp | None = None, send_timeout: float = SEND_TIMEOUT
    ) -> None:
        self.world = world or SimulatedWhatsApp()
        self.send_timeout = send_timeout
        self.calls: list[tuple[str, int]] = []
        self._open: dict[int, _Connection] = {}
        self._pending: dict[int, PendingSends] = {}
        self._sinks: dict[int, EventSink] = {}  # on_event, past answered_once

    def reset(self) -> None:
        self.calls.clear()

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        self.calls.append(("start", spec.session_id))
        if spec.session_id in self._open:
            raise ConnectionError(f"session {spec.session_id} already has a connection")
        pending = self._pending[spec.session_id] = PendingSends()
        self._sinks[spec.session_id] = on_event
        self._open[spec.session_id] = self.world.open(spec, answered_once(pending, on_event))

    async def stop(self, session_id: int) -> None:
        self.calls.append(("stop", session_id))
        conn = self._open.pop(session_id, None)
        pending = self._pending.pop(session_id, None)
        self._sinks.pop(session_id, None)
        if pending is not None:
            pending.clear()
        if conn is not None:
            await self.world.close(conn)

    async def logout(self, session_id: int, jid: str) -> None:
        self.calls.append(("logout", session_id))
        if jid:
            self.world.forget(jid)
        await self.stop(session_id)

    async def request_pairing_code(self, session_id: int, phone: str) -> None:
        self.calls.append(("pairing_code", session_id))
        if session_id not in self._open or not self.world.pairing_code(session_id):
            raise DriverError("no QR round is open to link by phone number")

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        """See :class:`~sessions_app.drivers.base.Driver`; past ``send_timeout``
        seconds (on the world's clock) without WhatsApp's answer the outcome is
        ``SendFailed(unknown, timeout)``."""
        self.calls.append(("send", session_id))
        conn = self._open.get(session_id)
        if conn is None:
            raise DriverError("no connection is open to send on")
        if not self.world.is_live(conn):  # WhatsApp's side ended it; not closed here yet
            detail = "the connection ended"
            self._sinks[session_id](SendFailed(session_id, ref, "refused", "not_connected", detail))
            return

        def timed_out() -> None:
            detail = f"no answer from WhatsApp within {self.send_timeout:g} s"
            event = SendFailed(session_id, ref, outcome="unknown", reason="timeout", detail=detail)
            if self._open.get(session_id) is conn:  # not stopped meanwhile
                self._sinks[session_id](event)

        clock = self.world.clock
        self._pending[session_id].add(
            ref, lambda fire: clock.call_later(self.send_timeout, fire), timed_out
        )
        self.world.send_text(conn, ref, to, text)

    async def gesture(
        self, session_id: int, gesture: str, payload: dict[str, Any] | None = None
    ) -> bool:
        """A simulated phone gesture on this driver's connection of ``session_id``."""
        self.calls.append((f"gesture:{gesture}", session_id))
        if session_id not in self._open and gesture not in ("logout", "message"):
            return False  # a logout unlinks the device even with no connection open
        return self.world.gesture(session_id, gesture, payload)

    async def aclose(self) -> None:
        for session_id in list(self._open):
            await self.stop(session_id)


def answered_once(pending: PendingSends, on_event: EventSink) -> EventSink:
    """``on_event``, through which each send's answer passes once: an answer that
    comes after its deadline already reported the send is dropped."""

    def sink(event: DriverEvent) -> None:
        if isinstance(event, MessageSent | SendFailed) and not pending.settle(event.ref):
            return
        on_event(event)

    return sink
