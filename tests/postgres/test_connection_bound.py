"""The web tier's PostgreSQL connections stay within the pool's bound under a storm.

A real Daphne (the Procfile's web line) on the test database, hundreds of concurrent
page loads, and ``pg_stat_activity`` sampled throughout: Daphne runs each request in a
thread of its own, so connections kept per thread (``CONN_MAX_AGE``) grew with the
traffic; the pool holds them to ``WACONNECT_DB_POOL_MAX``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from sessions_app.models import WaSession
from tests.daphne_server import base_env, daphne

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
]

POOL_MAX = 4
REQUESTS = 600
CONCURRENCY = 200
APP = "waconnect-storm"


def _dsn(application_name: str = "") -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    url = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{connection.settings_dict['NAME']}"
    return f"{url}?application_name={application_name}" if application_name else url


class Sampler(threading.Thread):
    """Counts the web tier's connections (by application_name) until stopped; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak = 0
        self.samples = 0

    def count(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s",
            [APP],
        ).fetchone()
        assert row is not None
        return int(row[0])

    def run(self) -> None:
        with psycopg.connect(_dsn(), autocommit=True) as conn:
            while not self.stop.wait(0.005):  # a sampling rate, not a wait for an event
                self.peak = max(self.peak, self.count(conn))
                self.samples += 1


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    env = base_env(
        {
            "DEBUG": "on",
            "DATABASE_URL": _dsn(APP),
            "WACONNECT_DB_POOL_MAX": str(POOL_MAX),
            "WACONNECT_DB_POOL_MIN": "1",
            "WACONNECT_DATA_DIR": str(tmp_path / "data"),
            "WACONNECT_DRIVER": "simulated",
            "LOG_LEVEL": "WARNING",
        }
    )
    log = tmp_path / "daphne.log"
    try:
        with daphne(env, log) as url:
            yield url
    finally:
        print(log.read_text(errors="replace")[-5000:])


async def _storm(url: str, cookie: str) -> list[int]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60, headers={"cookie": cookie}
    ) as client:
        pages = ["/sessions/", "/sessions/new/", "/accounts/login/"]
        responses = await asyncio.gather(
            *(client.get(pages[i % len(pages)]) for i in range(REQUESTS))
        )
    return [r.status_code for r in responses]


def test_a_storm_of_page_loads_stays_within_the_pool_bound(
    web: str, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_superuser("ada", "", "correct horse battery")
    for i in range(20):
        WaSession.objects.create(name=f"storm-{i}", desired_state="stopped")
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    sampler = Sampler()
    sampler.start()
    try:
        statuses = asyncio.run(_storm(web, cookie))
    finally:
        sampler.stop.set()
        sampler.join(10)
    assert statuses == [200] * REQUESTS, sorted(set(statuses))
    assert sampler.samples > 10
    print(f"peak web connections: {sampler.peak} (bound {POOL_MAX}) over {sampler.samples} samples")
    assert 1 <= sampler.peak <= POOL_MAX
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        assert Sampler().count(conn) <= POOL_MAX
