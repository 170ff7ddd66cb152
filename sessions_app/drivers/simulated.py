"""A simulated WhatsApp, and the driver that connects to it.

Used by tests, demos and benchmarks, and labelled "simulated" in the UI wherever it
is in use. :class:`SimulatedWhatsApp` plays WhatsApp's side: it issues rotating QR
codes on WhatsApp's cadence, links devices when the simulated phone "scans", allows
one live connection per device (a second one kicks the first with "stream
replaced") and records every overlap, with both connections' owners, and every
connection count, so tests can assert that nobody ever connected a session twice.

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
from collections.abc import Callable, Iterable
from pathlib import Path
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
from sessions_app.drivers.simulated_devices import load_devices, save_devices

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
    #: Seconds after the first QR code when the phone scans by itself; negative:
    #: never (a person, a test or ``simulate_phone`` scans). For load and chaos runs.
    auto_scan: float = -1.0


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

    def emit(self, event: DriverEvent) -> None:
        self.on_event(event)


class SimulatedWhatsApp:
    """WhatsApp's side of the simulation, shared by every driver in the process.

    Linked devices outlive connections, as on WhatsApp: only a logout (from the
    phone, or by the client) unlinks one, whether a connection is open or not.
    With a ``state_file`` they also outlive the process (see
    :mod:`~sessions_app.drivers.simulated_devices`).
    """

    def __init__(
        self, timing: SimulatedTiming | None = None, state_file: Path | None = None
    ) -> None:
        self.timing = timing or SimulatedTiming()
        self.state_file = state_file
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

    async def until_live(self, session_id: int, count: int) -> None:
        """Wait until ``session_id`` has exactly ``count`` live connections."""
        await self._until(lambda: self.live[session_id] == count)

    def connected_sessions(self, exclude_owner: str = "") -> set[int]:
        """Sessions with a live connection that WhatsApp considers logged in
        (opened by anyone but ``exclude_owner``, when given)."""
        return {
            sid
            for sid, conns in self._connections.items()
            if any(c.connected and not (exclude_owner and c.owner == exclude_owner) for c in conns)
        }

    async def until_connected(
        self, session_ids: Iterable[int], timeout: float, exclude_owner: str = ""
    ) -> set[int]:
        """Wait until every session in ``session_ids`` is connected; return the missing."""
        wanted = set(session_ids)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(lambda: wanted <= self.connected_sessions(exclude_owner))
        return wanted - self.connected_sessions(exclude_owner)

    async def until_idle(self, session_ids: Iterable[int], timeout: float) -> set[int]:
        """Wait until no session in ``session_ids`` has a live connection; return the rest."""
        wanted = set(session_ids)

        def busy() -> set[int]:
            return {sid for sid in wanted if self.live[sid]}

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(lambda: not busy())
        return busy()

    def live_of(self, owner: str) -> int:
        """How many live connections ``owner`` holds."""
        return sum(c.owner == owner for conns in self._connections.values() for c in conns)

    async def until_owner_idle(self, owner: str, timeout: float) -> int:
        """Wait until ``owner`` holds no live connection; return how many it still holds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(lambda: not self.live_of(owner))
        return self.live_of(owner)

    async def _until(self, predicate: Callable[[], bool]) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(predicate)

    def _notify(self) -> None:
        if self._changed is None:
            return
        changed = self._changed

        async def notify() -> None:
            async with changed:
                changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    # -- the connection side, used by SimulatedDriver -------------------------------

    def open(
        self,
        spec: ConnectSpec,
        on_event: EventSink,
        on_drop: Callable[[], None] | None = None,
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
        jid = f"{secrets.randbelow(10**11):011d}@s.whatsapp.net"
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
        self._notify()

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

    def unlink(self, session_id: int) -> bool:
        """Unlink every device ``session_id`` paired; False when it had none."""
        jids = [jid for jid, sid in self.devices.items() if sid == session_id]
        for jid in jids:
            del self.devices[jid]
        if jids:
            self._save()
        return bool(jids)

    def _save(self) -> None:
        if self.state_file is not None:
            save_devices(self.state_file, self.devices)

    # -- the phone side: gestures a person makes --------------------------------------

    def gesture(self, session_id: int, gesture: str) -> bool:
        """Apply a phone gesture; False when it makes no sense right now.

        A logout needs no open connection: the phone unlinks the device anyway, and
        the client's next connection is refused as logged out.
        """
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
        if session_id not in self._open and gesture != "logout":
            return False  # a logout unlinks the device even with no connection open
        return self.world.gesture(session_id, gesture)

    async def aclose(self) -> None:
        for session_id in list(self._open):
            await self.stop(session_id)
