"""A stop that ends even when the database does not answer (sessions_app.stopping).

CI's PostgreSQL pass once waited 30 s for a supervisor that had logged "stopped" to
exit, and a supervisor cut off from PostgreSQL never stopped on SIGTERM at all: its
shutdown awaited its first database call, blocked on the socket for good (no thread
can be stopped, and the interpreter joins every executor thread before it exits).
``tests/postgres/test_stop_cut_off.py`` stops such a process for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import DatabaseError

from sessions_app import conf, owner_db, stopping
from sessions_app.dbthread import lease_db, supervisor_db
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedWhatsApp
from sessions_app.management.commands import run_supervisor
from sessions_app.models import WaSession
from sessions_app.runner import SessionRunner
from sessions_app.supervisor import Supervisor
from tests.background import LosesOneCancellation
from tests.unit.test_supervisor import FAST, paired, running, running_driver

pytestmark = pytest.mark.timeout(60)


class Unanswered:
    """Database calls that block their thread, as one to a server that does not
    answer does, until ``answer`` is set (30 s at most); ``entered`` is set once a
    call is in one."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.entered = threading.Event()

    def call(self, result: object = None) -> Callable[..., object]:
        """A plain function that hangs so, then returns ``result``."""

        def hangs(*args: object) -> object:
            self.entered.set()
            self.answer.wait(30)
            return result

        return hangs


@pytest.fixture
def unanswered() -> Iterator[Unanswered]:
    calls = Unanswered()
    yield calls
    calls.answer.set()  # the supervisor's database threads are shared by later tests


async def test_steps_run_in_order_and_a_failing_one_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def step(name: str, fail: bool = False) -> None:
        ran.append(name)
        if fail:
            raise RuntimeError(name)

    ended = await stopping.steps_within(
        5.0, [("a", lambda: step("a")), ("b", lambda: step("b", True)), ("c", lambda: step("c"))]
    )
    assert ended is True
    assert ran == ["a", "b", "c"]
    assert "stopping: b failed" in caplog.text


async def test_a_step_past_the_deadline_is_left_behind_and_the_rest_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    started: list[str] = []

    async def stuck() -> None:
        started.append("stuck")
        await never.wait()

    async def later() -> None:
        started.append("later")

    began = time.monotonic()
    ended = await stopping.steps_within(0.2, [("stuck", stuck), ("later", later)])
    assert ended is False
    assert time.monotonic() - began < 2.0
    assert started == ["stuck"]
    assert "stuck did not end within 0.2s; left behind, skipped: later" in caplog.text
    never.set()


def test_a_process_whose_thread_is_stuck_exits_within_the_grace() -> None:
    """The interpreter would join the stuck (non-daemon) thread forever."""
    program = textwrap.dedent(
        """
        import threading
        from sessions_app.stopping import exit_within
        threading.Thread(target=threading.Event().wait, name="stuck-db").start()
        exit_within(0.3, status=0)
        """
    )
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 15
    assert "still running 0.3s after stopping (stuck-db in wait" in result.stderr


@pytest.mark.django_db(transaction=True)
async def test_a_supervisor_stops_while_the_database_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, unanswered: Unanswered
) -> None:
    """Its connections close before its leases can expire, and ``run()`` returns
    (the hand-over left behind; the lease expires by itself)."""
    caplog.set_level(logging.WARNING)
    world = SimulatedWhatsApp()
    async with asyncio.timeout(20):  # before the bound: never returned
        async with running(world) as supervisor:
            session = await paired("cut-off", supervisor)
            monkeypatch.setattr(owner_db, "withdraw", supervisor_db(unanswered.call()))
    assert unanswered.answer.is_set() is False, "the stop did not wait for the database"
    assert world.live[session.pk] == 0
    expires = await sync_to_async(
        lambda: WaSession.objects.values_list("lease_expires_at", flat=True).get(pk=session.pk)
    )()
    assert expires is not None, "nothing was released: the database never answered"
    assert world.ended_at[supervisor.owner] < expires.timestamp()
    assert "withdrawing from the census did not end" in caplog.text
    assert "stopped without finishing its hand-over" in caplog.text


@pytest.mark.parametrize(("fails", "status"), [(False, 0), (True, 1)])
def test_run_supervisor_makes_sure_its_process_exits_with_the_right_status(
    monkeypatch: pytest.MonkeyPatch, fails: bool, status: int
) -> None:
    """Armed once serving ended; 1 when it failed (the traceback's own status)."""
    armed: list[tuple[float, int]] = []

    async def serve(**options: object) -> None:
        if fails:
            raise RuntimeError("the supervisor died")

    monkeypatch.setattr(run_supervisor, "serve", serve)
    monkeypatch.setattr(run_supervisor, "freeze_startup_heap", lambda name: None)
    monkeypatch.setattr(
        run_supervisor, "exit_within", lambda grace, status: armed.append((grace, status))
    )
    with contextlib.suppress(RuntimeError):
        call_command("run_supervisor")
    assert armed == [(run_supervisor.EXIT_GRACE, status)]


