"""Both endpoints scraped while the simulated WhatsApp is driven: the web tier's
/metrics (database gauges) and the supervisor's port (its own counters) move with a
QR round, a scan, a QR timeout, a disconnect, a replaced device, a hand-over and a
self-fence."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.test import AsyncClient

from ops import metrics
from ops.instrument import instrument
from ops.server import MetricsServer, serve_supervisor
from sessions_app import intents, leases
from sessions_app.conf import SupervisorConfig
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.models import WaSession
from sessions_app.supervisor import Supervisor
from tests.unit.helpers import settled, state_is, until
from tests.unit.test_ops_supervisor_port import get
from tests.unit.test_ops_web import samples
from tests.unit.test_supervisor import FAST

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

create = sync_to_async(intents.create_session)
gesture = sync_to_async(intents.phone_gesture)
get_row = sync_to_async(WaSession.objects.get)


@contextlib.asynccontextmanager
async def supervised(
    world: SimulatedWhatsApp, config: SupervisorConfig = FAST
) -> AsyncIterator[tuple[Supervisor, MetricsServer]]:
    """A supervisor as ``run_supervisor --metrics-port`` builds it: counted driver, tracked."""
    supervisor = metrics.track(Supervisor(instrument(SimulatedDriver(world)), config=config))
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    server = serve_supervisor(supervisor, "127.0.0.1", 0)
    try:
        yield supervisor, server
    finally:
        server.close()
        supervisor.stop()
        await task


async def web() -> Samples:
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    return samples(response.content)


async def port(server: MetricsServer) -> Samples:
    status, body = await get(server, "/metrics")
    assert status == 200
    return samples(body.encode())


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def world() -> SimulatedWhatsApp:
    return SimulatedWhatsApp(
        SimulatedTiming(first_qr_ttl=5, next_qr_ttl=5, qr_count=2, pair_delay=0.01)
    )


async def test_a_qr_round_and_a_scan(world: SimulatedWhatsApp) -> None:
    session = await create("fresh", "ada")  # before any supervisor runs
    waiting = await web()
    assert value(waiting, "waconnect_sessions_awaiting_owner") == 1
    assert value(waiting, "waconnect_qr_request_oldest_age_seconds") > 0
    assert value(waiting, "waconnect_sessions", state="stopped") == 1
    assert value(waiting, "waconnect_sessions_desired", desired_state="running") == 1

    async with supervised(world) as (_, server):
        await until(session.pk, state_is("qr_required"))
        at_qr, shown = await port(server), await web()
        assert value(at_qr, "waconnect_supervisor_sessions_held") == 1
        assert value(shown, "waconnect_sessions", state="qr_required") == 1
        assert value(shown, "waconnect_sessions_awaiting_owner") == 0
        assert value(shown, "waconnect_qr_request_oldest_age_seconds") == 0
        assert value(shown, "waconnect_supervisors_alive") == 1

        await gesture(await get_row(pk=session.pk), "scan", "ada")
        await until(session.pk, state_is("connected"))
        linked, connected = await port(server), await web()
    assert value(connected, "waconnect_sessions", state="connected") == 1
    assert value(connected, "waconnect_sessions", state="qr_required") == 0
    assert moved(waiting, at_qr, "waconnect_lease_claims_total") == 1
    assert moved(waiting, at_qr, "waconnect_qr_rounds_started_total") == 1
    assert moved(waiting, at_qr, "waconnect_qr_codes_total") == 1
    assert moved(waiting, at_qr, "waconnect_qr_push_latency_seconds_count") == 1
    assert moved(at_qr, linked, "waconnect_qr_rounds_ended_total", outcome="paired") == 1


async def test_a_round_nobody_scans_ends_in_timeout() -> None:
    world = SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=0.2, next_qr_ttl=0.1, qr_count=2))
    async with supervised(world) as (_, server):
        before = await port(server)
        session = await create("unscanned", "ada")
        await until(session.pk, settled("qr_timeout"))
        after = await port(server)
    assert moved(before, after, "waconnect_qr_codes_total") == 2
    assert moved(before, after, "waconnect_qr_rounds_ended_total", outcome="timeout") == 1
    assert moved(before, after, "waconnect_disconnects_total", cause="qr_timeout") == 1


async def test_a_disconnect_is_counted_and_so_is_the_reconnect(world: SimulatedWhatsApp) -> None:
    async with supervised(world) as (_, server):
        session = await create("flaky", "ada")
        await until(session.pk, state_is("qr_required"))
        await gesture(await get_row(pk=session.pk), "scan", "ada")
        await until(session.pk, state_is("connected"))
        before = await port(server)
        await gesture(await get_row(pk=session.pk), "disconnect", "ada")
        await until(session.pk, state_is("disconnected"))
        await until(session.pk, state_is("connected"))
        after, seen = await port(server), await web()
    assert moved(before, after, "waconnect_disconnects_total", cause="disconnected") == 1
    assert moved(before, after, "waconnect_reconnects_total", cause="disconnected") == 1
    assert moved(before, after, "waconnect_qr_rounds_started_total") == 0  # resumed, no QR
    assert value(seen, "waconnect_sessions", state="connected") == 1


async def test_a_replaced_device_is_counted_and_not_reconnected(world: SimulatedWhatsApp) -> None:
    async with supervised(world) as (_, server):
        session = await create("taken", "ada")
        await until(session.pk, state_is("qr_required"))
        await gesture(await get_row(pk=session.pk), "scan", "ada")
        await until(session.pk, state_is("connected"))
        before = await port(server)
        await gesture(await get_row(pk=session.pk), "replace", "ada")
        await until(session.pk, settled("replaced"))
        after, seen = await port(server), await web()
    assert moved(before, after, "waconnect_disconnects_total", cause="replaced") == 1
    assert moved(before, after, "waconnect_reconnects_total", cause="replaced") == 0
    assert value(after, "waconnect_supervisor_sessions_held") == 0
    assert value(seen, "waconnect_sessions", state="replaced") == 1


async def test_a_hand_over_moves_sessions_to_the_other_supervisor(
    world: SimulatedWhatsApp,
) -> None:
    async with contextlib.AsyncExitStack() as first_stack:
        _, first_port = await first_stack.enter_async_context(supervised(world))
        sessions = [await create(f"linked-{i}", "ada") for i in range(3)]
        for session in sessions:
            await until(session.pk, state_is("qr_required"))
            await gesture(await get_row(pk=session.pk), "scan", "ada")
            await until(session.pk, state_is("connected"))
        before = await port(first_port)
        assert value(before, "waconnect_supervisor_sessions_held") == 3
        async with supervised(world) as (second, second_port):
            assert value(await web(), "waconnect_supervisors_alive") == 2
            await first_stack.aclose()  # a clean shutdown: every session handed over
            for session in sessions:
                await until(
                    session.pk,
                    lambda s: s["state"] == "connected" and s["lease_owner"] == second.owner,
                )
            after = await port(second_port)
            assert value(await web(), "waconnect_supervisors_alive") == 1
    assert moved(before, after, "waconnect_lease_handovers_total") == 3
    assert moved(before, after, "waconnect_lease_claims_total") == 3
    assert value(after, "waconnect_supervisor_sessions_held") == 3
    assert moved(before, after, "waconnect_qr_rounds_started_total") == 0  # resumed, no new QR


class _Unreachable:
    """Django's connection, except that every cursor fails (the database went away)."""

    def __init__(self, real: object) -> None:
        self._real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def cursor(self) -> object:
        raise OperationalError("database unreachable")


async def test_failing_renewals_and_the_self_fence_are_counted(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(world) as (supervisor, server):
        session = await create("fenced", "ada")
        await until(session.pk, state_is("qr_required"))
        before = await port(server)
        monkeypatch.setattr(leases, "connection", _Unreachable(leases.connection))
        deadline = time.monotonic() + FAST.lease_ttl + 5
        status, _ = await get(server, "/readyz")
        while status == 200 and time.monotonic() < deadline:  # watched as a probe does
            await asyncio.sleep(0.1)
            status, _ = await get(server, "/readyz")
        assert supervisor.fenced
        after = await port(server)
        monkeypatch.undo()
    assert moved(before, after, "waconnect_self_fences_total") == 1
    assert moved(before, after, "waconnect_lease_renewal_failures_total") >= 1
    assert value(after, "waconnect_supervisor_sessions_held") == 0
    assert moved(before, after, "waconnect_qr_rounds_ended_total", outcome="cancelled") == 1
