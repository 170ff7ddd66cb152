"""Worker processes for real: faults end as one session's error, never more.

The fault tests run the real driver and supervisor with a stand-in worker
(``tests/fakes/fault_worker.py``) that speaks the real protocol and misbehaves on
cue; the last test runs a real neonize worker up to the DNS lookup that fails
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from sessions_app import intents
from sessions_app.conf import SupervisorConfig
from sessions_app.drivers.base import (
    Connected,
    ConnectError,
    ConnectSpec,
    DriverError,
    DriverEvent,
    SendFailed,
)
from sessions_app.drivers.neonize_driver import NeonizeDriver, WorkerConfig
from sessions_app.models import SessionEvent, WaSession
from sessions_app.supervisor import Supervisor
from tests.fakes.whatsmeow_store import add_device
from tests.unit.helpers import settled, state_is, until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),
]

CONFIG = SupervisorConfig(
    lease_ttl=5.0,
    renew_interval=1.0,
    self_fence_margin=1.0,
    reconcile_interval=1.0,
    backoff_base=0.2,
    backoff_cap=0.5,
    stop_timeout=5.0,
)


def worker_config(tmp_path: Path, **overrides: object) -> WorkerConfig:
    values: dict[str, object] = {
        "store": str(tmp_path / "whatsmeow.sqlite3"),
        "warm": 2,
        "heartbeat": 0.2,
        "deadline": 1.5,
        "ask_grace": 0.3,
        "term_grace": 0.3,
        "module": "tests.fakes.fault_worker",
    }
    values.update(overrides)
    return WorkerConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def supervising(driver: NeonizeDriver) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(driver, config=CONFIG)
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    try:
        yield supervisor
    finally:
        supervisor.stop()
        await task


@sync_to_async
def linked_sessions(count: int) -> list[WaSession]:
    return [
        WaSession.objects.create(name=f"w{i}", jid=f"49151{i:07d}:1@s.whatsapp.net")
        for i in range(count)
    ]


@sync_to_async
def history(session_id: int) -> list[tuple[str, str]]:
    return list(
        SessionEvent.objects.filter(session_id=session_id)
        .order_by("id")
        .values_list("to_state", "message")
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Faults:
    """The misbehaviour plan the stand-in workers read from their environment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.plan: dict[str, str] = {}
        monkeypatch.setenv("WACONNECT_TEST_FAULTS", "{}")

    def set(self, session: WaSession, fault: str) -> None:
        self.plan[str(session.pk)] = fault
        self.monkeypatch.setenv("WACONNECT_TEST_FAULTS", json.dumps(self.plan))


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


@pytest.mark.parametrize("fault", ["sigkill", "abort", "silent", "garbage"])
async def test_a_broken_worker_fails_only_its_own_session(
    tmp_path: Path, faults: Faults, fault: str
) -> None:
    sessions = await linked_sessions(11)
    victim, others = sessions[0], sessions[1:]
    if fault != "sigkill":
        faults.set(victim, fault)
    driver = NeonizeDriver(worker_config(tmp_path))
    async with supervising(driver):
        for session in sessions:
            await until(session.pk, state_is("connected"), timeout=20)
        before = {s.pk: (driver.workers[s.pk].pid, await history(s.pk)) for s in others}
        victim_pid = driver.workers[victim.pk].pid
        assert victim_pid is not None
        os.kill(victim_pid, signal.SIGKILL if fault == "sigkill" else signal.SIGUSR1)

        snap = await until(victim.pk, state_is("error"), timeout=10)
        assert snap["retry_count"] == 1
        assert snap["next_retry_at"] is not None
        expected = {
            "sigkill": "killed by signal 9",
            "abort": "killed by signal 6",
            "silent": "silent for more than",
            "garbage": "malformed message",
        }[fault]
        assert expected in snap["last_error"]

        await until(victim.pk, state_is("connected"), timeout=10)  # retried, new worker
        assert driver.workers[victim.pk].pid != victim_pid
        assert not alive(victim_pid)
        after = {s.pk: (driver.workers[s.pk].pid, await history(s.pk)) for s in others}
        assert after == before, "the other sessions were touched"


async def test_stop_and_delete_of_a_stuck_worker_finish_within_the_grace(
    tmp_path: Path, faults: Faults
) -> None:
    stuck_stop, stuck_delete = await linked_sessions(2)
    faults.set(stuck_stop, "stuck")
    faults.set(stuck_delete, "stuck")
    config = worker_config(tmp_path)
    driver = NeonizeDriver(config)
    grace = config.ask_grace + config.term_grace
    async with supervising(driver):
        for session in (stuck_stop, stuck_delete):
            await until(session.pk, state_is("connected"), timeout=20)
        pids = [driver.workers[s.pk].pid for s in (stuck_stop, stuck_delete)]

        started = time.monotonic()
        await sync_to_async(intents.stop)(stuck_stop, "ada")
        await until(stuck_stop.pk, settled("stopped"), timeout=10)
        stop_took = time.monotonic() - started

        started = time.monotonic()
        await sync_to_async(intents.delete)(stuck_delete, "ada")
        await until(stuck_delete.pk, lambda snap: snap is None, timeout=10)
        delete_took = time.monotonic() - started

    assert stop_took < grace + 1.0
    assert delete_took < grace + 1.0
    assert not any(alive(pid) for pid in pids if pid)


