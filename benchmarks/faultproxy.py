"""A fault-injecting TCP proxy for the cluster tests: pass, blackhole or reset.

Put one between a process and a server (PostgreSQL, Redis) to cut that one process
off while every other process still reaches the server:

- ``pass``: bytes flow both ways;
- ``blackhole``: a network partition as the process sees it. Its connections stay
  open and new ones are accepted and held, but nothing is forwarded in either
  direction and nothing answers. Bytes already sent wait (as TCP retransmits
  them) and flow on when the partition heals: a statement sent before or during
  the partition may still reach the server long after, which is what fencing must
  survive;
- ``reset``: every connection, old and new, is reset (RST).

The proxies run on an event loop of their own in a daemon thread
(:class:`ProxyLoop`), so a test that blocks (waiting for a process to exit) never
stalls the traffic. Own code rather than toxiproxy: that is a Go server to install
and drive over HTTP; this is a small asyncio module.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Mode(enum.StrEnum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    RESET = "reset"


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a dead middlebox would."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _End(asyncio.Protocol):
    """One end of a proxied connection (the client's or the server's)."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.peer: _End | None = None
        self.held: list[bytes] = []  # read, not yet forwarded (a partition)
        self.peer_full = False  # the other end's write buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pipe.made(self)

    def data_received(self, data: bytes) -> None:
        self.held.append(data)
        self.flush()

    def flush(self) -> None:
        """Forward what was read, if the proxy passes traffic and the peer is there."""
        assert self.transport is not None
        if not self.pipe.proxy.flowing or self.peer is None or self.peer.transport is None:
            self.transport.pause_reading()  # nothing more is read: the sender stalls
            return
        if self.held:
            self.peer.transport.write(b"".join(self.held))
            self.held.clear()
        if not self.peer_full:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.peer_full = True
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.peer_full = False
            self.peer.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.close()  # either end hanging up ends both (no half-close here)


class _Pipe:
    """One proxied connection: the client's end, and the server's once connected."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client = _End(self)
        self.server: _End | None = None
        self.closed = False

    def made(self, end: _End) -> None:
        if end is self.client:
            if self.proxy.mode is Mode.RESET:
                self.reset()
                return
            self.proxy.pipes.add(self)
            self.client.flush()
            if self.proxy.flowing:
                self.connect()
        else:
            self.client.peer, end.peer = end, self.client
            self.client.flush()
            end.flush()

    def connect(self) -> None:
        """Open the server's end (a blackhole holds new connections until it heals)."""
        if self.server is not None or self.closed:
            return
        self.server = _End(self)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: self.server, *self.proxy.upstream))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.close()
        elif self.closed:
            task.result()[0].close()

    def resume(self) -> None:
        if self.server is None:
            self.connect()
        for end in (self.client, self.server):
            if end is not None and end.transport is not None:
                end.flush()

    def reset(self) -> None:
        self.closed = True
        self.proxy.pipes.discard(self)
        for end in (self.client, self.server):
            if end is not None and end.transport is not None:
                _reset(end.transport)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.pipes.discard(self)
        for end in (self.client, self.server):
            if end is not None and end.transport is not None:
                end.transport.close()


class FaultProxy:
    """Listens on ``127.0.0.1:port`` (any free port) and forwards to ``upstream``.

    Only :meth:`set_mode` and :meth:`close` are called from other threads.
    """

    def __init__(self, loop: ProxyLoop, upstream: tuple[str, int], name: str = "") -> None:
        self.loop = loop
        self.upstream = upstream
        self.name = name or f"proxy to {upstream[0]}:{upstream[1]}"
        self.port = 0
        self.mode = Mode.PASS
        self.pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def flowing(self) -> bool:
        return self.mode is Mode.PASS

    # -- from the caller's thread -------------------------------------------------------

    def set_mode(self, mode: Mode | str) -> None:
        """Switch; returns once the switch is in effect for every connection."""
        self.loop.call(self._set_mode(Mode(mode)))

    def close(self) -> None:
        self.loop.call(self._close())

    # -- on the proxy loop ---------------------------------------------------------------

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Pipe(self).client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        for pipe in list(self.pipes):
            if mode is Mode.PASS:
                pipe.resume()
            elif mode is Mode.RESET:
                pipe.reset()
            else:  # blackhole: each end stops reading at its next read
                for end in (pipe.client, pipe.server):
                    if end is not None and end.transport is not None:
                        end.transport.pause_reading()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self.pipes):
            pipe.close()
        for _ in range(3):  # let the transports finish closing on this loop
            await asyncio.sleep(0)


class ProxyLoop:
    """An event loop in a daemon thread that runs every :class:`FaultProxy` of a test."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxies", daemon=True
        )
        self._thread.start()
        self.proxies: list[FaultProxy] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def proxy(self, upstream: tuple[str, int], name: str = "") -> FaultProxy:
        """A new proxy to ``upstream``, listening and in ``pass`` mode."""
        proxy = FaultProxy(self, upstream, name)
        self.call(proxy.start())
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
