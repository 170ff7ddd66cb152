"""One HTTP attempt: POST the signed body, read a bounded answer, never follow a redirect.

:mod:`webhooks.http1` does the HTTP (keep-alive, h11): every new connection
resolves the host itself, checks every address with :mod:`webhooks.ssrf` and
connects to the checked address (TLS still verifies the certificate for the URL's
host name). So the address connected to is always the address checked: no DNS
rebinding between the two. No proxy is used: a proxy would connect wherever it likes.
"""

from __future__ import annotations

import asyncio
import dataclasses

from webhooks import http1, ssrf
from webhooks.conf import WebhookConfig

USER_AGENT = "waconnect-webhooks/1"


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code and the start of the body, or an error."""

    status_code: int | None
    body: str = ""
    error: str = ""
    refused: bool = False  # the SSRF guard refused the address


def build_clients(config: WebhookConfig) -> list[http1.Client]:
    """The dispatcher's clients (one: its connections are kept per receiver)."""
    return [build_client(config)]


def build_client(config: WebhookConfig, connections: int | None = None) -> http1.Client:
    """A client: connect timeout, SSRF guard at every connection, keep-alive."""
    return http1.Client(
        connect_timeout=config.connect_timeout,
        allow_private=config.allow_private,
        max_idle=connections or config.max_in_flight,
        user_agent=USER_AGENT,
    )


async def post(
    client: http1.Client,
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
            status, data = await client.post(
                url,
                body.encode(),
                {**headers, "content-type": "application/json"},
                config.response_limit,
            )
    except ssrf.Refused as exc:
        return Answer(None, error=f"refused: {exc}"[:300], refused=True)
    except http1.ConnectTimeout:
        return Answer(None, error="timed out (ConnectTimeout)")
    except TimeoutError:
        return Answer(None, error=f"timed out after {config.total_timeout:g} s")
    except OSError as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}"[:300])
    text = data[: config.response_limit].decode("utf-8", "replace")
    return Answer(status, body=text)
