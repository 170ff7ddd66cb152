"""The simulated WhatsApp as a service on the loopback interface.

Several supervisor processes (and the tests and benchmarks that watch them) need
one WhatsApp between them, or a double connection made by two processes could
never be seen. This module serves one :class:`SimulatedWhatsApp` world over TCP:
every connection a :class:`~sessions_app.drivers.simulated_remote.RemoteSimulatedDriver`
opens is one WhatsApp connection of one device, and, as with WhatsApp, a second
live connection of a device kicks the first with "stream replaced". The world
records each such overlap with both connections' owners and fencing numbers.

A connection starts with ``hello`` and then carries the driver events of
:mod:`sessions_app.drivers.wire` down and a few commands up (``stop``, ``logout``,
``gesture``, ``pair_phone``, ``send``). A connection that starts with ``control``
is a test's or benchmark's: it reads the counters, makes phone gestures, lets a
peer message a session, sets messaging faults and delays, reads the record of
every message carried, and waits for sessions to be connected. Started by
``manage.py simulated_whatsapp`` and by the test fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from sessions_app.drivers import wire
from sessions_app.drivers.base import ConnectSpec
from sessions_app.drivers.simulated import GESTURES, Overlap, SimulatedWhatsApp
from sessions_app.drivers.simulated_messages import Carried

logger = logging.getLogger(__name__)

#: What clients send: the first line (``hello`` or ``control``), then commands.
CLIENT_MESSAGES: dict[str, dict[str, type]] = {
    "hello": {"session": int, "jid": str, "owner": str, "epoch": int},
    "stop": {},
    "logout": {},
    "ping": {},
    "gesture": {"gesture": str},  # and "payload" (an object) for "message"
    "pair_phone": {"phone": str},
    "send": {"ref": str, "to": str, "text": str},
    "ack": {"message_id": str},  # the client has a delivered message
    "control": {},
    "stats": {},
    "phone": {"session": int, "gesture": str},  # and "payload", as "gesture"
    "peer_message": {"session": int, "sender": str, "text": str, "push_name": str},
    "carried": {},
    "fault": {"fault": str, "number": str, "times": int},
    "peer": {"number": str, "exists": bool},
    "delays": {"ack_delay": float, "delivered_delay": float, "read_delay": float},
    "forget": {"jid": str},
    "wait_connected": {"sessions": list, "timeout": float, "exclude_owner": str},
    "wait_idle": {"sessions": list, "timeout": float},
    "wait_owner_idle": {"owner": str, "timeout": float},
}

#: What the service sends on a device connection: driver events and replies.
SERVICE_MESSAGES: dict[str, dict[str, type]] = {**wire.EVENTS, "done": {"ok": bool}}

#: Control replies can be large (counters of thousands of sessions).
CONTROL_LIMIT = 64 * 1024 * 1024


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:7480"`` → ``("127.0.0.1", 7480)``; a clear error otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT for the simulated WhatsApp service, got {address!r}")
    return host, int(port)


class SimulatedWhatsAppService:
    """Serves one :class:`SimulatedWhatsApp` world on ``host:port`` (0: any free port).

    Like WhatsApp, it drops a client that sends nothing (not even a keep-alive ping)
    for ``client_timeout`` seconds. That stands in for the neonize worker's own
    heartbeat deadline: a frozen supervisor's connections end before its leases
    can pass to another supervisor. ``None``: never.
    """

    def __init__(
        self,
        world: SimulatedWhatsApp,
        host: str = "127.0.0.1",
        port: int = 0,
        client_timeout: float | None = None,
    ) -> None:
        self.world = world
        self.host = host
        self.port = port
        self.client_timeout = client_timeout
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=2 * wire.MAX_LINE
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.port = port
        return host, port

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            line = await reader.readline()
            if not line:  # e.g. its connect was cancelled, or its process exited, mid-way
                logger.debug("simulated WhatsApp: a client left before its first message")
                return
            first = wire.decode(line, CLIENT_MESSAGES)
            if first["t"] == "hello":
                await self._serve_device(first, reader, writer)
            elif first["t"] == "control":
                await self._serve_control(reader, writer)
            else:
                raise wire.ProtocolError(f"a connection cannot start with {first['t']!r}")
        except ValueError as exc:  # ProtocolError, or a line over the limit
            logger.warning("simulated WhatsApp: dropped a client: %s", exc)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve_device(
        self, hello: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        spec = ConnectSpec(
            hello["session"], jid=hello["jid"], owner=hello["owner"], epoch=hello["epoch"]
        )

        def send(event: Any) -> None:
            if not writer.is_closing():
                writer.write(wire.from_driver_event(event))

        conn = self.world.open(spec, send, on_drop=writer.close, auto_ack=False)
        said_bye = False
        try:
            while line := await self._next_line(reader, spec):
                message = wire.decode(line, CLIENT_MESSAGES)
                kind = message["t"]
                if kind == "ping":
                    continue
                if kind in ("stop", "logout"):
                    if kind == "logout" and conn.jid:
                        self.world.forget(conn.jid)
                    said_bye = True
                    break
                if kind == "ack":
                    self.world.messages.ack(conn.jid, message["message_id"])
                    continue
                if kind == "send":  # answered by a "sent" or "send_failed" event
                    self.world.send_text(conn, message["ref"], message["to"], message["text"])
                    continue
                if kind == "gesture":
                    ok = self._gesture(spec.session_id, message["gesture"], message.get("payload"))
                elif kind == "pair_phone":
                    ok = self.world.pairing_code(spec.session_id)
                else:
                    raise wire.ProtocolError(f"{kind!r} is not a device command")
                send_raw(writer, wire.encode("done", ok=ok))
        finally:
            await self.world.close(conn)
        if said_bye and not writer.is_closing():
            writer.write(wire.encode("stopped"))
            await writer.drain()

    async def _next_line(self, reader: asyncio.StreamReader, spec: ConnectSpec) -> bytes:
        """The client's next line; b"" once it hung up or fell silent too long."""
        try:
            async with asyncio.timeout(self.client_timeout):
                return await reader.readline()
        except TimeoutError:
            logger.warning(
                "simulated WhatsApp: no keep-alive from %s for %ss; dropping its connection",
                spec.owner or "?",
                self.client_timeout,
                extra={"session": spec.session_id},
            )
            return b""

    def _gesture(self, session_id: int, gesture: str, payload: Any = None) -> bool:
        payload = payload if isinstance(payload, dict) else None
        return gesture in GESTURES and self.world.gesture(session_id, gesture, payload)

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while line := await reader.readline():
            message = wire.decode(line, CLIENT_MESSAGES)
            kind = message["t"]
            if kind == "stats":
                reply = wire.encode("stats", **self.stats())
            elif kind == "phone":
                ok = self._gesture(message["session"], message["gesture"], message.get("payload"))
                reply = wire.encode("done", ok=ok)
            elif kind in ("peer_message", "carried", "fault", "peer", "delays"):
                reply = self._messaging(message)
            elif kind == "forget":
                self.world.forget(message["jid"])
                reply = wire.encode("done", ok=True)
            elif kind == "wait_connected":
                missing = await self.world.until_connected(
                    message["sessions"], message["timeout"], message["exclude_owner"]
                )
                reply = wire.encode("waited", missing=sorted(missing))
            elif kind == "wait_idle":
                busy = await self.world.until_idle(message["sessions"], message["timeout"])
                reply = wire.encode("waited", missing=sorted(busy))
            elif kind == "wait_owner_idle":
                live = await self.world.until_owner_idle(message["owner"], message["timeout"])
                ended_at = self.world.ended_at.get(message["owner"], 0.0)
                reply = wire.encode("owner_idle", live=live, ended_at=ended_at)
            else:
                raise wire.ProtocolError(f"{kind!r} is not a control command")
            send_raw(writer, reply)
            await writer.drain()

    def _messaging(self, message: dict[str, Any]) -> bytes:
        """The control commands about messages (texts never logged)."""
        messages = self.world.messages
        kind = message["t"]
        if kind == "peer_message":
            try:
                message_id = messages.peer_message(
                    message["session"], message["sender"], message["text"], message["push_name"]
                )
            except ValueError:  # InvalidRecipient, or a text over the limit
                message_id = None
            return wire.encode("done", ok=message_id is not None, message_id=message_id or "")
        if kind == "carried":
            return wire.encode("carried", messages=[c.as_dict() for c in messages.carried.values()])
        if kind == "fault":
            times = message["times"] or None
            try:
                messages.set_fault(message["fault"], message["number"] or "*", times)
            except ValueError as exc:
                raise wire.ProtocolError(str(exc)) from None
        elif kind == "peer":
            if message["exists"]:
                messages.peers.add(message["number"])
            else:
                messages.peers.discard(message["number"])
        elif kind == "delays":
            self.world.timing = dataclasses.replace(
                self.world.timing,
                ack_delay=message["ack_delay"],
                delivered_delay=message["delivered_delay"],
                read_delay=message["read_delay"],
            )
        return wire.encode("done", ok=True)

    def stats(self) -> dict[str, Any]:
        world = self.world
        return {
            "live": dict(world.live),
            "max_live": dict(world.max_live),
            "connects": dict(world.connects),
            "qr_issued": dict(world.qr_issued),
            "connected": sorted(world.connected_sessions()),
            "connected_at": dict(world.connected_at),
            "overlaps": [dataclasses.asdict(o) for o in world.overlaps],
        }


