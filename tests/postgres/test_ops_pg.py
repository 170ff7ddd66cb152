"""Operations on the production shape: /readyz on PostgreSQL and Redis, the outbound
message backlog read from its partial index, and a failover seen on both endpoints —
two ``run_supervisor --metrics-port`` processes, one of them SIGKILLed, the web
tier's gauges and the survivor's counters moving."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from benchmarks.cluster import Cluster, SupervisorProcess
from benchmarks.liveserver import free_port
from messaging.models import Message
from messaging.states import Direction, Status
from ops.collector import message_backlog
from sessions_app import intents
from sessions_app.drivers.simulated_service import ServiceControl
from sessions_app.models import WaSession
from tests.unit.test_ops_metrics_move import Samples, moved, value, web
from tests.unit.test_ops_web import samples

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

SETTINGS = {
    "WACONNECT_LEASE_TTL": "5",
    "WACONNECT_RENEW_INTERVAL": "1",
    "WACONNECT_SELF_FENCE_MARGIN": "1.5",
    "WACONNECT_RECONCILE_INTERVAL": "3",
    "WACONNECT_SIM_FIRST_QR_TTL": "30",
    "WACONNECT_SIM_PAIR_DELAY": "0",
    "WACONNECT_SIM_KEEPALIVE": "1",
}


@pytest.mark.django_db
def test_readyz_is_ready_on_postgresql_and_redis(redis_layer: None) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "channel_layer": "ok",
    }


@pytest.mark.django_db
def test_the_message_backlog_reads_the_partial_index_not_the_table() -> None:
    """Sent messages stay in the table for ever; the scrape's backlog query reads only
    the unfinished outbound rows (``message_out_unfinished``), never the rest."""
    session = WaSession.objects.create(name="busy")
    done = [Status.SENT, Status.DELIVERED, Status.READ, Status.FAILED]
    Message.objects.bulk_create(
        [
            Message(session=session, direction=Direction.OUT, status=done[i % 4])
            for i in range(20_000)
        ],
        batch_size=5_000,
    )
    Message.objects.bulk_create(
        [
            Message(session=session, direction=Direction.IN, wa_id=f"IN-{i}", status="received")
            for i in range(5_000)
        ]
        + [
            Message(session=session, direction=Direction.OUT, status=status)
            for status in (Status.QUEUED, Status.QUEUED, Status.QUEUED, Status.SENDING)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messaging_message")
    plan = message_backlog().explain()
    assert "message_out_unfinished" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert {status: n for status, n, _ in message_backlog()} == {"queued": 3, "sending": 1}


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scraped:
    """A ``run_supervisor`` with its metrics port."""

    def __init__(self, process: SupervisorProcess, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    async def metrics(self) -> Samples:
        status, body = await asyncio.to_thread(fetch, f"{self.url}/metrics")
        assert status == 200
        return samples(body.encode())

    async def until_ready(self, timeout: float = 30) -> None:
        """Poll /readyz as an orchestrator does, until 200."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process.alive, self.process.output()
            try:
                last = await asyncio.to_thread(fetch, f"{self.url}/readyz")
                if last[0] == 200:  # type: ignore[index]
                    return
            except OSError as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.process.name} never ready: {last}")


@pytest.fixture
def cluster(tmp_path: Path, redis_layer: None) -> Iterator[Cluster]:
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{connection.settings_dict['NAME']}"
    with Cluster(
        database_url=url,
        redis_url=os.environ["REDIS_URL"],
        log_dir=tmp_path,
        settings=SETTINGS,
        auto_scan=0.05,
        client_timeout=2.0,
    ) as running:
        try:
            yield running
        finally:
            running.close()
            print(running.logs()[-100_000:])


@pytest.fixture
async def control(cluster: Cluster) -> AsyncIterator[ServiceControl]:
    async with ServiceControl(cluster.address) as line:
        yield line
    await sync_to_async(connections.close_all)()


def start(cluster: Cluster) -> Scraped:
    port = free_port()
    return Scraped(cluster.start_supervisor("--metrics-port", str(port)), port)


async def until_web(name: str, wanted: float, timeout: float = 15, **labels: str) -> Samples:
    """Scrape the web tier until ``name`` reads ``wanted``: the database has caught up
    with what the simulated WhatsApp already did (a runner handles its events in turn)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await web()
        if value(found, name, **labels) == wanted or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


@pytest.mark.django_db(transaction=True)
async def test_a_failover_moves_the_metrics_of_both_tiers(
    cluster: Cluster, control: ServiceControl
) -> None:
    first, second = start(cluster), start(cluster)
    await first.until_ready()
    await second.until_ready()
    create = sync_to_async(intents.create_session)
    pks = [(await create(f"ops-{i}", "ops")).pk for i in range(4)]
    assert await control.wait_connected(pks, timeout=30) == set()
    seen = await until_web("waconnect_sessions", 4, state="connected")
    assert value(seen, "waconnect_sessions", state="connected") == 4
    assert value(seen, "waconnect_supervisors_alive") == 2

    before = {s: await s.metrics() for s in (first, second)}
    held = {s: value(before[s], "waconnect_supervisor_sessions_held") for s in before}
    assert sum(held.values()) == 4
    assert all(n >= 1 for n in held.values()), held  # the fair share
    for s in (first, second):
        assert value(before[s], "waconnect_qr_rounds_started_total") == held[s]
        assert value(before[s], "waconnect_qr_rounds_ended_total", outcome="paired") == held[s]
        assert value(before[s], "waconnect_qr_push_latency_seconds_count") >= held[s]

    victim, survivor = first, second
    victim_owner = victim.process.owner()
    victim.process.kill()
    missing = await control.wait_connected(pks, timeout=30, exclude_owner=victim_owner)
    assert missing == set()
    after = await survivor.metrics()
    assert moved(before[survivor], after, "waconnect_lease_claims_total") == held[victim]
    assert value(after, "waconnect_supervisor_sessions_held") == 4
    assert moved(before[survivor], after, "waconnect_lease_renewal_duration_seconds_count") >= 2
    assert value(after, "waconnect_lease_last_renewal_timestamp_seconds") > time.time() - 5
    assert moved(before[survivor], after, "waconnect_qr_rounds_started_total") == 0  # resumed
    assert (await asyncio.to_thread(fetch, f"{survivor.url}/readyz"))[0] == 200
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(fetch, f"{victim.url}/healthz")

    seen = await until_web("waconnect_supervisors_alive", 1)
    assert value(seen, "waconnect_supervisors_alive") == 1
    seen = await until_web("waconnect_sessions", 4, state="connected")
    assert value(seen, "waconnect_sessions", state="connected") == 4
    assert value(seen, "waconnect_sessions_awaiting_owner") == 0