class StuckStopDriver(SimulatedDriver):
    """A driver whose stop never finishes (a neonize worker that does not answer):
    the connection stays open on WhatsApp's side.

    ``stuck``: only these sessions' stops hang (None: every session's);
    ``close_ends_them``: closing the whole driver does close them (the worker
    process ends), else that close hangs too.
    """

    def __init__(
        self,
        world: SimulatedWhatsApp,
        stuck: set[int] | None = None,
        close_ends_them: bool = False,
    ) -> None:
        super().__init__(world)
        self.unstick = asyncio.Event()
        self.stuck = stuck
        self.close_ends_them = close_ends_them

    async def stop(self, session_id: int) -> None:
        if self.stuck is None or session_id in self.stuck:
            await self.unstick.wait()
        await super().stop(session_id)

    async def aclose(self) -> None:
        if self.close_ends_them:
            self.unstick.set()
        await super().aclose()


async def crash_with_its_stop_stuck(
    monkeypatch: pytest.MonkeyPatch, supervisor: Supervisor, session_id: int
) -> SessionRunner:
    """Make the session's runner crash (its next read fails) while the driver's stop
    of it hangs (``StuckStopDriver.stuck`` must hold it): an orphan whose
    connection may still be open."""
    load = owner_db.load

    async def load_that_fails(sid: int) -> WaSession | None:
        if sid == session_id:
            raise DatabaseError("server closed the connection unexpectedly")
        return await load(sid)

    with monkeypatch.context() as patched:
        patched.setattr(owner_db, "load", load_that_fails)
        runner = supervisor.runners[session_id]
        runner.poke("test")
        await asyncio.wait({runner.task})
    assert runner.exit_reason == "crashed" and runner.stop_unconfirmed
    return runner


@pytest.mark.django_db(transaction=True)
async def test_a_connection_whose_stop_did_not_finish_keeps_its_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Released with the others, its session could be claimed and connected by
    another supervisor while this connection is still open: a double connection.
    It is left to expire instead (before: released, connection and all)."""
    caplog.set_level(logging.WARNING)
    world = SimulatedWhatsApp()
    driver = StuckStopDriver(world)
    try:
        async with asyncio.timeout(30):
            async with running_driver(driver) as supervisor:
                session = await paired("stuck-stop", supervisor)
    finally:
        driver.unstick.set()
    assert world.live[session.pk] == 1, "the stop never reached WhatsApp"
    owner = await sync_to_async(
        lambda: WaSession.objects.values_list("lease_owner", flat=True).get(pk=session.pk)
    )()
    assert owner == supervisor.owner
    assert "its connection may still be open" in caplog.text
    assert "stopped without finishing its hand-over" in caplog.text


@pytest.mark.parametrize("close_ends_it", [True, False], ids=["driver-closes", "close-hangs"])
@pytest.mark.django_db(transaction=True)
async def test_an_orphan_whose_connection_may_be_open_keeps_its_lease_until_the_driver_closed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, close_ends_it: bool
) -> None:
    """A runner that crashed while its driver stop did not finish leaves an orphan:
    the lease still ours, the connection perhaps still open. At a shutdown where
    every other runner stops cleanly, the orphan's lease is given back only once
    the driver has closed, and kept (left to expire) if that close does not end.
    Before: ``release_all`` gave it back first, connection open, so another
    supervisor could claim the session and connect the device a second time."""
    caplog.set_level(logging.WARNING)
    world = SimulatedWhatsApp()
    driver = StuckStopDriver(world, stuck=set(), close_ends_them=close_ends_it)
    # No renewal while the test runs: it would give the orphan back first.
    config = dataclasses.replace(FAST, lease_ttl=30.0, renew_interval=20.0)
    release_all = owner_db.release_all
    open_at_release: list[int] = []  # the orphan's live connections when release_all ran
    try:
        async with asyncio.timeout(30):
            async with running_driver(driver, config) as supervisor:
                orphan = await paired("orphan", supervisor)
                clean = await paired("clean", supervisor)
                driver.stuck.add(orphan.pk)
                await crash_with_its_stop_stuck(monkeypatch, supervisor, orphan.pk)
                assert supervisor._orphans == {orphan.pk: orphan.lease_epoch}
                assert world.live[orphan.pk] == 1, "the orphan's connection is still open"

                async def recorded_release_all(owner: str) -> int:
                    open_at_release.append(world.live[orphan.pk])
                    return await release_all(owner)

                monkeypatch.setattr(owner_db, "release_all", recorded_release_all)
        open_after_stop = world.live[orphan.pk]  # before the stuck stops may go on
    finally:
        driver.unstick.set()
    owners = await sync_to_async(lambda: dict(WaSession.objects.values_list("pk", "lease_owner")))()
    assert open_at_release in ([], [0]), "the orphan's lease was given back, connection open"
    assert owners[clean.pk] == "", "the clean runner was handed over"
    if close_ends_it:
        assert open_at_release == [0]
        assert open_after_stop == 0
        assert owners[orphan.pk] == "", "given back once the driver closed"
    else:
        assert open_after_stop == 1
        assert owners[orphan.pk] == supervisor.owner, "kept, left to expire"
        assert "stopped without finishing its hand-over" in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_connections_close_at_the_stop_not_after_the_stuck_side_tasks(
    monkeypatch: pytest.MonkeyPatch, unanswered: Unanswered
) -> None:
    """A renewal stuck in the database (its thread blocked) must not hold up the
    connections' close at a stop: past the self-fence deadline they would outlive
    their leases (TTL 3 s here). A guard, not a fix: asgiref lets a cancelled
    plain database call go at once (its thread goes on), so the renew task ends
    promptly; a review feared it would hold the stop up for the side tasks' 5 s."""
    world = SimulatedWhatsApp()
    async with running(world) as supervisor:
        session = await paired("renewal-stuck", supervisor)
        monkeypatch.setattr(owner_db, "renew", lease_db(unanswered.call([])))
        await asyncio.to_thread(unanswered.entered.wait, 10)  # the renew loop is in the call
        asked = time.time()
        supervisor.stop()
        assert await world.until(lambda: world.live[session.pk] == 0, 20)
        closed = time.time() - asked
    assert closed < 1.0, f"the connection closed {closed:.1f}s after the stop"


