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
from typing import Any, ClassVar

from sessions_app.drivers import wire
from sessions_app.drivers.base import (
    ConnectError,
    ConnectSpec,
    Disconnected,
    DriverError,
    EventSink,
    LoggedOut,
    MessageReceived,
    QrTimeout,
    Replaced,
    SendFailed,
)
from sessions_app.drivers.sends import SEND_TIMEOUT, PendingSends
from sessions_app.drivers.simulated import answered_once
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
    pending: PendingSends = dataclasses.field(default_factory=PendingSends)
    #: ``on_event`` with each send answered once (late answers dropped)
    sink: EventSink | None = None


class RemoteSimulatedDriver:
    """A :class:`~sessions_app.drivers.base.Driver` for the simulated WhatsApp service."""

    name: ClassVar[str] = "simulated"
    simulated: ClassVar[bool] = True

    def __init__(
        self, address: str, keepalive: float = KEEPALIVE, send_timeout: float = SEND_TIMEOUT
    ) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.keepalive = keepalive
        self.send_timeout = send_timeout
        self._links: dict[int, _Link] = {}
        self._pinger: asyncio.Task[None] | None = None

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        if spec.session_id in self._links:
            raise ConnectionError(f"session {spec.session_id} already has a connection")
        reader, writer = await asyncio.open_connection(
            self.host, self.port, limit=2 * wire.MAX_LINE
        )
        link = _Link(spec.session_id, reader, writer, on_event)
        link.sink = answered_once(link.pending, on_event)
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
                assert link.sink is not None
                link.sink(event)
                if isinstance(event, MessageReceived):  # handed over: WhatsApp may forget it
                    link.writer.write(wire.encode("ack", message_id=event.message_id))
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

    async def _command(self, session_id: int, kind: str, **fields: Any) -> bool:
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

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        """See :class:`~sessions_app.drivers.base.Driver`: the service answers with a
        ``sent`` or ``send_failed`` event; none within ``send_timeout`` seconds is
        ``SendFailed(unknown, timeout)``."""
        link = self._links.get(session_id)
        if link is None:
            raise DriverError("no connection is open to send on")
        if link.stopped.is_set():  # the service ended it; the runner has not closed it yet
            link.on_event(
                SendFailed(session_id, ref, "refused", "not_connected", "the connection ended")
            )
            return

        def timed_out() -> None:
            if self._links.get(session_id) is link and not link.stopping:
                detail = f"no answer from WhatsApp within {self.send_timeout:g} s"
                link.on_event(SendFailed(session_id, ref, "unknown", "timeout", detail))

        loop = asyncio.get_running_loop()
        link.pending.add(ref, lambda fire: loop.call_later(self.send_timeout, fire), timed_out)
        link.writer.write(wire.encode("send", ref=ref, to=to, text=text))

    async def _close(self, session_id: int, goodbye: str) -> None:
        link = self._links.pop(session_id, None)
        if link is None:
            return
        link.stopping = True
        link.pending.clear()
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

    async def gesture(
        self, session_id: int, gesture: str, payload: dict[str, Any] | None = None
    ) -> bool:
        """A simulated phone gesture on this session's connection; a logout or a
        peer's message also without one (the phone unlinks the device whether or
        not a client is on; WhatsApp holds a message until the device connects)."""
        if gesture in ("logout", "message") and session_id not in self._links:
            async with ServiceControl(self.address) as control:
                return await control.phone(session_id, gesture, payload)
        if payload is not None:
            return await self._command(session_id, "gesture", gesture=gesture, payload=payload)
        return await self._command(session_id, "gesture", gesture=gesture)

    async def aclose(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        await asyncio.gather(*(self.stop(sid) for sid in list(self._links)))
