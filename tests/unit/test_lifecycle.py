"""Issue 8's lifecycle faults, replayed on the real supervisor with the simulated driver.

Each test names the fault it covers; each failed on the code before the fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone

from sessions_app import doorbell, intents, leases
from sessions_app.drivers.base import ConnectError, ConnectSpec, EventSink, Replaced
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.event_mapping import round_ended
from sessions_app.models import SessionEvent, WaSession
from sessions_app.runner import SessionRunner
from tests.unit.helpers import has_event, settled, state_is, until
from tests.unit.test_supervisor import (
    FAST,
    create,
    events_of,
    gesture,
    get,
    paired,
    running_driver,
    scan,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

start = sync_to_async(intents.start)
stop = sync_to_async(intents.stop)
new_qr = sync_to_async(intents.new_qr)
pair_by_phone = sync_to_async(intents.pair_by_phone)
logout = sync_to_async(intents.logout)


@pytest.fixture(autouse=True)
def no_runner_crashed(caplog: pytest.LogCaptureFixture) -> Any:
    """No test here passes through a crashed runner ("supervisor error; handing over")."""
    yield
    crashes = [r for r in caplog.records if r.getMessage() == "session runner failed"]
    assert not crashes, crashes[0].exc_text


@pytest.fixture
def world() -> SimulatedWhatsApp:
    """QR codes that stay up long enough for a test to act during the round."""
    return SimulatedWhatsApp(
        SimulatedTiming(first_qr_ttl=30, next_qr_ttl=10, qr_count=2, pair_delay=0.01)
    )


class Waits:
    """Every retry timer a runner arms: (session id, seconds until it fires)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        arm = SessionRunner._arm_retry_timer

        def spy(runner: SessionRunner, *args: Any) -> None:
            arm(runner, *args)
            timer = runner._retry_timer
            if timer is not None:
                loop = asyncio.get_running_loop()
                self.queue.put_nowait((runner.session_id, timer.when() - loop.time()))

        monkeypatch.setattr(SessionRunner, "_arm_retry_timer", spy)

    def clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    async def longer_than(self, session_id: int, seconds: float, timeout: float = 5.0) -> float:
        """The next wait of ``session_id`` longer than ``seconds`` (the runner chose to wait)."""
        async with asyncio.timeout(timeout):
            while True:
                sid, delay = await self.queue.get()
                if sid == session_id and delay > seconds:
                    return delay


@sync_to_async
def raw_intent(session_id: int, ring: bool = True, **changes: Any) -> None:
    """Write the row behind the runner's back: mostly an intent as a web process with
    a stale read would write it (no refusal), which the runner must still handle."""
    WaSession.objects.filter(pk=session_id).update(**changes)
    if ring:
        doorbell.ring_supervisors_sync(session_id, "test")


# -- fault 1: backoff and the connection ceiling bind whoever owns the session -------


