"""The supervisor on the simulated driver: SQLite, in-memory channel layer, one process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError
from django.utils import timezone

from sessions_app import doorbell, intents, leases, owner_db
from sessions_app.conf import SupervisorConfig
from sessions_app.dbthread import supervisor_db
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.models import SessionEvent, WaSession
from sessions_app.supervisor import Supervisor
from tests.unit.helpers import settled, state_is, until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

FAST = SupervisorConfig(
    lease_ttl=3.0,
    renew_interval=0.5,
    self_fence_margin=1.0,
    reconcile_interval=0.5,
    backoff_base=0.05,
    backoff_cap=0.2,
    stop_timeout=2.0,
)


@pytest.fixture
def world() -> SimulatedWhatsApp:
    return SimulatedWhatsApp(
        SimulatedTiming(first_qr_ttl=0.4, next_qr_ttl=0.15, qr_count=3, pair_delay=0.01)
    )


def running(
    world: SimulatedWhatsApp, config: SupervisorConfig = FAST, owner: str | None = None
) -> contextlib.AbstractAsyncContextManager[Supervisor]:
    return running_driver(SimulatedDriver(world), config, owner)


@contextlib.asynccontextmanager
async def running_driver(
    driver: SimulatedDriver, config: SupervisorConfig = FAST, owner: str | None = None
) -> AsyncIterator[Supervisor]:
    """A supervisor running on ``driver`` until the block ends (then stopped)."""
    supervisor = Supervisor(driver, config=config, owner=owner)
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    try:
        yield supervisor
    finally:
        supervisor.stop()
        await task


@pytest.fixture
async def supervisor(world: SimulatedWhatsApp) -> AsyncIterator[Supervisor]:
    async with running(world) as sup:
        yield sup


create = sync_to_async(intents.create_session)
stop = sync_to_async(intents.stop)
start = sync_to_async(intents.start)
logout = sync_to_async(intents.logout)
new_qr = sync_to_async(intents.new_qr)
delete = sync_to_async(intents.delete)
gesture = sync_to_async(intents.phone_gesture)
get = sync_to_async(WaSession.objects.get)


@sync_to_async
def events_of(session_id: int) -> list[tuple[str, str, str]]:
    return list(
        SessionEvent.objects.filter(session_id=session_id)
        .order_by("at", "id")
        .values_list("kind", "to_state", "message")
    )


async def scan(session: WaSession) -> None:
    await gesture(await get(pk=session.pk), "scan", "test")


async def paired(name: str, supervisor: Supervisor) -> WaSession:
    session = await create(name, "ada")
    await until(session.pk, state_is("qr_required"))
    await scan(session)
    await until(session.pk, state_is("connected"))
    return await get(pk=session.pk)


async def test_create_shows_qr_then_scan_connects(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await create("sales", "ada")
    snap = await until(session.pk, state_is("qr_required"))
    assert snap["qr_code"].startswith("https://wa.me/")
    assert snap["qr_expires_at"] > snap["qr_issued_at"]

    await scan(session)
    snap = await until(session.pk, state_is("connected"))
    assert snap["phone"].startswith("+")
    assert snap["qr_code"] == ""
    row = await get(pk=session.pk)
    assert row.jid.endswith("@s.whatsapp.net")
    assert row.lease_owner == supervisor.owner
    assert [to for kind, to, _ in await events_of(session.pk) if kind == "state"] == [
        "connecting",
        "qr_required",
        "pairing",
        "connected",
    ]
    assert world.max_live[session.pk] == 1


async def test_stop_closes_the_connection_and_releases_the_lease(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("ops", supervisor)
    await stop(session, "ada")
    await until(session.pk, settled("stopped"))
    assert world.live[session.pk] == 0
    row = await get(pk=session.pk)
    assert row.jid, "stopping keeps the device linked"

    await start(row, "ada")
    await until(session.pk, state_is("connected"))
    assert world.connects[session.pk] == 2
    assert world.max_live[session.pk] == 1


async def test_logout_unlinks_the_device(supervisor: Supervisor, world: SimulatedWhatsApp) -> None:
    session = await paired("legal", supervisor)
    jid = session.jid
    await logout(session, "ada")
    snap = await until(session.pk, settled("logged_out"))
    assert snap["phone"] == ""
    assert jid not in world.devices
    assert world.live[session.pk] == 0


async def test_phone_logout_waits_for_the_admin(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("hr", supervisor)
    await gesture(session, "logout", "test")
    await until(session.pk, settled("logged_out"))
    connects = world.connects[session.pk]
    await supervisor.reconcile()
    assert world.connects[session.pk] == connects, "logged_out must not reconnect by itself"


async def test_disconnect_reconnects_with_backoff(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("support", supervisor)
    await gesture(session, "disconnect", "test")
    snap = await until(session.pk, state_is("disconnected"))
    assert snap["retry_count"] == 1
    assert snap["next_retry_at"] is not None
    await until(session.pk, state_is("connected"))
    assert world.connects[session.pk] == 2
    states = [to for kind, to, _ in await events_of(session.pk) if kind == "state"]
    assert states[-3:] == ["disconnected", "connecting", "connected"]
    assert (await get(pk=session.pk)).retry_count == 0


async def test_a_phone_logout_during_a_backoff_wait_ends_in_logged_out(
    world: SimulatedWhatsApp,
) -> None:
    """The phone unlinks the device while the session waits to reconnect (no connection
    open): the next connection is refused and the session is logged out, not linked."""
    waiting = dataclasses.replace(FAST, backoff_base=30.0, backoff_cap=60.0)
    async with running(world, waiting) as supervisor:
        session = await paired("backoff-logout", supervisor)
        await gesture(session, "disconnect", "test")
        await until(session.pk, state_is("disconnected"))
        assert world.live[session.pk] == 0
        await gesture(await get(pk=session.pk), "logout", "test")
        await start(await get(pk=session.pk), "ada")  # skips the backoff: connect now
        await until(session.pk, settled("logged_out"))
    assert session.jid not in world.devices
    messages = [message for _, _, message in await events_of(session.pk)]
    assert not any("nothing to act on" in m for m in messages), messages


async def test_replaced_is_not_retried_blindly(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("billing", supervisor)
    await gesture(session, "replace", "test")
    await until(session.pk, settled("replaced"))
    await supervisor.reconcile()
    assert world.connects[session.pk] == 1
    await start(await get(pk=session.pk), "ada")
    await until(session.pk, state_is("connected"))
    assert world.connects[session.pk] == 2


async def test_qr_round_ends_in_timeout_without_new_codes(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await create("marketing", "ada")
    snap = await until(session.pk, settled("qr_timeout"), timeout=10)
    assert snap["qr_code"] == ""
    assert world.qr_issued[session.pk] == 3
    await supervisor.reconcile()
    assert world.connects[session.pk] == 1, "a timed-out round waits for the admin"
    assert world.qr_issued[session.pk] == 3

    await new_qr(await get(pk=session.pk), "ada")
    await until(session.pk, state_is("qr_required"))
    assert world.connects[session.pk] == 2


async def test_new_qr_mid_round_replaces_the_round(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await create("dispatch", "ada")
    first = await until(session.pk, state_is("qr_required"))
    await new_qr(await get(pk=session.pk), "ada")
    second = await until(
        session.pk,
        lambda s: (
            s is not None
            and s["state"] == "qr_required"
            and s["qr_issued_at"] != first["qr_issued_at"]
        ),
    )
    assert second["qr_code"] != first["qr_code"]
    assert world.connects[session.pk] == 2
    assert world.max_live[session.pk] == 1


async def test_restart_resumes_paired_sessions_without_a_qr_round(
    world: SimulatedWhatsApp,
) -> None:
    async with running(world) as first:
        linked = await paired("linked", first)
        unpaired = await create("unpaired", "ada")
        await until(unpaired.pk, settled("qr_timeout"), timeout=10)
    assert (await get(pk=linked.pk)).lease_owner == ""
    connects = world.connects[unpaired.pk]

    async with running(world) as second:
        snap = await until(linked.pk, state_is("connected"))
        assert snap["lease_owner"] == second.owner
        await second.reconcile()
    assert world.connects[unpaired.pk] == connects, "no QR round nobody asked for"
    row = await get(pk=linked.pk)
    assert row.pair_request == row.pair_served
    messages = [m for _, _, m in await events_of(linked.pk)]
    assert any("handing over" in m for m in messages)
    assert world.max_live[linked.pk] == 1


async def test_intent_flips_never_open_two_connections(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("flappy", supervisor)
    flips: list[Callable[[WaSession, str], None]] = [
        intents.stop,
        intents.start,
        intents.new_qr,
        intents.start,
        intents.stop,
    ]
    for round_ in range(10):
        for flip in flips:
            with contextlib.suppress(intents.IntentRefused):  # e.g. new QR while linked
                await sync_to_async(flip)(await get(pk=session.pk), f"flipper{round_}")
    await until(session.pk, settled("stopped"))
    assert world.max_live[session.pk] == 1
    assert world.live[session.pk] == 0


async def test_delete_unlinks_the_device_then_removes_the_row(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("temp", supervisor)
    await delete(session, "ada")
    await until(session.pk, lambda snap: snap is None)
    assert world.live[session.pk] == 0
    assert session.jid not in world.devices
    assert not await sync_to_async(SessionEvent.objects.filter(session_id=session.pk).exists)()


async def test_a_lease_lost_just_after_the_delete_still_pushes_the_removal(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal no longer finds a row its runner has just deleted and abandons the
    runner ("lease lost"): that must not cancel the removal's push, or every page
    and API client watching the session waits for it forever (a CI run of the
    runner matrix: "stopped + delete … never matched; last seen None")."""
    real_publish = doorbell.publish_removed
    publishing, go_on = asyncio.Event(), asyncio.Event()

    async def publish_removed(session_id: int) -> None:
        publishing.set()
        await go_on.wait()
        await real_publish(session_id)

    monkeypatch.setattr(doorbell, "publish_removed", publish_removed)
    session = await paired("temp", supervisor)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(doorbell.session_group(session.pk), channel)
    runner = supervisor.runners[session.pk]
    await delete(session, "ada")
    await publishing.wait()
    runner.abandon("lost")  # what the lease keeper does for a lease it no longer finds
    go_on.set()
    async with asyncio.timeout(5):
        while (await layer.receive(channel))["type"] != "session.removed":
            pass


