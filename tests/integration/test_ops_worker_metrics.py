"""A neonize worker crash seen on the supervisor's metrics port: the crash, the
session's error, the new worker and the reconnect each move their counter."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from ops import metrics
from ops.instrument import instrument
from ops.server import serve_supervisor
from sessions_app.drivers.neonize_driver import NeonizeDriver
from sessions_app.models import WaSession
from sessions_app.supervisor import Supervisor
from tests.integration.test_neonize_workers import CONFIG, worker_config
from tests.unit.helpers import state_is, until
from tests.unit.test_ops_metrics_move import moved, port, value

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),
]


async def test_a_killed_worker_is_counted_with_its_error_and_reconnect(tmp_path: Path) -> None:
    session = await sync_to_async(WaSession.objects.create)(
        name="crashy", jid="491510000001:1@s.whatsapp.net"
    )
    driver = NeonizeDriver(worker_config(tmp_path))
    supervisor = metrics.track(Supervisor(instrument(driver), config=CONFIG))
    task = asyncio.create_task(supervisor.run())
    server = serve_supervisor(supervisor, "127.0.0.1", 0)
    try:
        await until(session.pk, state_is("connected"), timeout=20)
        before = await port(server)
        assert value(before, "waconnect_worker_starts_total") >= 1
        pid = driver.workers[session.pk].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(session.pk, state_is("error"), timeout=10)
        crashed = await port(server)
        await until(session.pk, state_is("connected"), timeout=10)  # a new worker
        after = await port(server)
    finally:
        server.close()
        supervisor.stop()
        await task
    assert moved(before, crashed, "waconnect_worker_crashes_total") == 1
    assert moved(before, crashed, "waconnect_disconnects_total", cause="error") == 1
    assert moved(crashed, after, "waconnect_reconnects_total", cause="error") == 1
    assert moved(before, after, "waconnect_worker_starts_total") >= 1
    assert value(after, "waconnect_supervisor_sessions_held") == 1
