"""One HTTP attempt: POST the signed body, read a bounded answer, never follow a redirect.

httpx does the HTTP, on one-connection transports each attempt borrows from
:class:`Connections` (kept alive per origin). Added to httpx: :class:`GuardedBackend`,
the network backend of every transport: every new connection resolves the host itself,
checks every address with :mod:`webhooks.ssrf` and connects to the checked address
(TLS still verifies the certificate for the URL's host name). So the address
connected to is always the address checked: no DNS rebinding between the two.
Environment proxies are ignored (``trust_env=False``): a proxy would connect
wherever it likes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

from webhooks import ssrf
from webhooks.conf import WebhookConfig

USER_AGENT = "waconnect-webhooks/1"


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code and the start of the body, or an error."""

    status_code: int | None
    body: str = ""
    error: str = ""
    refused: bool = False  # the SSRF guard refused the address


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the SSRF check between resolving and connecting."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            addresses = await ssrf.resolve(host, port, allow_private=self.allow_private)
        else:
            ssrf.check_address(literal, allow_private=self.allow_private)
            addresses = [literal]
        last: Exception | None = None
        for address in addresses:  # each one checked; the first that answers
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise ssrf.Refused("unix sockets cannot receive webhooks")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The TLS settings every connection shares (httpx's defaults: certifi's CAs,
    the host name checked). Made once: loading the CA bundle costs milliseconds,
    and an :class:`ssl.SSLContext` is meant to be shared."""
    return httpx.create_ssl_context()


def build_transport(config: WebhookConfig) -> httpx.AsyncHTTPTransport:
    """An httpx transport of one connection over the guarded backend, with the shared
    TLS context; no proxy (none is passed, the environment's unread)."""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context(), trust_env=False)
    # httpx (pinned) builds its pool without a way to pass a network backend:
    # replace the pool with the same one plus ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context(),
        max_connections=1,
        max_keepalive_connections=1,
        keepalive_expiry=KEEPALIVE_SECONDS,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(config.allow_private),
    )
    return transport


#: An idle connection is closed after this long (httpx's default).
KEEPALIVE_SECONDS = 5.0

Origin = tuple[bytes, bytes, int | None]


class Connections:
    """Keep-alive connections for the attempts, one attempt on a connection at a time.

    Each attempt borrows a transport of one connection for its URL's origin (an
    idle one of that origin, else a new one) and gives it back when its answer was
    read. A pool of many connections walks all of them for every queued request
    (httpcore's :class:`~httpcore.AsyncConnectionPool`): with one per attempt there
    is nothing to walk. In use: at most one per attempt in flight; idle: at most
    ``max_in_flight``, the longest idle closed first.
    """

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.timeout = httpx.Timeout(config.total_timeout, connect=config.connect_timeout).as_dict()
        #: Idle transports by ``id()``, the longest idle first, each with its origin.
        self._idle: collections.OrderedDict[int, tuple[Origin, httpx.AsyncHTTPTransport]] = (
            collections.OrderedDict()
        )
        self._by_origin: dict[Origin, list[int]] = {}
        self._in_use: set[httpx.AsyncHTTPTransport] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> int:
        """Idle transports kept."""
        return len(self._idle)

    @contextlib.asynccontextmanager
    async def borrow(self, url: httpx.URL) -> AsyncIterator[httpx.AsyncHTTPTransport]:
        """A transport for ``url``'s origin for one attempt; kept for the next one if
        the attempt ended normally, closed if it raised (or was cancelled)."""
        origin: Origin = (url.raw_scheme, url.raw_host, url.port)
        keys = self._by_origin.get(origin)
        transport = self._idle.pop(keys.pop())[1] if keys else build_transport(self.config)
        self._in_use.add(transport)
        try:
            yield transport
        except BaseException:
            self._in_use.discard(transport)
            await _close(transport)
            raise
        self._in_use.discard(transport)
        key = id(transport)
        self._idle[key] = (origin, transport)
        self._by_origin.setdefault(origin, []).append(key)
        while len(self._idle) > self.config.max_in_flight:
            old_key, (old_origin, old) = self._idle.popitem(last=False)
            self._by_origin[old_origin].remove(old_key)
            task = asyncio.create_task(_close(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every transport, idle or in use."""
        transports = [t for _, t in self._idle.values()] + list(self._in_use)
        self._idle.clear()
        self._by_origin.clear()
        self._in_use.clear()
        for transport in transports:
            await _close(transport)
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _close(transport: httpx.AsyncHTTPTransport) -> None:
    with contextlib.suppress(Exception):
        await transport.aclose()


async def post(
    connections: Connections,
    url: str,
    body: str,
    headers: dict[str, str],
    config: WebhookConfig,
) -> Answer:
    """One attempt, within ``config.total_timeout`` all told; never raises for the
    receiver's doing (a refused, reset or slow connection is an :class:`Answer`).

    The request goes straight to a borrowed transport: nothing follows a redirect
    (a 3xx is the answer), and no proxy is in the way."""
    try:
        ssrf.check_url(url, allow_private=config.allow_private)
        async with asyncio.timeout(config.total_timeout):
            request = httpx.Request(
                "POST",
                url,
                content=body.encode(),
                headers={
                    **headers,
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                },
                extensions={"timeout": connections.timeout},
            )
            async with connections.borrow(request.url) as transport:
                response = await transport.handle_async_request(request)
                try:
                    data = b""
                    async for chunk in response.aiter_raw():
                        data += chunk
                        if len(data) >= config.response_limit:
                            break
                finally:
                    await response.aclose()
    except ssrf.Refused as exc:
        return Answer(None, error=f"refused: {exc}"[:300], refused=True)
    except TimeoutError:
        return Answer(None, error=f"timed out after {config.total_timeout:g} s")
    except httpx.TimeoutException as exc:
        return Answer(None, error=f"timed out ({type(exc).__name__})")
    except (httpx.HTTPError, OSError) as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}"[:300])
    text = data[: config.response_limit].decode("utf-8", "replace")
    return Answer(response.status_code, body=text)
