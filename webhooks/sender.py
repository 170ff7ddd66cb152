"""One HTTP attempt: POST the signed body, read a bounded answer, never follow a redirect.

httpcore (httpx's transport) does the HTTP, an attempt on a keep-alive connection
it borrows (:class:`Connections`); the one thing added is :class:`GuardedBackend`,
the network backend of every connection: each new connection resolves the host
itself, checks every address with :mod:`webhooks.ssrf` and connects to the checked
address (TLS still verifies the certificate for the URL's host name, with one
shared context: :func:`ssl_context`). So the address connected to is always the
address checked: no DNS rebinding between the two. No proxy is ever used (the
environment's are not read): a proxy would connect wherever it likes.
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
USER_AGENT_BYTES = USER_AGENT.encode()

#: What httpcore raises for the receiver's or the network's doing (besides its
#: timeouts): an attempt's failure, not the dispatcher's.
HTTP_ERRORS: tuple[type[Exception], ...] = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
)


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


def build_transport(config: WebhookConfig, connections: int = 1) -> httpx.AsyncHTTPTransport:
    """An httpx transport of ``connections`` connections over the guarded backend,
    with the shared TLS context; no proxy (none is passed, the environment's unread)."""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context(), trust_env=False)
    # httpx (pinned) builds its pool without a way to pass a network backend:
    # replace the pool with the same one plus ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context(),
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(config.allow_private),
    )
    return transport


#: An idle connection is closed after this long (httpx's default).
KEEPALIVE_SECONDS = 5.0


class Connections:
    """Keep-alive connections for the attempts, one attempt on a connection at a time.

    Each attempt borrows an httpcore connection of its URL's origin (an idle one,
    else a new one: it connects through :class:`GuardedBackend` on first use) and
    gives it back when its answer was read. A pool of many connections walks all of
    them for every queued request (httpcore's :class:`~httpcore.AsyncConnectionPool`);
    a borrowed connection has nothing to walk. In use: at most one per attempt in
    flight; idle: at most ``max_in_flight``, the longest idle closed first.
    """

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        #: Per-request timeouts (seconds) in httpcore's shape.
        self.timeout = httpx.Timeout(config.total_timeout, connect=config.connect_timeout).as_dict()
        self._backend = GuardedBackend(config.allow_private)
        self._idle: collections.OrderedDict[
            int, tuple[httpcore.Origin, httpcore.AsyncHTTPConnection]
        ] = collections.OrderedDict()
        self._by_origin: dict[tuple[bytes, bytes, int], list[int]] = {}  # (Origin is unhashable)
        self._in_use: set[httpcore.AsyncHTTPConnection] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> int:
        """Idle connections kept."""
        return len(self._idle)

    def _take_idle(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection | None:
        keys = self._by_origin.get((origin.scheme, origin.host, origin.port))
        while keys:
            _, connection = self._idle.pop(keys.pop())
            if connection.is_closed() or connection.has_expired():
                self._close_later(connection)  # (its keep-alive ran out, or the peer left)
                continue
            return connection
        return None

    @contextlib.asynccontextmanager
    async def borrow(self, origin: httpcore.Origin) -> AsyncIterator[httpcore.AsyncHTTPConnection]:
        """A connection to ``origin`` for one attempt; kept for the next one if the
        attempt ended normally with the connection idle, closed otherwise (raised,
        cancelled, or an answer left unread)."""
        connection = self._take_idle(origin) or httpcore.AsyncHTTPConnection(
            origin=origin,
            ssl_context=ssl_context(),
            keepalive_expiry=KEEPALIVE_SECONDS,
            network_backend=self._backend,
        )
        self._in_use.add(connection)
        try:
            yield connection
        except BaseException:
            self._in_use.discard(connection)
            await _close(connection)
            raise
        self._in_use.discard(connection)
        if not connection.is_idle() or connection.is_closed():
            await _close(connection)
            return
        key = id(connection)
        self._idle[key] = (origin, connection)
        self._by_origin.setdefault((origin.scheme, origin.host, origin.port), []).append(key)
        while len(self._idle) > self.config.max_in_flight:
            old_key, (old_origin, old) = self._idle.popitem(last=False)
            self._by_origin[(old_origin.scheme, old_origin.host, old_origin.port)].remove(old_key)
            self._close_later(old)

    def _close_later(self, connection: httpcore.AsyncHTTPConnection) -> None:
        task = asyncio.create_task(_close(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        connections = [c for _, c in self._idle.values()] + list(self._in_use)
        self._idle.clear()
        self._by_origin.clear()
        self._in_use.clear()
        for connection in connections:
            await _close(connection)
        await asyncio.gather(*self._closing, return_exceptions=True)


@functools.lru_cache(maxsize=1024)
def target(url: str) -> tuple[httpcore.Origin, httpcore.URL, bytes]:
    """``url``'s origin, its request URL and its ``Host`` header, parsed (and
    normalised: IDNA, percent-encoding) by httpx once per URL."""
    parsed = httpx.URL(url)
    core = httpcore.URL(
        scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
    )
    return core.origin, core, parsed.netloc


async def _close(connection: httpcore.AsyncHTTPConnection | httpx.AsyncHTTPTransport) -> None:
    with contextlib.suppress(Exception):
        await connection.aclose()


def build_client(config: WebhookConfig, connections: int | None = None) -> httpx.AsyncClient:
    """A client (for one-off requests): timeouts, no redirects, no proxies, the
    guarded backend."""
    return httpx.AsyncClient(
        transport=build_transport(config, connections or config.max_in_flight),
        timeout=httpx.Timeout(config.total_timeout, connect=config.connect_timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


async def post(
    connections: Connections,
    url: str,
    body: str,
    headers: dict[str, str],
    config: WebhookConfig,
) -> Answer:
    """One attempt, within ``config.total_timeout`` all told; never raises for the
    receiver's doing (a refused, reset or slow connection is an :class:`Answer`).

    The request goes straight to a borrowed httpcore connection: nothing follows a
    redirect (a 3xx is the answer), no proxy is in the way, and ``headers`` (the
    signature's) are sent as they are, with ``Host``, ``User-Agent``,
    ``Content-Type`` and ``Content-Length``."""
    try:
        ssrf.check_url(url, allow_private=config.allow_private)
        origin, request_url, host = target(url)
        content = body.encode()
        request = httpcore.Request(
            b"POST",
            request_url,
            headers=[
                (b"Host", host),
                (b"User-Agent", USER_AGENT_BYTES),
                (b"Content-Type", b"application/json"),
                (b"Content-Length", b"%d" % len(content)),
                *((name.encode(), value.encode()) for name, value in headers.items()),
            ],
            content=content,
            extensions={"timeout": connections.timeout},
        )
        async with asyncio.timeout(config.total_timeout):
            async with connections.borrow(origin) as connection:
                response = await connection.handle_async_request(request)
                try:
                    data = b""
                    async for chunk in response.aiter_stream():
                        data += chunk
                        if len(data) >= config.response_limit:
                            break
                finally:
                    await response.aclose()
    except ssrf.Refused as exc:
        return Answer(None, error=f"refused: {exc}"[:300], refused=True)
    except TimeoutError:
        return Answer(None, error=f"timed out after {config.total_timeout:g} s")
    except httpcore.TimeoutException as exc:
        return Answer(None, error=f"timed out ({type(exc).__name__})")
    except (*HTTP_ERRORS, httpx.HTTPError, OSError) as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}"[:300])
    text = data[: config.response_limit].decode("utf-8", "replace")
    return Answer(response.status, body=text)
