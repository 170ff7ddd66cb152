"""A real HTTP receiver for webhook tests: a raw asyncio HTTP/1.1 server.

It answers each request by a script (``"ok"``, a status code, ``"stall"``: never
answer, ``"reset"``: drop the connection without a word), then ``"ok"`` once the
script is used up; it verifies every request with ``standardwebhooks``'s own
``Webhook.verify`` and keeps what it accepted, in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from standardwebhooks import Webhook

Behaviour = str | int


class Receiver:
    def __init__(
        self,
        secret: str = "",
        script: Iterable[Behaviour] = (),
        chooser: Callable[[], Behaviour] | None = None,
    ) -> None:
        """``chooser``, if set, picks the behaviour once the script is used up."""
        self.secret = secret
        self.chooser = chooser
        self.script: collections.deque[Behaviour] = collections.deque(script)
        self.requests: list[dict[str, Any]] = []  # every request: headers, body, behaviour
        self.accepted: list[dict[str, Any]] = []  # verified payloads answered 2xx
        self.accepted_at: list[float] = []  # time.monotonic() of each, in step
        self.connections = 0  # TCP connections accepted
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def then(self, *behaviours: Behaviour) -> None:
        self.script.extend(behaviours)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.script:
                    behaviour = self.script.popleft()
                else:
                    behaviour = self.chooser() if self.chooser is not None else "ok"
                record = {"headers": headers, "body": body, "behaviour": behaviour}
                async with self._changed:
                    self.requests.append(record)
                    self._changed.notify_all()
                if behaviour == "stall":
                    await self._release.wait()
                    return
                if behaviour == "reset":
                    writer.transport.abort()
                    return
                if behaviour == "big":  # an error page far past any read limit
                    writer.write(
                        b"HTTP/1.1 500 Oops\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1_000_000
                    )
                    await writer.drain()
                    continue
                if behaviour == "redirect":
                    writer.write(
                        b"HTTP/1.1 307 Elsewhere\r\nlocation: http://169.254.169.254/\r\n"
                        b"content-length: 0\r\n\r\n"
                    )
                    await writer.drain()
                    continue
                status = 200 if behaviour == "ok" else int(behaviour)
                if 200 <= status < 300:
                    payload = Webhook(self.secret).verify(body, headers)
                    async with self._changed:
                        self.accepted.append(payload)
                        self.accepted_at.append(time.monotonic())
                        self._changed.notify_all()
                answer = json.dumps({"status": status}).encode()
                writer.write(
                    f"HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def wait_accepted(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` payloads were accepted; fail after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.accepted) >= count)
        except TimeoutError:
            raise AssertionError(
                f"accepted {len(self.accepted)} of {count}; "
                f"requests: {[r['behaviour'] for r in self.requests]}"
            ) from None
        return list(self.accepted)

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float
    ) -> None:
        """Wait until ``predicate(accepted)`` holds; fail after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: predicate(self.accepted))
        except TimeoutError:
            raise AssertionError(f"not reached; {len(self.accepted)} accepted") from None

    async def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.requests) >= count)
        except TimeoutError:
            raise AssertionError(f"{len(self.requests)} of {count} requests") from None