async def test_a_lease_lost_as_the_delete_commits_still_pushes_the_removal(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, a moment earlier: the renewal (its own thread) sees the row gone
    as soon as the delete has committed, and may abandon the runner before the
    runner has the delete's answer; the push was then never made (a CI run of the
    runner matrix: "qr_required + delete … never matched; last seen None")."""
    real_delete = owner_db.delete
    runners: list[Any] = []

    async def delete_then_lose(lease: Any) -> bool:
        deleted = await real_delete(lease)
        runners[0].abandon("lost")  # the renewal's answer arrives first
        await asyncio.sleep(0)  # the cancellation lands in this await's caller
        return deleted

    monkeypatch.setattr(owner_db, "delete", delete_then_lose)
    session = await paired("temp", supervisor)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(doorbell.session_group(session.pk), channel)
    runners.append(supervisor.runners[session.pk])
    await delete(session, "ada")
    async with asyncio.timeout(5):
        while (await layer.receive(channel))["type"] != "session.removed":
            pass


async def test_pairing_by_phone_shows_a_code_then_links(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await create("by-phone", "ada")
    await until(session.pk, state_is("qr_required"))
    await sync_to_async(intents.pair_by_phone)(await get(pk=session.pk), "+4915112345678", "ada")
    snap = await until(session.pk, lambda s: bool(s and s["pairing_code"]))
    assert len(snap["pairing_code"]) == 9
    await scan(session)  # typing the code on the phone
    await until(session.pk, state_is("connected"))
    assert world.max_live[session.pk] == 1


async def test_a_lost_lease_stops_the_connection_and_fences_writes(
    supervisor: Supervisor, world: SimulatedWhatsApp
) -> None:
    session = await paired("stolen", supervisor)
    old = leases.Lease(session.pk, supervisor.owner, session.lease_epoch)
    # Another supervisor claims it (the lease is made to look expired).
    await sync_to_async(WaSession.objects.filter(pk=session.pk).update)(
        lease_expires_at=None, lease_owner=""
    )
    taken = await sync_to_async(leases.claim)("thief", 10.0, 10)
    assert [lease.session_id for lease in taken] == [session.pk]
    assert taken[0].epoch == old.epoch + 1

    assert not await sync_to_async(leases.write)(old, {"state": "error"}), "zombie write accepted"
    async with asyncio.timeout(5):  # the next renewal notices the loss
        await world.until_live(session.pk, 0)
    assert (await get(pk=session.pk)).state == "connected"


async def test_self_fences_before_the_lease_can_expire(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(world) as sup:
        session = await paired("fenced", sup)

        async def unreachable(*args: object) -> None:
            raise ConnectionError("database unreachable")

        monkeypatch.setattr(owner_db, "renew", unreachable)
        expires = (await get(pk=session.pk)).lease_expires_at
        async with asyncio.timeout(FAST.lease_ttl + 1):
            await world.until_live(session.pk, 0)
        dropped_at = timezone.now()
        assert sup.fenced
        assert dropped_at < expires, "connections must drop before anyone may claim them"
        assert (await get(pk=session.pk)).lease_expires_at == expires, "nothing was renewed"

        # The database comes back before the lease expired: the lease is still
        # ours, without a runner; it is given back and the session resumes.
        monkeypatch.undo()
        async with asyncio.timeout(FAST.lease_ttl + 2):
            await world.until_live(session.pk, 1)
        await until(session.pk, state_is("connected"))
        assert (await get(pk=session.pk)).lease_epoch == session.lease_epoch + 1
        assert world.qr_issued[session.pk] == 1 and world.max_live[session.pk] == 1


async def test_two_supervisors_never_share_a_session(world: SimulatedWhatsApp) -> None:
    async with running(world, owner="one") as one, running(world, owner="two") as two:
        sessions = [await create(f"s{i}", "ada") for i in range(8)]
        for session in sessions:
            await until(session.pk, state_is("qr_required"))
        owned_one, owned_two = set(one.runners), set(two.runners)
        assert not owned_one & owned_two
        assert owned_one | owned_two == {s.pk for s in sessions}
    assert all(world.max_live[s.pk] == 1 for s in sessions)


@pytest.fixture
def self_scanning() -> SimulatedWhatsApp:
    """A world whose phones scan every QR round at once: sessions link by themselves."""
    return SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=5, pair_delay=0, auto_scan=0.0))


def owned_by(owner: str) -> Callable[[dict[str, object]], bool]:
    return lambda snap: (
        snap is not None
        and (snap["lease_owner"], snap["state"])
        == (
            owner,
            "connected",
        )
    )


async def test_a_new_supervisor_takes_its_share_without_a_new_qr(
    self_scanning: SimulatedWhatsApp,
) -> None:
    world = self_scanning
    async with running(world, owner="first"):
        sessions = [await create(f"share{i}", "ada") for i in range(20)]
        ids = [s.pk for s in sessions]
        for pk in ids:
            await until(pk, owned_by("first"))
        async with running(world, owner="second") as second:
            # The first hands over its newest ten; the second resumes them.
            for pk in sorted(ids)[10:]:
                await until(pk, owned_by("second"))
            assert await world.until_connected(ids, timeout=5) == set()
            assert sorted(second.runners) == sorted(ids)[10:]
    assert all(world.qr_issued[pk] == 1 for pk in ids), "a hand-over never makes a new QR"
    assert all(world.max_live[pk] == 1 for pk in ids), "and never connects a device twice"
    assert world.overlaps == []
    moved = await events_of(sorted(ids)[-1])
    assert (
        "state",
        "disconnected",
        "handed over to another supervisor to balance the load",
    ) in moved


async def test_sessions_whose_hand_over_failed_are_given_back_by_the_renewal(
    self_scanning: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shedding closes the runners, then releases the leases in one transaction; if
    that transaction fails (a deadlock, a dropped connection), the sessions were
    still ours with no runner: renewed for ever and never connected again."""
    world = self_scanning
    hand_over = owner_db.hand_over
    failed: list[list[int]] = []

    async def fails_once(owner: str, session_ids: list[int], why: str) -> object:
        if not failed and owner == "first":
            failed.append(session_ids)
            raise DatabaseError("deadlock detected")
        return await hand_over(owner, session_ids, why)

    monkeypatch.setattr(owner_db, "hand_over", fails_once)
    async with running(world, owner="first"):
        ids = [(await create(f"orphan{i}", "ada")).pk for i in range(20)]
        for pk in ids:
            await until(pk, owned_by("first"))
        async with running(world, owner="second"):
            for pk in sorted(ids)[10:]:
                await until(pk, owned_by("second"))
            assert [sorted(f) for f in failed] == [sorted(ids)[10:]]
            assert await world.until_connected(ids, timeout=5) == set()


