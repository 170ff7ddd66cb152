"""The production shape in small: ``manage.py run_supervisor`` as its own process on
PostgreSQL and Redis, rung by this (web) process through channels-redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections

from sessions_app import intents
from sessions_app.models import WaSession
from tests.unit.helpers import settled, state_is, until

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def supervisor_process(redis_layer: None, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{connection.settings_dict['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,  # the test database, not the one named in DATABASE_URL
        "WACONNECT_DRIVER": "simulated",
        "WACONNECT_RECONCILE_INTERVAL": "300",  # only the doorbell can be this quick
        "WACONNECT_DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "INFO",
    }
    log = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_supervisor"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        log.close()
        print((tmp_path / "supervisor.log").read_text())


@pytest.fixture
async def close_sync_connections() -> AsyncIterator[None]:
    """The connection opened by sync_to_async's thread would block the test DB's drop."""
    yield
    await sync_to_async(connections.close_all)()


async def test_a_change_of_intent_reaches_another_process_through_redis(
    supervisor_process: subprocess.Popen[bytes], close_sync_connections: None
) -> None:
    # The first session's claim proves the supervisor is up and listening.
    first = await sync_to_async(intents.create_session)("first", "ada")
    await until(first.pk, state_is("qr_required"), timeout=30)

    session = await sync_to_async(intents.create_session)("rung", "ada")
    snap = await until(session.pk, state_is("qr_required"), timeout=5)
    assert snap["qr_code"].startswith("https://wa.me/")

    await sync_to_async(intents.stop)(
        await sync_to_async(WaSession.objects.get)(pk=session.pk), "ada"
    )
    await until(session.pk, settled("stopped"), timeout=5)

    supervisor_process.send_signal(signal.SIGTERM)
    assert await sync_to_async(supervisor_process.wait)(20) == 0
    row = await sync_to_async(WaSession.objects.get)(pk=first.pk)
    assert row.lease_owner == "", "a clean shutdown releases its leases"
