"""A supervisor cut off from PostgreSQL and Redis still stops on SIGTERM.

A deploy or a scale-down during a network fault: ``run_supervisor`` gets SIGTERM
while its database does not answer. Before the bounded stop
(:mod:`sessions_app.stopping`) its shutdown's first database call blocked on the
socket for good and the process never exited (found with this test: still there
40 s after the SIGTERM, every database thread waiting in ``psycopg``). Now it
closes its WhatsApp connections before its leases can expire, gives up on the
hand-over at the self-fence deadline, and exits with status 0; its sessions are
taken over once their leases expire. And the whole stop, from the signal on, is
bounded by ``WACONNECT_STOP_GRACE`` (an orchestrator's grace period).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from asgiref.sync import sync_to_async

from benchmarks.cluster import Cluster, SupervisorProcess
from sessions_app import intents
from sessions_app.drivers.simulated_service import ServiceControl
from sessions_app.management.commands.run_supervisor import EXIT_GRACE
from tests.postgres import test_chaos
from tests.postgres.test_chaos import TTL, lease_expiries
from webhooks.dispatcher import STOP_SECONDS

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
]

SESSIONS = 10


# The chaos test's cluster (its timings, a fault proxy per supervisor) and its line
# to the simulated WhatsApp service.
cluster = test_chaos.cluster
control = test_chaos.control


@sync_to_async
def create_sessions() -> set[int]:
    return {intents.create_session(f"cut-{i:02d}", "test").pk for i in range(SESSIONS)}


@dataclasses.dataclass
class Stopped:
    """A supervisor that linked every session, was cut off and got SIGTERM."""

    supervisor: SupervisorProcess
    status: int  # its exit status
    took: float  # seconds from the SIGTERM to its exit
    live: int  # its connections still open then (5 s allowed for the service to see)
    ended_at: float  # when (wall clock) its last connection ended
    expiries: dict[int, float]  # its sessions' lease expiries before the fault


async def cut_off_and_terminated(cluster: Cluster, control: ServiceControl) -> Stopped:
    supervisor = cluster.start_supervisor()
    ids = await create_sessions()
    assert not await control.wait_connected(ids, 60, ""), "sessions never linked"
    owner = supervisor.owner()
    expiries = await lease_expiries(owner)  # renewals only push them later
    assert set(expiries) == ids

    supervisor.partition()
    asked = time.monotonic()
    status = await asyncio.to_thread(supervisor.terminate, TTL + STOP_SECONDS + EXIT_GRACE + 15)
    took = time.monotonic() - asked
    print(f"stopped {took:.1f}s after SIGTERM")
    live, ended_at = await control.wait_owner_idle(owner, 5.0)
    return Stopped(supervisor, status, took, live, ended_at, expiries)


async def test_a_supervisor_cut_off_from_the_database_stops_on_sigterm(
    cluster: Cluster, control: ServiceControl, redis_layer: None
) -> None:
    stopped = await cut_off_and_terminated(cluster, control)
    assert stopped.status == 0
    assert stopped.live == 0
    assert stopped.ended_at < min(stopped.expiries.values()), "a connection outlived its lease"
    assert "stopped without finishing its hand-over" in stopped.supervisor.output()


GRACE = 3.0


async def test_the_stop_grace_bounds_the_whole_stop(
    cluster: Cluster, control: ServiceControl, redis_layer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut off, the stop gives its hand-over the lease TTL (8 s here) before it goes
    on; Kubernetes' SIGKILL comes 30 s after its SIGTERM, whatever the TTL. With
    ``WACONNECT_STOP_GRACE`` the process is gone that long after the signal, saying
    so, its connections closed (they die with it at the latest)."""
    monkeypatch.setenv("WACONNECT_STOP_GRACE", str(GRACE))
    stopped = await cut_off_and_terminated(cluster, control)
    assert stopped.status == 0
    assert stopped.took < TTL, "the stop waited for its hand-over past the grace"
    output = stopped.supervisor.output()
    assert f"still running {GRACE:.1f}s after the signal to stop" in output
    assert stopped.live == 0
    assert stopped.ended_at < min(stopped.expiries.values()), "a connection outlived its lease"