async def test_a_capped_supervisor_leaves_the_rest_to_the_others(
    self_scanning: SimulatedWhatsApp,
) -> None:
    world = self_scanning
    capped = dataclasses.replace(FAST, max_sessions=3)
    async with running(world, capped, owner="small") as small, running(world, owner="big") as big:
        sessions = [await create(f"cap{i}", "ada") for i in range(12)]
        assert await world.until_connected([s.pk for s in sessions], timeout=10) == set()
        assert len(small.runners) <= 3
        assert set(small.runners) | set(big.runners) == {s.pk for s in sessions}


async def test_renewal_does_not_wait_behind_a_backlog_of_writes(world: SimulatedWhatsApp) -> None:
    async with running(world) as sup:
        session = await paired("busy", sup)
        before = (await get(pk=session.pk)).lease_expires_at
        # Hold the session-write thread longer than the self-fence limit.
        await supervisor_db(time.sleep)(FAST.lease_ttl)
        assert not sup.fenced, "a write backlog made the supervisor fence itself"
        assert world.live[session.pk] == 1
        assert (await get(pk=session.pk)).lease_expires_at > before


async def test_a_renewal_that_raced_a_claim_does_not_drop_the_claimed_session(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewal and claims run on two database threads: a renewal may answer from
    # before a claim committed and be read after the claim's runner started.
    renew = owner_db.renew
    answered, release = asyncio.Event(), asyncio.Event()

    async def renew_from_before_the_claim(owner: str, ttl: float) -> list[leases.Lease]:
        held = await renew(owner, ttl)
        if not answered.is_set():
            answered.set()
            await release.wait()
        return held

    monkeypatch.setattr(owner_db, "renew", renew_from_before_the_claim)
    async with running(world) as sup:
        await answered.wait()
        session = await create("raced", "ada")
        await until(session.pk, state_is("qr_required"))
        release.set()
        await scan(session)
        await until(session.pk, state_is("connected"))
        assert session.pk in sup.runners and world.live[session.pk] == 1


async def test_the_periodic_pass_repairs_a_lost_ring_and_leaves_the_rest_alone(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the passes this test makes: no periodic pass of the supervisor's own.
    async with running(world, dataclasses.replace(FAST, reconcile_interval=60)) as sup:
        quiet = await paired("quiet", sup)
        changed = await paired("changed", sup)
        await sup.reconcile(periodic=True)  # queued behind the runners' last reads
        loads: list[int] = []
        load, load_taking_gestures = owner_db.load, owner_db.load_taking_gestures

        async def counted(session_id: int) -> WaSession | None:
            loads.append(session_id)
            return await load(session_id)

        async def counted_with_gestures(lease: leases.Lease) -> tuple[WaSession | None, list[str]]:
            loads.append(lease.session_id)
            return await load_taking_gestures(lease)

        monkeypatch.setattr(owner_db, "load", counted)
        monkeypatch.setattr(owner_db, "load_taking_gestures", counted_with_gestures)
        # An intent written without its ring (as if Redis had dropped it).
        await sync_to_async(WaSession.objects.filter(pk=changed.pk).update)(desired_state="stopped")
        await sup.reconcile(periodic=True)
        await until(changed.pk, settled("stopped"))
        assert changed.pk in loads
        assert quiet.pk not in loads, "an unchanged session was read again"
        assert world.live[quiet.pk] == 1


async def test_a_cancellation_swallowed_by_a_database_call_is_repeated(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A library can lose a cancellation (3.11's wait_for under redis-py's writes;
    # asgiref's sync_to_async around async_to_sync): a hand-over waiting for that
    # runner must not wait forever.
    async with running(world) as sup:
        session = await paired("stubborn", sup)
        load = owner_db.load
        swallowed: list[int] = []
        entered = asyncio.Event()

        async def swallows_once(session_id: int) -> WaSession | None:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed.append(session_id)
                if len(swallowed) > 1:
                    raise
            return await load(session_id)

        monkeypatch.setattr(owner_db, "load", swallows_once)
        runner = sup.runners[session.pk]
        runner.poke("test")
        await entered.wait()
        stopped = await sup._stop_runners([runner])
        assert swallowed == [session.pk], "the first cancellation was lost"
        assert stopped == [runner], "the repeated one stopped it"
        assert world.live[session.pk] == 0, "its connection was closed"
        monkeypatch.undo()


async def test_a_qr_rotation_reads_no_row(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WhatsApp's new code is written from the row the runner keeps, and the step
    after it decides from that row too (two reads per rotation once, then one)."""
    async with running(world):
        session = await create("rotating", "ada")
        first = await until(session.pk, state_is("qr_required"))
        loads: list[int] = []
        load = owner_db.load

        async def counted(session_id: int) -> WaSession | None:
            loads.append(session_id)
            return await load(session_id)

        monkeypatch.setattr(owner_db, "load", counted)
        second = await until(
            session.pk, lambda s: s["qr_issued_at"] not in (None, first["qr_issued_at"])
        )
        third = await until(
            session.pk, lambda s: s["qr_issued_at"] not in (None, second["qr_issued_at"])
        )
        reads = len(loads)
        monkeypatch.undo()

        assert third["version"] == second["version"] + 1
        assert reads == 0, f"{reads} reads for two rotations"
        row = await get(pk=session.pk)
        assert row.version >= third["version"]


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runners' reads of their rows from now on, by function name."""
    reads: list[str] = []
    for name in ("load", "load_taking_gestures"):
        inner = getattr(owner_db, name)

        def counted(*args: object, _inner=inner, _name=name) -> object:
            reads.append(_name)
            return _inner(*args)

        monkeypatch.setattr(owner_db, name, counted)
    return reads


async def test_from_create_to_the_first_code_the_row_is_never_read(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's first step decides from the row its claim brought; the decisions
    after its own connect and after WhatsApp's first code use the row it keeps
    (each read is a hop to the database thread on the way to the QR code: one read
    before, two before that)."""
    reads = count_reads(monkeypatch)
    # No periodic pass: one claiming when the create commits would have the create's
    # ring arrive mid-claim, and its runner read the row (rightly, once).
    async with running(world, dataclasses.replace(FAST, reconcile_interval=60)):
        session = await create("first-code", "ada")
        await until(session.pk, state_is("qr_required"))
        # Reads are awaited before the code is written, so none is still to come.
        assert reads == []


async def test_gestures_waiting_at_the_claim_are_taken_by_the_first_step(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A simulated phone's gesture made while nobody owned the session is played by
    the runner that claims it, at once (not at the next periodic pass)."""
    async with running(world) as sup:
        session = await paired("gestured", sup)
    reads = count_reads(monkeypatch)
    await gesture(session, "logout", "test")  # nobody owns it now: only the row says so
    async with running(world, dataclasses.replace(FAST, reconcile_interval=60)):
        await until(session.pk, state_is("logged_out"))
    assert reads[0] == "load_taking_gestures"


async def stop_right_after_the_claim(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch, *, ring_later: bool
) -> None:
    """Create a session; once the claim's statement has run, stop the session (as
    ``intents.stop`` writes it) and ring the supervisor, as the doorbell would: at
    once (the claim still under way: no runner to poke) or, with ``ring_later``,
    just after the claim's caller registered the runner (it does so without
    yielding), ahead of that runner's first step. Either way the stop is newer than
    the claim's row: it must be served without a connection ever opened."""
    config = dataclasses.replace(FAST, reconcile_interval=60)  # no periodic repair
    supervisors: list[Supervisor] = []
    stopped = asyncio.Event()
    claim, census_and_claim = owner_db.claim, owner_db.census_and_claim

    async def stop_and_ring(got: list[leases.Lease]) -> None:
        for lease in got:
            rows = WaSession.objects.filter(pk=lease.session_id)
            await sync_to_async(rows.update)(desired_state="stopped")
            ring = {"session": lease.session_id, "reason": "stopped"}
            if ring_later:
                asyncio.get_running_loop().call_soon(supervisors[0].ring, ring)
            else:
                supervisors[0].ring(ring)
            stopped.set()

    async def claim_then_stop(*args: Any) -> list[leases.Lease]:
        got = await claim(*args)
        await stop_and_ring(got)
        return got

    async def census_claim_then_stop(*args: Any) -> Any:
        taken, share, got = await census_and_claim(*args)
        await stop_and_ring(got or [])
        return taken, share, got

    async with running(world, config) as sup:
        supervisors.append(sup)
        monkeypatch.setattr(owner_db, "claim", claim_then_stop)
        monkeypatch.setattr(owner_db, "census_and_claim", census_claim_then_stop)
        session = await create("stopped as claimed", "ada")
        await stopped.wait()  # from here, "settled" means the runner let it go
        await until(session.pk, settled("stopped"))
        assert world.max_live[session.pk] == 0, "it connected from the claim's stale row"


async def test_an_intent_rung_while_its_session_was_being_claimed_is_served(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ring finds no runner to poke (Supervisor._run_claimed gives the runner
    no row: it reads first)."""
    await stop_right_after_the_claim(world, monkeypatch, ring_later=False)


async def test_an_intent_rung_before_the_new_runner_first_steps_is_seen_by_that_step(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ring pokes the new runner before its first step: that step reads first."""
    await stop_right_after_the_claim(world, monkeypatch, ring_later=True)


async def test_an_intent_after_the_kept_row_was_read_is_still_seen(
    world: SimulatedWhatsApp,
) -> None:
    """A stop made while the runner decides from its kept row rings it, and the
    ring's step reads the row: the stop is served."""
    async with running(world):
        session = await create("stop-mid-round", "ada")
        await until(session.pk, state_is("qr_required"))
        await stop(await get(pk=session.pk), "ada")
        await until(session.pk, settled("stopped"))
        assert world.live[session.pk] == 0


async def test_after_a_write_the_kept_row_missed_the_next_code_has_the_right_version(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write not applied to the kept row (here: a phone gesture that had nothing to
    act on, an info event) makes the next QR code read the row again: its snapshot's
    version is past the info's, so no watcher takes it for one already seen."""
    async with running(world) as sup:
        session = await create("gestured", "ada")
        first = await until(session.pk, state_is("qr_required"))

        async def nothing_to_act_on(session_id: int, gesture: str) -> bool:
            return False

        monkeypatch.setattr(sup.driver, "gesture", nothing_to_act_on)
        await gesture(await get(pk=session.pk), "disconnect", "test")
        info = await until(session.pk, lambda s: s["version"] > first["version"])
        nxt = await until(
            session.pk, lambda s: s["qr_issued_at"] not in (None, first["qr_issued_at"])
        )

        assert nxt["version"] > info["version"], "the code was written from a stale row"
        events = [message for _, _, message in await events_of(session.pk)]
        assert any("had nothing to act on" in message for message in events)