async def test_a_real_neonize_worker_fails_at_dns_and_retries_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session = await sync_to_async(intents.create_session)("real-neonize", "ada")
    config = worker_config(
        tmp_path, module="sessions_app.drivers.neonize_worker", warm=1, deadline=10
    )
    driver = NeonizeDriver(config)
    slow_retry = SupervisorConfig(**{**CONFIG.__dict__, "backoff_base": 30.0, "backoff_cap": 60.0})
    supervisor = Supervisor(driver, config=slow_retry)
    task = asyncio.create_task(supervisor.run())
    try:
        worker = await driver.worker_for(session.pk)
        async with asyncio.timeout(30):
            await worker.connecting.wait()
        snap = await until(session.pk, state_is("error"), timeout=30)
    finally:
        supervisor.stop()
        await task
    # When it called connect(), by its own clock (one clock for the host's
    # processes), before its word of it reached the supervisor.
    assert worker.connect_called_at is not None and worker.connecting_at is not None
    assert worker.connect_called_at <= worker.connecting_at
    assert "web.whatsapp.com" in snap["last_error"]
    assert snap["next_retry_at"] is not None
    assert snap["retry_count"] == 1
    states = [to for to, _ in await history(session.pk) if to]
    assert states == ["connecting", "error"]
    assert (tmp_path / "whatsmeow.sqlite3").exists(), "the store was created before the worker"
    assert "Traceback" not in caplog.text
    for secret in ("wa.me/settings", "2@", "linked_devices#"):
        assert secret not in caplog.text


async def test_a_real_worker_resumes_only_a_device_the_store_holds(tmp_path: Path) -> None:
    """A JID with no row would make neonize's Go side abort the process: the worker
    checks first and reports the device as logged out; a stored one is resumed."""
    stored, missing = await linked_sessions(2)
    config = worker_config(
        tmp_path, module="sessions_app.drivers.neonize_worker", warm=1, deadline=10
    )
    driver = NeonizeDriver(config)
    await driver.prepare()
    await asyncio.to_thread(add_device, config.store, stored.jid)
    slow_retry = SupervisorConfig(**{**CONFIG.__dict__, "backoff_base": 30.0, "backoff_cap": 60.0})
    supervisor = Supervisor(driver, config=slow_retry)
    task = asyncio.create_task(supervisor.run())
    try:
        gone = await until(missing.pk, settled("logged_out"), timeout=30)
        resumed = await until(stored.pk, state_is("error"), timeout=30)
    finally:
        supervisor.stop()
        await task
    assert gone["phone"] == ""
    assert "web.whatsapp.com" in resumed["last_error"], "it got as far as dialing WhatsApp"
    assert [to for to, _ in await history(stored.pk) if to] == ["connecting", "error"]


async def test_a_real_worker_refuses_a_send_while_not_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Offline, the real worker never gets past the DNS lookup: a send is refused as
    not connected (never handed to neonize); with no worker at all it is an error."""
    caplog.set_level(logging.DEBUG)
    config = worker_config(
        tmp_path, module="sessions_app.drivers.neonize_worker", warm=1, deadline=10
    )
    driver = NeonizeDriver(config)
    events: asyncio.Queue[DriverEvent] = asyncio.Queue()
    try:
        await driver.start(ConnectSpec(1), events.put_nowait)
        await driver.send_text(1, "ref-1", "+4915112345678", "a text that stays private")
        async with asyncio.timeout(30):
            while not isinstance(event := await events.get(), SendFailed):
                assert isinstance(event, ConnectError), event  # the DNS failure, maybe first
        with pytest.raises(DriverError):
            await driver.send_text(2, "ref-2", "+4915112345678", "no connection for this one")
    finally:
        await driver.aclose()
    assert (event.ref, event.outcome, event.reason) == ("ref-1", "refused", "not_connected")
    assert "a text that stays private" not in caplog.text


async def test_a_send_pending_when_its_worker_dies_is_unknown(tmp_path: Path) -> None:
    """Asked and never answered: it may have gone out. Reported before the error that
    ends the connection, so the runner hears it while it still listens."""
    driver = NeonizeDriver(worker_config(tmp_path))  # the stand-in never answers a send
    events: asyncio.Queue[DriverEvent] = asyncio.Queue()
    try:
        await driver.start(ConnectSpec(1, jid="4915100000001:1@s.whatsapp.net"), events.put_nowait)
        async with asyncio.timeout(20):
            assert isinstance(await events.get(), Connected)
            await driver.send_text(1, "in-flight", "4915112345678", "x")
            pid = driver.workers[1].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            failed, error = await events.get(), await events.get()
    finally:
        await driver.aclose()
    assert isinstance(failed, SendFailed)
    assert (failed.ref, failed.outcome, failed.reason) == ("in-flight", "unknown", "error")
    assert isinstance(error, ConnectError) and "killed by signal 9" in error.message