async def test_backoff_binds_after_stop_and_start_and_after_a_restart(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8 fault 1, the small input: BACKOFF_BASE=30; create, scan, Stop, Start,
    simulate a disconnect: no reconnect before next_retry_at, neither by this owner
    nor by the next one (a supervisor restart)."""
    waits = Waits(monkeypatch)
    slow = dataclasses.replace(FAST, backoff_base=30, backoff_cap=300)
    async with running_driver(SimulatedDriver(world), slow) as sup:
        session = await paired("slow", sup)  # type: ignore[arg-type]
        await stop(session, "ada")
        await until(session.pk, settled("stopped"))
        await start(await get(pk=session.pk), "ada")
        await until(session.pk, state_is("connected"))
        waits.clear()
        await gesture(session, "disconnect", "test")
        delay = await waits.longer_than(session.pk, 10)
        row = await get(pk=session.pk)
        assert row.state == "disconnected"
        assert 14 <= (row.next_retry_at - timezone.now()).total_seconds() <= 30
        assert 14 <= delay <= 30
        assert world.connects[session.pk] == 2, "reconnected before next_retry_at"
    async with running_driver(SimulatedDriver(world), slow) as second:
        await waits.longer_than(session.pk, 10)
        assert (await get(pk=session.pk)).lease_owner == second.owner
        assert world.connects[session.pk] == 2, "the new owner ignored the backoff"


class Unreachable(SimulatedDriver):
    """WhatsApp cannot be reached: every connection attempt fails at once."""

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        self.calls.append(("start", spec.session_id))
        raise ConnectionError("web.whatsapp.com unreachable")


async def test_no_session_connects_more_than_the_ceiling_through_takeovers_and_restarts(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8 fault 1: an always-failing connection with a tiny backoff, owned by a
    supervisor, then its successor after a restart, after a Stop and Start, and
    after a crash (lease expired): ten attempts in all within the minute."""
    waits = Waits(monkeypatch)
    session = await sync_to_async(WaSession.objects.create)(
        name="stormy", jid="4915@s.whatsapp.net", state="connected"
    )
    driver = Unreachable(world)

    def attempts() -> int:
        return driver.calls.count(("start", session.pk))

    async with running_driver(driver) as first:
        await waits.longer_than(session.pk, 5)  # the ceiling, not the 0.2 s backoff
        assert attempts() == FAST.connect_limit == 10
        assert (await get(pk=session.pk)).lease_owner == first.owner
    async with running_driver(driver) as second:  # a restart: a new owner
        await waits.longer_than(session.pk, 5)
        assert (await get(pk=session.pk)).lease_owner == second.owner
        await stop(await get(pk=session.pk), "ada")
        await until(session.pk, settled("stopped"))
        await start(await get(pk=session.pk), "ada")  # an admin request: still bound
        await waits.longer_than(session.pk, 5)
    # A crash: the lease of a dead owner runs out; the next one claims it.
    await raw_intent(session.pk, ring=False, lease_owner="dead", lease_expires_at=timezone.now())
    async with running_driver(driver):
        await waits.longer_than(session.pk, 5)
    assert attempts() == 10
    errors = [m for kind, _, m in await events_of(session.pk) if kind == "state"]
    assert len(errors) < 30, "no storm in the event log either"


# -- fault 2: a request is served or dropped in the state it was made in -------------


async def test_a_start_while_connected_is_served_and_never_undoes_replaced(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 fault 2: Start pressed while connected (a stale page, or a ring the
    runner sees only with the "stream replaced") must not reconnect after it."""
    async with running_driver(SimulatedDriver(world)) as sup:
        session = await paired("pingpong", sup)  # type: ignore[arg-type]
        with pytest.raises(intents.IntentRefused) as refused:
            await start(session, "ada")
        assert refused.value.code == "already_running"

        await raw_intent(session.pk, connect_request=F("connect_request") + 1)
        await until(session.pk, has_event("start request served: already connected"))
        # A second stale start, not rung: first seen together with the replacement.
        await raw_intent(session.pk, ring=False, connect_request=F("connect_request") + 1)
        await gesture(session, "replace", "test")
        await until(session.pk, settled("replaced"))
        await sup.reconcile()
        row = await get(pk=session.pk)
        assert row.connect_served == row.connect_request == 2
        assert world.connects[session.pk] == 1, "a stale start undid `replaced`"

        await start(row, "ada")  # a start made after it: honoured
        await until(session.pk, state_is("connected"))
        assert world.connects[session.pk] == 2


async def test_a_start_first_seen_with_the_replacement_is_dropped_not_served(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 fault 2, the ring of a stale Start lost or late: the runner first reads
    the request while handling "stream replaced" (no step in between to serve it
    as "already connected"). Made before the replacement, it is dropped with it;
    served by resuming, it would kick the other connection: the ping-pong."""
    async with running_driver(SimulatedDriver(world)) as sup:
        session = await paired("late-ring", sup)  # type: ignore[arg-type]
        await raw_intent(session.pk, ring=False, connect_request=F("connect_request") + 1)
        world.connection(session.pk).emit(Replaced(session.pk))  # type: ignore[union-attr]
        await until(session.pk, settled("replaced"))
        await sup.reconcile()
        row = await get(pk=session.pk)
        assert (row.state, row.connect_served, row.connect_request) == ("replaced", 1, 1)
        assert world.connects[session.pk] == 1, "a start made before `replaced` undid it"


# -- fault 4: no new QR on top of a linked device ------------------------------------


async def test_a_new_qr_on_a_linked_session_is_refused_and_a_stale_one_dropped(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 fault 4: the web side refuses (log out first); a request that reaches
    the runner anyway is dropped with a reason, and the device stays linked once."""
    async with running_driver(SimulatedDriver(world)) as sup:
        session = await paired("linked", sup)  # type: ignore[arg-type]
        for ask in (new_qr(session, "ada"), pair_by_phone(session, "+4915112345678", "ada")):
            with pytest.raises(intents.IntentRefused) as refused:
                await ask
            assert refused.value.code == "linked"
            assert "log it out first" in refused.value.message

        await raw_intent(
            session.pk, pair_request=F("pair_request") + 1, pair_phone="+4915112345678"
        )
        await until(session.pk, has_event("new QR code request dropped"))
        row = await get(pk=session.pk)
        assert (row.state, row.jid) == ("connected", session.jid)
        assert row.pair_served == row.pair_request and row.pair_phone == ""
        assert world.connects[session.pk] == 1 and world.qr_issued[session.pk] == 1
        assert list(world.devices.values()).count(session.pk) == 1

        await logout(row, "ada")  # the way to a new QR: log out, then ask
        await until(session.pk, settled("logged_out"))
        await new_qr(await get(pk=session.pk), "ada")
        await until(session.pk, state_is("qr_required"))
        assert session.jid not in world.devices


async def test_a_dropped_new_qr_does_not_take_a_start_made_with_it_along(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 faults 2 and 4 together: a stale New QR is dropped, the Start made
    after the replacement is still honoured."""
    async with running_driver(SimulatedDriver(world)) as sup:
        session = await paired("both", sup)  # type: ignore[arg-type]
        await gesture(session, "replace", "test")
        await until(session.pk, settled("replaced"))
        await raw_intent(
            session.pk,
            pair_request=F("pair_request") + 1,
            connect_request=F("connect_request") + 1,
        )
        await until(session.pk, has_event("new QR code request dropped"))
        await until(session.pk, state_is("connected"))
        assert world.connects[session.pk] == 2 and world.qr_issued[session.pk] == 1


# -- fault 5: Start during a QR round changes nothing --------------------------------


async def test_start_during_a_qr_round_keeps_the_code_being_scanned(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 fault 5."""
    async with running_driver(SimulatedDriver(world)):
        session = await create("scanning", "ada")
        first = await until(session.pk, state_is("qr_required"))
        with pytest.raises(intents.IntentRefused) as refused:
            await start(await get(pk=session.pk), "ada")
        assert refused.value.code == "already_running"

        await raw_intent(session.pk, connect_request=F("connect_request") + 1)
        snap = await until(session.pk, has_event("a QR round is under way; nothing restarted"))
        assert (snap["qr_code"], snap["qr_issued_at"]) == (first["qr_code"], first["qr_issued_at"])
        assert world.connects[session.pk] == 1 and world.qr_issued[session.pk] == 1
        await scan(session)  # the code on screen still links
        await until(session.pk, state_is("connected"))


# -- fault 6: an interrupted QR round goes on only while it would still run ----------


@sync_to_async
def age_round(session_id: int, seconds: float) -> None:
    WaSession.objects.filter(pk=session_id).update(
        qr_round_started_at=F("qr_round_started_at") - dt.timedelta(seconds=seconds)
    )


async def test_a_round_interrupted_long_ago_is_not_started_again(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 fault 6: a deploy in the middle of a round that took longer than the
    round would have run: qr_timeout, waiting for the admin, no new code."""
    async with running_driver(SimulatedDriver(world)):
        session = await create("deployed", "ada")
        await until(session.pk, state_is("qr_required"))
    await age_round(session.pk, FAST.qr_round_limit + 1)
    async with running_driver(SimulatedDriver(world)) as sup:
        await until(session.pk, settled("qr_timeout"))
        await sup.reconcile()
    assert world.connects[session.pk] == 1 and world.qr_issued[session.pk] == 1
    assert "would have ended" in [m for _, _, m in await events_of(session.pk)][-1]


async def test_a_round_interrupted_a_moment_ago_goes_on_until_its_own_end(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 fault 6: within the round's time it goes on (a new code, since the
    old connection is gone), and ends when the original round would have."""
    short = dataclasses.replace(FAST, qr_round_limit=3.0)
    async with running_driver(SimulatedDriver(world), short):
        session = await create("restarted", "ada")
        await until(session.pk, state_is("qr_required"))
    # The round began half a second before the restart (however long shutting down took).
    started = timezone.now() - dt.timedelta(seconds=0.5)
    await raw_intent(session.pk, ring=False, qr_round_started_at=started)
    async with running_driver(SimulatedDriver(world), short):
        await until(session.pk, lambda s: s is not None and world.connects[session.pk] == 2)
        await until(session.pk, state_is("qr_required"))
        snap = await until(session.pk, settled("qr_timeout"), timeout=5)
    ended = await sync_to_async(
        SessionEvent.objects.filter(session_id=session.pk, to_state="qr_timeout").get
    )()
    assert world.qr_issued[session.pk] == 2, "WhatsApp's own round (30 s) was cut short"
    # Cut when the original round would have ended, not a round's length after the restart.
    limit = short.qr_round_limit
    assert limit <= (ended.at - started).total_seconds() < limit + 1.0
    assert snap["qr_code"] == ""
    row = await get(pk=session.pk)
    assert row.qr_round_started_at is None and row.pair_served == row.pair_request


# -- fault 12a: the old error goes once it no longer applies -------------------------


async def test_recovering_into_a_qr_round_or_logged_out_clears_the_old_error(
    world: SimulatedWhatsApp,
) -> None:
    """Issue 8 item 12: a logged-out or QR page must not show the last error and the
    retry count of a failure that is over."""
    async with running_driver(SimulatedDriver(world)) as sup:
        unpaired = await create("qr-again", "ada")
        await until(unpaired.pk, state_is("qr_required"))
        world.connection(unpaired.pk).emit(ConnectError(unpaired.pk, "stream error"))  # type: ignore[union-attr]
        await until(unpaired.pk, state_is("error"))
        snap = await until(unpaired.pk, state_is("qr_required"))
        assert (snap["last_error"], snap["retry_count"], snap["next_retry_at"]) == ("", 0, None)

        linked = await paired("unlinked-offline", sup)  # type: ignore[arg-type]
        world.forget(linked.jid)  # removed on the phone while the connection was down
        world.connection(linked.pk).emit(ConnectError(linked.pk, "stream error"))  # type: ignore[union-attr]
        snap = await until(linked.pk, settled("logged_out"))
        assert (snap["last_error"], snap["retry_count"], snap["next_retry_at"]) == ("", 0, None)
        states = [to for kind, to, _ in await events_of(linked.pk) if kind == "state"]
        assert states[-3:] == ["error", "connecting", "logged_out"]


# -- issue 9 finding 9: the phone number is kept only while its round needs it -------


async def test_the_pairing_phone_number_is_cleared_when_its_round_ends(
    world: SimulatedWhatsApp,
) -> None:
    """Paired, timed out, stopped, logged out: each round end clears ``pair_phone``."""
    quick = SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=0.3, next_qr_ttl=0.1, qr_count=2))
    async with running_driver(SimulatedDriver(world)):
        ends = {}
        for name in ("paired", "stopped", "logged-out"):
            session = await create(name, "ada")
            await until(session.pk, state_is("qr_required"))
            await pair_by_phone(await get(pk=session.pk), "+4915112345678", "ada")
            await until(session.pk, lambda s: bool(s and s["pairing_code"]))
            assert (await get(pk=session.pk)).pair_phone == "+4915112345678"
            ends[name] = session
        await scan(ends["paired"])
        await until(ends["paired"].pk, state_is("connected"))
        await stop(ends["stopped"], "ada")
        await until(ends["stopped"].pk, settled("stopped"))
        await logout(ends["logged-out"], "ada")
        await until(ends["logged-out"].pk, settled("logged_out"))
    async with running_driver(SimulatedDriver(quick)):
        timed_out = await create("timed-out", "ada")
        await pair_by_phone(timed_out, "+4915112345678", "ada")
        await until(timed_out.pk, settled("qr_timeout"))
    for session in [*ends.values(), timed_out]:
        assert (await get(pk=session.pk)).pair_phone == "", session.name


def test_a_round_ending_keeps_the_number_of_a_newer_request(transactional_db: None) -> None:
    """The owner clears only the number of the round that ended, never one an admin
    typed for the next round meanwhile."""
    session = WaSession.objects.create(
        name="newer", pair_request=2, pair_served=1, pair_phone="+4916", lease_owner="me"
    )
    lease = leases.Lease(session.pk, "me", 0)
    assert leases.write(lease, round_ended(1))
    assert WaSession.objects.get(pk=session.pk).pair_phone == "+4916"
    assert leases.write(lease, round_ended(2))
    assert WaSession.objects.get(pk=session.pk).pair_phone == ""
