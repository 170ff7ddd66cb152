"""A bare WebSocket client that timestamps QR pushes, to tell the browser's share apart.

``QrProbe`` watches ``/ws/sessions/<pk>/`` from the benchmark process (logged in
with the browser's session cookie) and records, for every new ``qr_issued_at``,
the wall-clock time the complete message was read from the socket. Compared with
the page's own ``receivedAt`` it shows how much of "new QR → image swapped" is the
server plus the loopback TCP hop, and how much is Chromium delivering the message.

Minimal RFC 6455 client: text frames, fragmentation, ping/pong and close; no
extensions. It runs an asyncio loop in a daemon thread so the Playwright sync API
keeps the main thread.

``WsClient`` / ``open_websocket`` are the same client as an ``asyncio.Protocol``
(callbacks, no task per socket), for holding many sockets in one process
(``benchmarks/bench_fanout.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame (clients must mask)."""
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 1 << 16:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class QrProbe:
    """Watch one session's socket; ``received[issued_at] = wall-clock ms``."""

    def __init__(self, host: str, port: int, session_cookie: str) -> None:
        self.host = host
        self.port = port
        self.cookie = session_cookie
        self.received: dict[int, float] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def watch(self, session_id: int) -> None:
        """Start watching a session (stops watching the previous one)."""
        self.unwatch()
        asyncio.run_coroutine_threadsafe(self._start(session_id), self._loop).result(10)

    def unwatch(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.unwatch()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self, session_id: int) -> None:
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(session_id, connected))
        waiter = asyncio.create_task(connected.wait())
        done, _ = await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            await self._task  # raises why it could not connect

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task

    def received_at(self, issued_at: int) -> float | None:
        with self._lock:
            return self.received.get(issued_at)

    async def _run(self, session_id: int, connected: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /ws/sessions/{session_id}/ HTTP/1.1\r\n"
                f"Host: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://{self.host}:{self.port}\r\n"
                f"Cookie: sessionid={self.cookie}\r\n\r\n"
            )
            writer.write(request.encode())
            await writer.drain()
            status = await reader.readuntil(b"\r\n\r\n")
            if not status.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(status.decode(errors="replace"))
            connected.set()
            message = b""
            while True:
                head = await reader.readexactly(2)
                fin, opcode = head[0] & 0x80, head[0] & 0x0F
                length = head[1] & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                payload = await reader.readexactly(length)
                if opcode == OP_PING:
                    writer.write(_client_frame(OP_PONG, payload))
                    continue
                if opcode == OP_CLOSE:
                    return
                if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                    message += payload
                    if fin:
                        self._on_message(message, time.time() * 1000)
                        message = b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _on_message(self, raw: bytes, at: float) -> None:
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            return
        snapshot = data.get("snapshot") or {}
        issued = snapshot.get("qr_issued_at")
        if data.get("type") == "snapshot" and issued is not None:
            with self._lock:
                self.received.setdefault(int(issued), at)


# -- many sockets on one loop --------------------------------------------------------


class FrameReader:
    """Incremental parser of a server's (unmasked) frames: feed bytes, get messages.

    ``feed`` returns ``(opcode, payload)`` for every complete message (fragments
    joined, with the first fragment's opcode) and every control frame.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._opcode = OP_TEXT
        self._fragments = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode >= OP_CLOSE:  # control frames are never fragmented
                out.append((opcode, payload))
                continue
            if opcode != OP_CONT:
                self._opcode = opcode
            self._fragments += payload
            if fin:
                out.append((self._opcode, bytes(self._fragments)))
                self._fragments.clear()
        return out

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length, start = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,), start = struct.unpack_from("!H", buf, 2), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,), start = struct.unpack_from("!Q", buf, 2), 10
        if len(buf) < start + length:
            return None
        payload = bytes(buf[start : start + length])
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        del buf[: start + length]
        return fin, opcode, payload


def upgrade_request(host: str, port: int, path: str, cookie: str) -> bytes:
    """The HTTP upgrade a browser on ``http://host:port`` sends (Origin and session cookie)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://{host}:{port}\r\n"
        f"Cookie: sessionid={cookie}\r\n\r\n"
    ).encode()


class WsClient(asyncio.Protocol):
    """One WebSocket read by callbacks on the event loop: no task per socket.

    Cheap enough to hold a thousand sockets in one process. ``on_message(raw, at)``
    is called for each complete text/binary message with ``at`` = ``time.time()``
    in ms when the bytes that completed it were handed to the protocol. Pings are
    answered; a close frame or a lost connection resolves ``closed``.
    """

    def __init__(self, request: bytes, on_message: Callable[[bytes, float], None]) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._request = request
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._reader: FrameReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        at = time.time() * 1000
        if self._reader is None:
            data = self._read_head(data)
            if self._reader is None:
                return
        for opcode, payload in self._reader.feed(data):
            if opcode in (OP_TEXT, OP_BINARY):
                self._on_message(payload, at)
            elif opcode == OP_PING and self._transport is not None:
                self._transport.write(_client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close()

    def _read_head(self, data: bytes) -> bytes:
        """Collect the HTTP answer; return what follows it once it is complete."""
        self._head += data
        head, sep, rest = self._head.partition(b"\r\n\r\n")
        if not sep:
            return b""
        if not head.startswith(b"HTTP/1.1 101"):
            error = ConnectionError(head.decode(errors="replace"))
            if not self.opened.done():
                self.opened.set_exception(error)
            self.close()
            return b""
        self._reader = FrameReader()
        if not self.opened.done():
            self.opened.set_result(None)
        return rest

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text: str) -> None:
        if self._transport is not None:
            self._transport.write(_client_frame(OP_TEXT, text.encode()))

    def close(self) -> None:
        """Send a close frame (if open) and drop the connection."""
        transport, self._transport = self._transport, None
        if transport is None or transport.is_closing():
            return
        if self._reader is not None:
            transport.write(_client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        transport.close()


async def open_websocket(
    host: str,
    port: int,
    path: str,
    cookie: str,
    on_message: Callable[[bytes, float], None],
    timeout: float = 10.0,
) -> WsClient:
    """Connect and complete the upgrade; raise ``ConnectionError`` if it is refused."""
    loop = asyncio.get_running_loop()
    request = upgrade_request(host, port, path, cookie)
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(request, on_message), host, port), timeout
    )
    try:
        await asyncio.wait_for(client.opened, timeout)
    except BaseException:
        client.close()
        raise
    return client
