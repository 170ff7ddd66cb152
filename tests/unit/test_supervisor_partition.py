"""The supervisor cut off from its database, then healed (one process, SQLite).

The chaos test partitions real processes through a fault proxy; these pin down
what it found, with the database calls that hang replaced by ones that wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from django.db import OperationalError

from sessions_app import leases, owner_db
from sessions_app.drivers.simulated import SimulatedTiming, SimulatedWhatsApp
from tests.unit.helpers import settled, state_is, until
from tests.unit.test_supervisor import FAST, create, paired, running, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def world() -> SimulatedWhatsApp:
    return SimulatedWhatsApp(SimulatedTiming(first_qr_ttl=5, pair_delay=0.01))


async def observe(condition: Any, timeout: float, what: str) -> None:
    """Wait for a flag of the supervisor's that has no event of its own."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_renewal_answered_after_the_fence_limit_does_not_end_the_fence(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal sent before a partition and answered when it heals says nothing
    about leases now: claiming resumes only after a renewal answered in time,
    instead of claiming, fencing again and dropping what it just claimed."""
    # Renewals far apart: a wrong un-fencing shows as a second self-fence.
    config = dataclasses.replace(FAST, renew_interval=1.5, self_fence_margin=1.0)
    renew = owner_db.renew
    healed = asyncio.Event()

    async def partitioned(owner: str, ttl: float) -> list[leases.Lease]:
        await healed.wait()  # the statement hangs in the network...
        return await renew(owner, ttl)  # ...and is answered once it heals

    async with running(world, config) as sup:
        session = await paired("islander", sup)
        monkeypatch.setattr(owner_db, "renew", partitioned)
        async with asyncio.timeout(config.lease_ttl + 1):
            await world.until_live(session.pk, 0)
        assert sup.fenced
        await asyncio.sleep(config.lease_ttl)  # the partition's length: past the leases
        healed_at = sup.clock()
        healed.set()
        monkeypatch.undo()
        # A renewal sent after the partition healed has been answered...
        await observe(lambda: sup._last_renewal > healed_at, 5, "no renewal after healing")
        async with asyncio.timeout(config.lease_ttl):  # ...and the session runs again
            await world.until_live(session.pk, 1)
        await until(session.pk, state_is("connected"))
    fences = [r for r in caplog.records if "self-fencing" in r.getMessage()]
    assert len(fences) == 1, "it claimed on a stale renewal and had to fence again"


async def test_a_session_claimed_while_fenced_is_never_connected(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim sent before the fence and answered after it starts no runner: no
    renewal covers its lease, which could expire under a live connection. The lease
    is kept as an orphan, given back at the next renewal that works."""
    claim = owner_db.claim
    census_and_claim = owner_db.census_and_claim
    entered, answer, answered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    armed = False
    passing = 0  # claims let through before the test armed the late ones, not answered yet

    async def never(owner: str, ttl: float) -> list[leases.Lease]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def late(
        owner: str, ttl: float, limit: int, session_ids: Any = None
    ) -> list[leases.Lease]:
        """A claim (a rung session's goes out by id, without a census)."""
        nonlocal passing
        if not armed:
            passing += 1
            try:
                return await claim(owner, ttl, limit, session_ids)
            finally:
                passing -= 1
        entered.set()
        await answer.wait()
        got = await claim(owner, ttl, limit, session_ids)
        answered.set()
        return got

    async def late_first(
        owner: str, ttl: float, cap: int, held: int, batch: int
    ) -> tuple[leases.Census, int, list[leases.Lease] | None]:
        """A ring's claim goes out with the census, in one call."""
        nonlocal passing
        if not armed:
            passing += 1
            try:
                return await census_and_claim(owner, ttl, cap, held, batch)
            finally:
                passing -= 1
        entered.set()
        await answer.wait()
        got = await census_and_claim(owner, ttl, cap, held, batch)
        answered.set()
        return got

    # Patched before the supervisor starts, so no claim of its own passes unseen: a
    # pass already under way when the test armed them could take the new session
    # (the supervisor's second pass, rung by its own join, did in a CI run).
    monkeypatch.setattr(owner_db, "claim", late)
    monkeypatch.setattr(owner_db, "census_and_claim", late_first)
    async with running(world) as sup:
        monkeypatch.setattr(owner_db, "renew", never)
        armed = True
        await observe(lambda: passing == 0, FAST.lease_ttl, "a claim never came back")
        session = await create("late", "ada")
        await entered.wait()
        await observe(lambda: sup.fenced, FAST.lease_ttl, "it never fenced itself")
        answer.set()
        await answered.wait()
        await observe(lambda: session.pk in sup._orphans, 2, "the lease was not kept as an orphan")
        assert session.pk not in sup.runners
        assert ("start", session.pk) not in sup.driver.calls
        monkeypatch.undo()


