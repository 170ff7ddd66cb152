"""One HTTP attempt: POST the signed body, read a bounded answer, never follow a redirect.

httpx does the HTTP; the one thing added is :class:`GuardedBackend`, the network
backend of its connection pool: every new connection resolves the host itself,
checks every address with :mod:`webhooks.ssrf` and connects to the checked address
(TLS still verifies the certificate for the URL's host name). So the address
connected to is always the address checked: no DNS rebinding between the two.
Environment proxies are ignored (``trust_env=False``): a proxy would connect
wherever it likes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Iterable
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


#: Connections per client: httpcore's pool walks every connection for every queued
#: request, so one pool of 64 spent more CPU than the requests; the dispatcher
#: shares its lanes among several small clients instead (:func:`build_clients`).
POOL_SIZE = 8


def build_clients(config: WebhookConfig) -> list[httpx.AsyncClient]:
    """Enough clients of :data:`POOL_SIZE` connections for ``max_in_flight`` attempts."""
    count = max(1, -(-config.max_in_flight // POOL_SIZE))
    return [build_client(config, min(POOL_SIZE, config.max_in_flight)) for _ in range(count)]


def build_client(config: WebhookConfig, connections: int | None = None) -> httpx.AsyncClient:
    """A client: timeouts, no redirects, no proxies, the guarded backend."""
    size = connections or config.max_in_flight
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx (pinned) builds its pool without a way to pass a network backend:
    # replace the pool with the same one plus ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(config.allow_private),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(config.total_timeout, connect=config.connect_timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: str,
    headers: dict[str, str],
    config: WebhookConfig,
) -> Answer:
    """One attempt, within ``config.total_timeout`` all told; never raises for the
    receiver's doing (a refused, reset or slow connection is an :class:`Answer`)."""
    try:
        ssrf.check_url(url, allow_private=config.allow_private)
        async with asyncio.timeout(config.total_timeout):
            request = client.build_request(
                "POST",
                url,
                content=body.encode(),
                headers={**headers, "content-type": "application/json"},
            )
            response = await client.send(request, stream=True)
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
