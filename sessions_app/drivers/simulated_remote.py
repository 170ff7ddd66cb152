"""The simulated driver that connects to the simulated WhatsApp service over TCP.

Selected with ``WACONNECT_DRIVER=simulated`` and ``WACONNECT_SIM_SERVICE=host:port``.
One TCP connection per session connection, as a WhatsApp client holds one
WebSocket per linked device: when a supervisor process dies, the kernel closes
its connections, and when it is frozen (SIGSTOP) they stay open, exactly the
cases the leases must handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from typing import ClassVar

from sessions_app.drivers import wire
from sessions_app.drivers.base import (
    ConnectError,
    ConnectSpec,
    Disconnected,
    DriverError,
    EventSink,
    LoggedOut,
    QrTimeout,
    Replaced,
)
from sessions_app.drivers.simulated_service import (
    SERVICE_MESSAGES,
    ServiceControl,
    parse_address,
)

logger = logging.getLogger(__name__)

#: How long a polite goodbye (or a reply) may take before the socket is just closed.
REPLY_TIMEOUT = 2.0

#: Seconds between keep-alive pings on every connection (the service drops a
#: client that falls silent, as WhatsApp does).
KEEPALIVE = 5.0


@dataclasses.dataclass
class _Link:
    session_id: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    on_event: EventSink
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    ended: bool = False  # the service ended the connection with a reason
    stopped: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    replies: deque[asyncio.Future[bool]] = dataclasses.field(default_factory=deque)


class RemoteSimulatedDriver:
    """A :class:`~sessions_app.drivers.base.Driver` for the simulated WhatsApp service."""

    name: ClassVar[str] = "simulated"
    simulated: ClassVar[bool] = True

    def __init__(self, address: str, keepalive: float = KEEPALIVE) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.keepalive = keepalive
        self._links: dict[int, _Link] = {}
        self._pinger: asyncio.Task[None] | None = None

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        if spec.session_id in self._links:
            raise ConnectionError(f"session {spec.session_id} already has a connection")
        reader, writer = await asyncio.open_connection(
            self.host, self.port, limit=2 * wire.MAX_LINE
        )
        link = _Link(spec.session_id, reader, writer, on_event)
        self._links[spec.session_id] = link
        writer.write(
            wire.encode(
                "hello", session=spec.session_id, jid=spec.jid, owner=spec.owner, epoch=spec.epoch
            )
        )
        link.task = asyncio.get_running_loop().create_task(
            self._read(link), name=f"simulated-link-{spec.session_id}"
        )
        if self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(
                self._ping_forever(), name="simulated-keepalive"
            )

    async def _ping_forever(self) -> None:
        ping = wire.encode("ping")
        while True:
            await asyncio.sleep(self.keepalive)
            for link in list(self._links.values()):
                if not link.stopping and not link.writer.is_closing():
                    link.writer.write(ping)

    async def _read(self, link: _Link) -> None:
        sid = link.session_id
        try:
            while line := await link.reader.readline():
                message = wire.decode(line, SERVICE_MESSAGES)
                kind = message["t"]
                if kind == "stopped":
                    break
                if kind == "done":
                    if link.replies:
                        link.replies.popleft().set_result(message["ok"])
                    continue
                event = wire.to_driver_event(sid, message)
                if event is None or link.stopping:
                    continue
                if isinstance(event, Replaced | LoggedOut | QrTimeout):
                    link.ended = True
                link.on_event(event)
        except ValueError as exc:
            if not link.stopping:
                link.on_event(ConnectError(sid, f"simulated WhatsApp: {exc}"))
                link.ended = True
        except ConnectionError:
            pass
        finally:
            link.stopped.set()
            for reply in link.replies:
                if not reply.done():
                    reply.set_result(False)
        if not (link.stopping or link.ended):
            link.on_event(Disconnected(sid, reason="simulated WhatsApp closed the connection"))

    async def _command(self, session_id: int, kind: str, **fields: str) -> bool:
        link = self._links.get(session_id)
        if link is None or link.stopped.is_set():
            return False
        reply: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        link.replies.append(reply)
        link.writer.write(wire.encode(kind, **fields))
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await reply
        except TimeoutError:
            return False

    async def stop(self, session_id: int) -> None:
        await self._close(session_id, "stop")

    async def _close(self, session_id: int, goodbye: str) -> None:
        link = self._links.pop(session_id, None)
        if link is None:
            return
        link.stopping = True
        with contextlib.suppress(ConnectionError, TimeoutError):
            if not link.stopped.is_set():
                link.writer.write(wire.encode(goodbye))
                # WhatsApp has let go of the device once it said so: only then may
                # the next connection of this session start without an overlap.
                async with asyncio.timeout(REPLY_TIMEOUT):
                    await link.stopped.wait()
        link.writer.close()
        if link.task is not None:
            link.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.task
        with contextlib.suppress(ConnectionError):
            await link.writer.wait_closed()

    async def logout(self, session_id: int, jid: str) -> None:
        if session_id in self._links:
            await self._close(session_id, "logout")
            return
        if jid:  # no connection open: unlink the device over a short control line
            async with ServiceControl(self.address) as control:
                await control.forget(jid)

    async def request_pairing_code(self, session_id: int, phone: str) -> None:
        if not await self._command(session_id, "pair_phone", phone=phone):
            raise DriverError("no QR round is open to link by phone number")

    async def gesture(self, session_id: int, gesture: str) -> bool:
        """A simulated phone gesture on this session's connection; a logout also
        without one (the phone unlinks the device whether or not a client is on)."""
        if gesture == "logout" and session_id not in self._links:
            async with ServiceControl(self.address) as control:
                return await control.phone(session_id, gesture)
        return await self._command(session_id, "gesture", gesture=gesture)

    async def aclose(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        await asyncio.gather(*(self.stop(sid) for sid in list(self._links)))
