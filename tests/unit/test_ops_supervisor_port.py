"""The supervisor's own port: /metrics, /healthz, and /readyz that follows its leases."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from ops.server import MetricsServer, serve_supervisor
from sessions_app import owner_db
from sessions_app.drivers.simulated import SimulatedTiming, SimulatedWhatsApp
from sessions_app.supervisor import Supervisor
from tests.unit.test_supervisor import running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(server: MetricsServer, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(fetch, f"http://127.0.0.1:{server.port}{path}")


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    async with running(SimulatedWhatsApp(SimulatedTiming())) as supervisor:
        yield supervisor


@pytest.fixture
async def port(sup: Supervisor) -> AsyncIterator[MetricsServer]:
    server = serve_supervisor(sup, "127.0.0.1", 0)
    yield server
    server.close()


async def test_the_port_serves_metrics_and_health(port: MetricsServer) -> None:
    status, body = await get(port, "/metrics")
    assert status == 200
    assert "# TYPE waconnect_lease_claims_total counter" in body
    assert "waconnect_sessions{" not in body  # the database's gauges are the web tier's
    assert await get(port, "/healthz") == (200, '{"status": "ok"}')
    assert (await get(port, "/nope"))[0] == 404


async def test_ready_once_started_while_leases_are_renewed(port: MetricsServer) -> None:
    status, body = await get(port, "/readyz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ok",
        "checks": {"started": "ok", "fence": "ok", "leases": "ok"},
    }


async def test_not_ready_once_renewal_stalls_past_the_ttl(
    sup: Supervisor, port: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(owner: str, ttl: float) -> list[object]:
        raise OSError("database unreachable")

    monkeypatch.setattr(owner_db, "renew", unreachable)
    deadline = time.monotonic() + sup.config.lease_ttl + 5
    status, body = await get(port, "/readyz")
    while status == 200 and time.monotonic() < deadline:  # watched from outside, as a probe
        await asyncio.sleep(0.1)
        status, body = await get(port, "/readyz")
    assert status == 503
    while "last renewal" not in body and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status, body = await get(port, "/readyz")
    checks = json.loads(body)["checks"]
    assert checks["fence"] == "failed: self-fenced"
    assert checks["leases"].startswith("failed: last renewal")
    assert sup.fenced