def send_raw(writer: asyncio.StreamWriter, line: bytes) -> None:
    if not writer.is_closing():
        writer.write(line)


@dataclasses.dataclass(frozen=True)
class ServiceStats:
    """The service's counters, keyed by session id."""

    live: dict[int, int]
    max_live: dict[int, int]
    connects: dict[int, int]
    qr_issued: dict[int, int]
    connected: set[int]
    connected_at: dict[int, float]  # when each session last became connected (wall clock)
    overlaps: list[Overlap]

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ServiceStats:
        def counts(name: str) -> dict[int, int]:
            return {int(k): int(v) for k, v in message[name].items()}

        return cls(
            live=counts("live"),
            max_live=counts("max_live"),
            connects=counts("connects"),
            qr_issued=counts("qr_issued"),
            connected=set(message["connected"]),
            connected_at={int(k): float(v) for k, v in message["connected_at"].items()},
            overlaps=[Overlap(**o) for o in message["overlaps"]],
        )


def _read_outcome(exchange: asyncio.Future[bytes]) -> None:
    """Retrieve an exchange's error even if its caller was cancelled (no "never
    retrieved" warning; the caller, if still waiting, gets it anyway)."""
    if not exchange.cancelled():
        exchange.exception()


class ServiceControl:
    """A test's or benchmark's line to the service: counters, phone gestures, waits."""

    def __init__(self, address: str) -> None:
        self.host, self.port = parse_address(address)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._exchanges: set[asyncio.Future[bytes]] = set()

    async def __aenter__(self) -> ServiceControl:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=CONTROL_LIMIT
        )
        self._writer.write(wire.encode("control"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()

    async def _ask(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send one command and read its answer; the line carries one at a time.

        A caller cancelled while it waits does not leave its answer on the line for
        the next command to read as its own: the exchange goes on in a task of its
        own (shielded) until the answer is read, and the next one waits for it.
        The command itself is carried out either way, so a cancelled wait keeps
        the line busy until its own timeout."""
        assert self._reader is not None and self._writer is not None, "use async with"
        exchange = asyncio.ensure_future(self._exchange(wire.encode(kind, **fields)))
        self._exchanges.add(exchange)  # referenced until it ends, even if nobody awaits it
        exchange.add_done_callback(self._exchanges.discard)
        exchange.add_done_callback(_read_outcome)
        line = await asyncio.shield(exchange)
        if not line:
            raise ConnectionError("the simulated WhatsApp service closed the control line")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def _exchange(self, request: bytes) -> bytes:
        assert self._reader is not None and self._writer is not None
        async with self._lock:
            self._writer.write(request)
            return await self._reader.readline()

    async def stats(self) -> ServiceStats:
        return ServiceStats.from_message(await self._ask("stats"))

    async def phone(
        self, session_id: int, gesture: str, payload: dict[str, Any] | None = None
    ) -> bool:
        """Make the phone of ``session_id`` scan, log out, drop or replace (or a
        peer message it: gesture "message" with its payload)."""
        fields: dict[str, Any] = {"session": session_id, "gesture": gesture}
        if payload is not None:
            fields["payload"] = payload
        return bool((await self._ask("phone", **fields))["ok"])

    async def peer_message(
        self, session_id: int, sender: str, text: str, push_name: str = ""
    ) -> str | None:
        """A peer's phone (number ``sender``) messages the session: the message's
        WhatsApp id, or None when the session has no linked device (no number to
        message) or the sender is not a phone number."""
        reply = await self._ask(
            "peer_message", session=session_id, sender=sender, text=text, push_name=push_name
        )
        return str(reply["message_id"]) if reply["ok"] else None

    async def carried(self) -> list[Carried]:
        """Every message the service carried, by id (texts left out): ``accepted``
        > 1 is a duplicate send; ``deliveries`` says where and when it arrived."""
        reply = await self._ask("carried")
        return [Carried.from_dict(c) for c in reply["messages"]]

    async def fault(self, fault: str, number: str = "*", times: int | None = None) -> None:
        """Give sends to ``number`` (``"*"``: any) ``fault`` (not_on_whatsapp,
        rate_limited, no_ack) for the next ``times`` sends (None: until cleared);
        ``fault`` "" clears it."""
        await self._ask("fault", fault=fault, number=number, times=times or 0)

    async def peer(self, number: str, exists: bool = True) -> None:
        """Make a peer's number exist on WhatsApp, or not (when peers aren't "*")."""
        await self._ask("peer", number=number, exists=exists)

    async def delays(self, ack_delay: float, delivered_delay: float, read_delay: float) -> None:
        """Set the messaging delays (see ``SimulatedTiming``); read_delay < 0: never read."""
        await self._ask(
            "delays", ack_delay=ack_delay, delivered_delay=delivered_delay, read_delay=read_delay
        )

    async def forget(self, jid: str) -> None:
        await self._ask("forget", jid=jid)

    async def wait_connected(
        self, session_ids: Iterable[int], timeout: float, exclude_owner: str = ""
    ) -> set[int]:
        """Wait until every session is connected (by anyone but ``exclude_owner``);
        return those that were not in time."""
        reply = await self._ask(
            "wait_connected",
            sessions=list(session_ids),
            timeout=timeout,
            exclude_owner=exclude_owner,
        )
        return set(reply["missing"])

    async def wait_idle(self, session_ids: Iterable[int], timeout: float) -> set[int]:
        """Wait until no session has a live connection; return those still connected."""
        reply = await self._ask("wait_idle", sessions=list(session_ids), timeout=timeout)
        return set(reply["missing"])

    async def wait_owner_idle(self, owner: str, timeout: float) -> tuple[int, float]:
        """Wait until ``owner`` holds no live connection. Returns how many it still
        holds and when (wall clock) the last of its connections ended."""
        reply = await self._ask("wait_owner_idle", owner=owner, timeout=timeout)
        return int(reply["live"]), float(reply["ended_at"])