async def test_cancel_until_done_gives_up_on_a_task_at_its_timeout() -> None:
    """A task that ignores every cancellation is returned, not waited for."""
    released = asyncio.Event()
    refusals = 0

    async def refuses() -> None:
        nonlocal refusals
        while not released.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                refusals += 1

    task = asyncio.create_task(refuses())
    await asyncio.sleep(0)  # let it start
    stuck = await stopping.cancel_until_done([task], timeout=0.3)
    assert stuck == {task} and refusals > 1, "cancelled again and again, then left"
    released.set()
    task.cancel()
    await asyncio.wait({task})


@pytest.mark.django_db(transaction=True)
async def test_a_side_task_that_lost_its_cancellation_is_cancelled_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reconcile loop is ``while True``; a cancellation lost in a library (3.11's
    wait_for under redis-py's writes, as in CI's stop 18) left it running: the stop
    gave up on it after 5 s ("did not stop in time") and it ran on, past the stop.
    Now it is cancelled again until it ends."""
    reconcile = LosesOneCancellation()
    world = SimulatedWhatsApp()
    async with running(world) as supervisor:
        monkeypatch.setattr(supervisor, "reconcile", reconcile)
        supervisor.look_for_work()
        await reconcile.entered.wait()
        loop_task = next(t for t in asyncio.all_tasks() if t.get_name() == "waconnect-reconcile")
    assert "did not stop in time" not in caplog.text
    assert loop_task.done() and reconcile.lost == 1, "one cancellation lost, a later one took"


async def test_a_driver_close_that_fails_after_the_wait_is_still_read_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    class LateFailingDriver(SimulatedDriver):
        async def aclose(self) -> None:
            await release.wait()
            raise OSError("worker pipe broken")

    sup = Supervisor(
        LateFailingDriver(SimulatedWhatsApp()), config=dataclasses.replace(FAST, stop_timeout=0.05)
    )
    assert not await sup._close_driver(), "not closed within the wait"
    closing = sup._driver_closing
    assert closing is not None
    with caplog.at_level(logging.WARNING, logger="sessions_app.supervisor"):
        release.set()
        await asyncio.wait({closing})
        await asyncio.sleep(0)  # done callbacks run on the loop's next turn
    assert "the driver's close failed: OSError('worker pipe broken')" in caplog.text


def test_the_stop_grace_is_25_s_and_must_be_positive(settings: Any) -> None:
    """Under Kubernetes' default 30 s grace period; see
    tests/postgres/test_stop_cut_off.py for the bound itself."""
    del settings.WACONNECT_STOP_GRACE
    assert conf.stop_grace() == 25.0
    settings.WACONNECT_STOP_GRACE = 0
    with pytest.raises(ImproperlyConfigured, match="WACONNECT_STOP_GRACE"):
        conf.stop_grace()
