"""A simulated WhatsApp, and the driver that connects to it.

Used by tests, demos and benchmarks, and labelled "simulated" in the UI wherever it
is in use. :class:`SimulatedWhatsApp` plays WhatsApp's side: it issues rotating QR
codes on WhatsApp's cadence, links devices when the simulated phone "scans", allows
one live connection per device (a second one kicks the first with "stream
replaced") and records every overlap and every connection count, so tests can
assert that nobody ever connected a session twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import secrets
from typing import ClassVar

from sessions_app.drivers.base import (
    Connected,
    ConnectSpec,
    Disconnected,
    DriverError,
    DriverEvent,
    EventSink,
    LoggedOut,
    PairingCode,
    PairSuccess,
    QrCode,
    QrTimeout,
    Replaced,
)

logger = logging.getLogger(__name__)

GESTURES = ("scan", "logout", "disconnect", "replace")


@dataclasses.dataclass(frozen=True)
class SimulatedTiming:
    """WhatsApp's cadence, in seconds; tests shrink it."""

    connect_delay: float = 0.0
    first_qr_ttl: float = 60.0
    next_qr_ttl: float = 20.0
    qr_count: int = 6
    pair_delay: float = 0.2


@dataclasses.dataclass
class _Connection:
    session_id: int
    jid: str
    on_event: EventSink
    task: asyncio.Task[None] | None = None
    awaiting_scan: bool = False
    scanned: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    token: int = 0

    def emit(self, event: DriverEvent) -> None:
        self.on_event(event)


class SimulatedWhatsApp:
    """WhatsApp's side of the simulation, shared by every driver in the process."""

    def __init__(self, timing: SimulatedTiming | None = None) -> None:
        self.timing = timing or SimulatedTiming()
        self.devices: dict[str, int] = {}  # jid -> session id that paired it
        self.live: collections.Counter[int] = collections.Counter()
        self.max_live: collections.Counter[int] = collections.Counter()
        self.connects: collections.Counter[int] = collections.Counter()
        self.qr_issued: collections.Counter[int] = collections.Counter()
        self.overlaps: list[tuple[int, str]] = []
        self._connections: dict[int, list[_Connection]] = collections.defaultdict(list)
        self._tokens = itertools.count(1)
        self._changed: asyncio.Condition | None = None

    async def until_live(self, session_id: int, count: int) -> None:
        """Wait until ``session_id`` has exactly ``count`` live connections."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.live[session_id] == count)

    def _notify(self) -> None:
        if self._changed is None:
            return
        changed = self._changed

        async def notify() -> None:
            async with changed:
                changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    # -- the connection side, used by SimulatedDriver -------------------------------

    def open(self, spec: ConnectSpec, on_event: EventSink) -> _Connection:
        conn = _Connection(spec.session_id, spec.jid, on_event, token=next(self._tokens))
        sid = spec.session_id
        self.live[sid] += 1
        self.connects[sid] += 1
        self.max_live[sid] = max(self.max_live[sid], self.live[sid])
        others = [c for c in self._connections[sid] if c.jid == spec.jid and spec.jid]
        self._connections[sid].append(conn)
        for other in others:
            # One live connection per device: the newcomer kicks the old one.
            self.overlaps.append((sid, spec.jid))
            other.emit(Replaced(sid))
        conn.task = asyncio.get_running_loop().create_task(
            self._run(conn), name=f"simulated-whatsapp-{sid}"
        )
        self._notify()
        return conn

    async def close(self, conn: _Connection) -> None:
        if conn in self._connections[conn.session_id]:
            self._connections[conn.session_id].remove(conn)
            self.live[conn.session_id] -= 1
            self._notify()
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()
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
            conn.emit(Connected(conn.session_id))
            return
        conn.awaiting_scan = True
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
        jid = f"{secrets.randbelow(10**11):011d}@s.whatsapp.net"
        self.devices[jid] = conn.session_id
        conn.jid = jid
        conn.emit(PairSuccess(conn.session_id, jid=jid, push_name="Simulated phone"))
        if timing.pair_delay:
            await asyncio.sleep(timing.pair_delay)
        conn.emit(Connected(conn.session_id))

    @staticmethod
    def _qr_payload() -> str:
        return "https://wa.me/settings/linked_devices#SIMULATED," + secrets.token_urlsafe(48)

    def connection(self, session_id: int) -> _Connection | None:
        conns = self._connections.get(session_id) or []
        return conns[-1] if conns else None

    def forget(self, jid: str) -> None:
        self.devices.pop(jid, None)

    # -- the phone side: gestures a person makes --------------------------------------

    def gesture(self, session_id: int, gesture: str) -> bool:
        """Apply a phone gesture; False when it makes no sense right now."""
        conn = self.connection(session_id)
        if conn is None:
            return False
        if gesture == "scan":
            if not conn.awaiting_scan:
                return False
            conn.scanned.set()
            return True
        if gesture == "logout":
            if conn.jid:
                self.forget(conn.jid)
            conn.emit(LoggedOut(session_id, reason="removed from the phone"))
            return True
        if gesture == "disconnect":
            conn.emit(Disconnected(session_id, reason="network dropped", will_retry=False))
            return True
        if gesture == "replace":
            self.overlaps.append((session_id, conn.jid))
            conn.emit(Replaced(session_id))
            return True
        raise ValueError(f"unknown gesture {gesture!r}; expected one of {GESTURES}")

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

    def __init__(self, world: SimulatedWhatsApp | None = None) -> None:
        self.world = world or SimulatedWhatsApp()
        self.calls: list[tuple[str, int]] = []
        self._open: dict[int, _Connection] = {}

    def reset(self) -> None:
        self.calls.clear()

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        self.calls.append(("start", spec.session_id))
        if spec.session_id in self._open:
            raise ConnectionError(f"session {spec.session_id} already has a connection")
        self._open[spec.session_id] = self.world.open(spec, on_event)

    async def stop(self, session_id: int) -> None:
        self.calls.append(("stop", session_id))
        conn = self._open.pop(session_id, None)
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

    async def gesture(self, session_id: int, gesture: str) -> bool:
        """A simulated phone gesture on this driver's connection of ``session_id``."""
        self.calls.append((f"gesture:{gesture}", session_id))
        if session_id not in self._open:
            return False
        return self.world.gesture(session_id, gesture)

    async def aclose(self) -> None:
        for session_id in list(self._open):
            await self.stop(session_id)
