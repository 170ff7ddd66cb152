"""The sender's connections: one borrowed per attempt, kept warm per origin, closed
after a failed attempt, every new one through the SSRF guard, one TLS context."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl

import httpx
import pytest

from tests.webhooks.receiver import Receiver
from webhooks import sender, signing, ssrf
from webhooks.conf import webhook_config

pytestmark = pytest.mark.timeout(30)

BODY = '{"type":"webhook.test"}'
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def signed() -> dict[str, str]:
    """Headers signed now: the receiver (standardwebhooks) refuses a timestamp more
    than 5 minutes old, and a suite on a slow machine reaches these tests later than
    that after collection (headers signed at import failed in CI)."""
    return signing.sign_headers("msg_1", BODY, [SECRET], dt.datetime.now(dt.UTC))


def config(**overrides: object) -> object:
    return webhook_config(
        **{"allow_private": True, "total_timeout": 1.0, "connect_timeout": 1.0, **overrides}
    )


async def test_attempts_one_after_another_reuse_one_connection() -> None:
    conf = config()
    connections = sender.Connections(conf)
    async with Receiver(SECRET, script=["ok"] * 3) as receiver:
        answers = [
            await sender.post(connections, receiver.url, BODY, signed(), conf) for _ in range(3)
        ]
        await connections.aclose()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert receiver.connections == 1
    headers = receiver.requests[0]["headers"]
    assert headers["user-agent"] == sender.USER_AGENT
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "msg_1"


async def test_attempts_at_once_each_get_a_connection_and_idle_ones_are_capped() -> None:
    conf = config(max_in_flight=3)
    connections = sender.Connections(conf)
    async with Receiver(SECRET, script=["ok"] * 6) as receiver:
        answers = await asyncio.gather(
            *(sender.post(connections, receiver.url, BODY, signed(), conf) for _ in range(6))
        )
        assert [a.status_code for a in answers] == [200] * 6
        assert receiver.connections == 6
        assert connections.idle == 3  # the other three were closed
        again = await sender.post(connections, receiver.url, BODY, signed(), conf)
        assert again.status_code == 200 and receiver.connections == 6
        await connections.aclose()
    assert connections.idle == 0


async def test_a_failed_attempt_does_not_keep_its_connection() -> None:
    conf = config(total_timeout=0.3)
    connections = sender.Connections(conf)
    async with Receiver(SECRET, script=["stall"]) as receiver:
        stalled = await sender.post(connections, receiver.url, BODY, signed(), conf)
        assert stalled.status_code is None and "timed out" in stalled.error
        assert connections.idle == 0
        after = await sender.post(connections, receiver.url, BODY, signed(), conf)
        await connections.aclose()
    assert after.status_code == 200
    assert receiver.connections == 2


async def test_every_new_connection_goes_through_the_ssrf_guard() -> None:
    """Past the URL check too: a borrowed transport connects only through the guarded
    backend, so a refused address is never connected to."""
    conf = config(allow_private=False)
    connections = sender.Connections(conf)
    async with Receiver() as receiver:
        request = httpx.Request("POST", receiver.url, content=b"{}")
        with pytest.raises(ssrf.Refused):
            async with connections.borrow(request.url) as transport:
                await transport.handle_async_request(request)
        await connections.aclose()
    assert receiver.connections == 0


async def test_every_connection_shares_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle costs milliseconds: it is done once, not per client."""
    made: list[ssl.SSLContext] = []
    original = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(original(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    sender.ssl_context.cache_clear()
    conf = config(max_in_flight=64)
    connections = sender.Connections(conf)
    async with contextlib.AsyncExitStack() as stack:
        for i in range(10):
            url = httpx.URL(f"https://receiver-{i}.example/hook")
            await stack.enter_async_context(connections.borrow(url))
    await connections.aclose()
    assert len(made) == 1
    sender.ssl_context.cache_clear()