def after_claims(
    monkeypatch: pytest.MonkeyPatch, after: Callable[[list[leases.Lease]], Awaitable[None]]
) -> None:
    """Patch both claim calls (by id, and with the census) to run ``after`` on the
    leases each claimed, once the claim has committed, before it answers."""
    claim = owner_db.claim
    census_and_claim = owner_db.census_and_claim

    async def claim_then(
        owner: str, ttl: float, limit: int, session_ids: Any = None
    ) -> list[leases.Lease]:
        got = await claim(owner, ttl, limit, session_ids)
        await after(got)
        return got

    async def census_and_claim_then(
        owner: str, ttl: float, cap: int, held: int, batch: int
    ) -> tuple[leases.Census, int, list[leases.Lease] | None]:
        answer = await census_and_claim(owner, ttl, cap, held, batch)
        await after(answer[2] or [])
        return answer

    monkeypatch.setattr(owner_db, "claim", claim_then)
    monkeypatch.setattr(owner_db, "census_and_claim", census_and_claim_then)


async def test_a_claim_whose_answer_was_lost_is_given_back_and_claimed_again(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim committed but its rows never reached the supervisor (the connection
    cut after the commit): the lease is ours with no runner. Renewed by every
    renewal, it would keep the session from everyone for good, with no QR code
    ever; it is stopped, given back and claimed again instead."""
    lost: list[int] = []

    async def lose(got: list[leases.Lease]) -> None:
        if got and not lost:
            lost.extend(lease.session_id for lease in got)
            raise OperationalError("server closed the connection unexpectedly")

    after_claims(monkeypatch, lose)
    async with running(world) as sup:
        session = await create("lost answer", "ada")
        await until(session.pk, state_is("qr_required"), timeout=4 * FAST.lease_ttl)
        assert lost == [session.pk]
        calls = sup.driver.calls
        assert calls.index(("stop", session.pk)) < calls.index(("start", session.pk)), (
            "given back before it was stopped"
        )
    assert "has no runner" in caplog.text


class Renewals:
    """Counts the supervisor's renewals (patched into ``owner_db.renew``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.renew = owner_db.renew
        self.count = 0
        self.changed = asyncio.Event()
        monkeypatch.setattr(owner_db, "renew", self)

    async def __call__(self, owner: str, ttl: float) -> list[leases.Lease]:
        held = await self.renew(owner, ttl)
        self.count += 1
        self.changed.set()
        return held

    async def wait(self, more: int) -> None:
        """Until ``more`` renewals from now have been answered."""
        until_count = self.count + more
        while self.count < until_count:
            self.changed.clear()
            await self.changed.wait()


async def test_a_claim_answered_after_several_renewals_is_not_taken_for_a_lost_one(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A claim answered slowly (behind a backlog of calls) has its lease before its
    runner, over several renewals: the lease is left to the runner to come."""
    renewals = Renewals(monkeypatch)

    async def slowly(got: list[leases.Lease]) -> None:
        if got:
            await renewals.wait(3)

    after_claims(monkeypatch, slowly)
    async with running(world) as sup:
        session = await create("slow claim", "ada")
        await until(session.pk, state_is("qr_required"), timeout=4 * FAST.lease_ttl)
        assert ("stop", session.pk) not in sup.driver.calls
    assert "has no runner" not in caplog.text


async def test_a_release_slower_than_two_renewals_is_not_taken_for_a_lost_claim(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A runner forgets itself before its release is written; behind a backlog of
    writes that release may take several renewals, during which the lease is ours
    with no runner. It is no lost claim's: the release is left to finish."""
    renewals = Renewals(monkeypatch)
    release = owner_db.release

    async def slow_release(lease: leases.Lease, fields: Any, event: Any = None) -> Any:
        await renewals.wait(3)  # three renewals see the lease ours, with no runner
        return await release(lease, fields, event)

    async with running(world) as sup:
        session = await create("slow release", "ada")
        await until(session.pk, state_is("qr_required"))
        monkeypatch.setattr(owner_db, "release", slow_release)
        await stop(session, "ada")
        await until(session.pk, settled("stopped"), timeout=4 * FAST.lease_ttl)
        assert sup.driver.calls.count(("stop", session.pk)) == 1
    assert "has no runner" not in caplog.text
