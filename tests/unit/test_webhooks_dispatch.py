"""The dispatcher against a real HTTP receiver started by the test (SQLite, in-memory
layer): failures of every kind, a 410, then recovery — everything arrives, each lane
in order, every request verified by standardwebhooks' own ``Webhook.verify``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from sessions_app.models import WaSession
from tests.background import LosesOneCancellation
from tests.webhooks.receiver import Receiver
from webhooks import delivery, endpoints, outbox
from webhooks.conf import webhook_config
from webhooks.dispatcher import Dispatcher
from webhooks.models import Delivery, Endpoint

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

FAST = {
    "schedule": (0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01),
    "total_timeout": 0.5,
    "connect_timeout": 0.5,
    "claim_ttl": 5.0,
    "allow_private": True,
}


class Outcomes:
    """Awaitable record of the dispatcher's recorded attempts."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, str]] = []
        self.changed = asyncio.Condition()

    def __call__(self, delivery_id: int, outcome: str, status: str) -> None:
        self.seen.append((delivery_id, outcome, status))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate: Callable[[list[tuple[int, str, str]]], bool]) -> None:
        async with asyncio.timeout(20), self.changed:
            await self.changed.wait_for(lambda: predicate(self.seen))


@pytest.fixture
async def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
async def dispatcher(outcomes: Outcomes) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(config=webhook_config(**FAST), observer=outcomes)
    task = asyncio.create_task(d.run())
    await d.ready.wait()
    yield d
    d.stop()
    await task


@sync_to_async
def make_world(url: str, n_sessions: int = 2) -> tuple[Endpoint, list[int]]:
    hook = endpoints.create(url=url, description="test receiver")
    ids = [WaSession.objects.create(name=f"lane-{i}").pk for i in range(n_sessions)]
    return hook, ids


@sync_to_async
def emit_many(session_ids: list[int], per_session: int, *, together: bool = False) -> None:
    """One transaction per event, or (``together``) all in one: committed before the
    dispatcher can deliver (and get a 410 for) any of them."""
    with transaction.atomic() if together else contextlib.nullcontext():
        for i in range(per_session):
            for sid in session_ids:
                with transaction.atomic():
                    outbox.emit("session.status", sid, {"state": "connected", "i": i})


def lanes(payloads: list[dict[str, Any]]) -> dict[int, list[int]]:
    by_session: dict[int, list[int]] = collections.defaultdict(list)
    for payload in payloads:
        by_session[payload["session"]["id"]].append(payload["sequence"])
    return dict(by_session)


async def test_failures_then_410_then_recovery_everything_arrives_in_lane_order(
    dispatcher: Dispatcher, outcomes: Outcomes
) -> None:
    async with Receiver(script=[500, "stall", "reset", 503, 410]) as receiver:
        hook, sessions = await make_world(receiver.url)
        receiver.secret = hook.secret
        # All ten committed before the first attempt: an event that happens while the
        # endpoint is disabled (after the 410) is not kept for it, so emitting them
        # one by one lost the last ones whenever the 410 came back first (CI, loaded).
        await emit_many(sessions, 5, together=True)

        await outcomes.until(lambda seen: any(o == "gone" for _, o, _ in seen))
        await sync_to_async(hook.refresh_from_db)()
        assert not hook.enabled and "410" in hook.disabled_reason
        # (the other lane's attempt may have been under way as the 410 came back)
        seen = [r["behaviour"] for r in receiver.requests]
        assert seen[:5] == [500, "stall", "reset", 503, 410] and set(seen[5:]) <= {"ok"}

        await sync_to_async(endpoints.set_enabled)(hook, True)  # rings the dispatcher
        accepted = await receiver.wait_accepted(10)
        await outcomes.until(lambda seen: sum(st == "delivered" for _, _, st in seen) == 10)

    assert lanes(accepted) == {sessions[0]: [1, 2, 3, 4, 5], sessions[1]: [1, 2, 3, 4, 5]}
    statuses = await sync_to_async(lambda: set(Delivery.objects.values_list("status", flat=True)))()
    assert statuses == {"delivered"}
    # The webhook-id is the event id, the same on every retry of it.
    first_id = receiver.requests[0]["headers"]["webhook-id"]
    retried = [r for r in receiver.requests if r["headers"]["webhook-id"] == first_id]
    assert len(retried) >= 2
    assert sum(1 for p in accepted if p["id"] == first_id) == 1


async def test_a_dead_delivery_is_redelivered_with_the_same_id(
    dispatcher: Dispatcher, outcomes: Outcomes
) -> None:
    async with Receiver(script=[500] * len(FAST["schedule"])) as receiver:
        hook, sessions = await make_world(receiver.url, 1)
        receiver.secret = hook.secret
        await emit_many(sessions, 1)
        await outcomes.until(lambda seen: any(s == "dead" for _, _, s in seen))
        dead = await sync_to_async(Delivery.objects.get)()
        assert dead.status == "dead" and dead.attempts == len(FAST["schedule"])
        assert dead.last_status_code == 500 and '"status": 500' in dead.last_response

        assert await sync_to_async(endpoints.redeliver)([dead.pk]) == 1
        (payload,) = await receiver.wait_accepted(1)
    assert payload["id"] == dead.event_id


async def test_a_test_event_reaches_only_its_endpoint(
    dispatcher: Dispatcher, outcomes: Outcomes
) -> None:
    async with Receiver() as receiver, Receiver() as other:
        hook, _ = await make_world(receiver.url, 0)
        await sync_to_async(endpoints.create)(url=other.url)
        receiver.secret = hook.secret
        await sync_to_async(endpoints.send_test)(hook)
        (payload,) = await receiver.wait_accepted(1)
    assert payload["type"] == "webhook.test" and payload["session"] is None
    assert other.requests == []


async def test_during_a_rotation_receivers_with_the_old_or_the_new_secret_verify(
    dispatcher: Dispatcher, outcomes: Outcomes
) -> None:
    """After a rotation with an overlap the dispatcher signs with both secrets (a
    receiver not yet given the new one verifies); after the overlap, the new only."""
    async with Receiver() as receiver:
        hook, sessions = await make_world(receiver.url, 1)
        old = hook.secret
        new = await sync_to_async(endpoints.rotate)(hook, 3600)
        receiver.secret = old  # the receiver still has the old secret
        await emit_many(sessions, 1)
        await receiver.wait_accepted(1)
        during = receiver.requests[-1]
        Webhook(new).verify(during["body"], during["headers"])

        await sync_to_async(endpoints.rotate)(hook, 0)  # no overlap: the newest only
        await sync_to_async(hook.refresh_from_db)()
        receiver.secret = hook.secret
        await emit_many(sessions, 1)
        await receiver.wait_accepted(2)
    after = receiver.requests[-1]
    assert len(during["headers"]["webhook-signature"].split(" ")) == 2
    assert len(after["headers"]["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(after["body"], after["headers"])


async def test_a_refused_address_is_never_connected_to(outcomes: Outcomes) -> None:
    config = webhook_config(**{**FAST, "allow_private": False, "schedule": (0,)})
    d = Dispatcher(config=config, observer=outcomes)
    task = asyncio.create_task(d.run())
    try:
        async with Receiver() as receiver:
            # Saved while private addresses were allowed; refused at delivery time.
            _, sessions = await make_world(receiver.url, 1)
            await emit_many(sessions, 1)
            await outcomes.until(lambda seen: len(seen) == 1)
            assert receiver.requests == []
        failed = await sync_to_async(Delivery.objects.get)()
        assert failed.status == "dead" and "loopback" in failed.last_error
        assert outcomes.seen[0][1] == "refused"
    finally:
        d.stop()
        await task


async def test_a_claim_too_old_to_cover_an_attempt_is_not_used() -> None:
    """A dispatcher frozen between its claim and the send must not send late: another
    may have taken the claim over and moved the lane on."""
    async with Receiver() as receiver:
        _, sessions = await make_world(receiver.url, 1)
        await emit_many(sessions, 1)
        config = webhook_config(**FAST)
        d = Dispatcher(config=config)
        (claimed,) = await sync_to_async(delivery.claim)(d.owner, config.claim_ttl, 10)
        frozen_since = time.monotonic() - config.claim_ttl
        await d._attempt(claimed, frozen_since)
        await d._connections.aclose()
        d._executor.shutdown()
        assert receiver.requests == []
    assert (await sync_to_async(Delivery.objects.get)()).status == "delivering"


async def test_redirects_are_not_followed_and_answers_are_read_bounded(
    dispatcher: Dispatcher, outcomes: Outcomes
) -> None:
    async with Receiver(script=["redirect", "big"]) as receiver:
        hook, sessions = await make_world(receiver.url, 1)
        receiver.secret = hook.secret
        await emit_many(sessions, 1)
        await outcomes.until(lambda seen: len(seen) == 2)
        after_big = await sync_to_async(Delivery.objects.get)()
        await receiver.wait_accepted(1)
    assert [r["behaviour"] for r in receiver.requests] == ["redirect", "big", "ok"]
    assert outcomes.seen[0][1] == "failed"  # the 307 is an answer, not a way elsewhere
    assert after_big.last_status_code == 500
    assert 0 < len(after_big.last_response) <= 1000


@pytest.mark.parametrize("how", ["start_inline", "serve"])
async def test_the_supervisor_service_runs_the_dispatcher_beside_it(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_inline`` (runserver) and ``serve`` (run_supervisor) start a dispatcher
    with the supervisor: a test event is delivered with nothing else running."""
    from sessions_app import service

    built: list[Any] = []
    build = service.build_supervisor

    def keep(**kwargs: Any) -> Any:
        built.append(build(**kwargs))
        return built[-1]

    monkeypatch.setattr(service, "build_supervisor", keep)
    loop = asyncio.get_running_loop()
    async with Receiver() as receiver:
        hook, _ = await make_world(receiver.url, 0)
        receiver.secret = hook.secret
        assert not service.inline_running()
        if how == "start_inline":
            task = service.start_inline().task  # type: ignore[attr-defined]
        else:
            task = asyncio.create_task(service.serve())
        try:
            await sync_to_async(endpoints.send_test)(hook)
            (payload,) = await receiver.wait_accepted(1)
            # Only runserver's supervisor shares the web tier's loop (consumers ask).
            assert service.inline_running() is (how == "start_inline")
        finally:
            built[0].stop()
            await task
            for signum in (signal.SIGTERM, signal.SIGINT):  # serve's, back to the defaults
                loop.remove_signal_handler(signum)
    assert payload["type"] == "webhook.test"
    assert not service.inline_running()


async def test_a_task_that_lost_its_cancellation_does_not_hold_the_stop_up() -> None:
    """The doorbell's listener is ``while True`` around channels-redis's receive,
    whose command write goes through 3.11's wait_for: a cancellation that came as
    the write finished was lost, and the stop waited for the listener for ever (the
    supervisor's service gave up on the dispatcher after ``STOP_SECONDS``, its
    claims not given back). Now it is cancelled again until it ends."""
    receive = LosesOneCancellation()

    async def loses_one_cancellation(layer: object) -> None:
        while True:
            await receive()

    d = Dispatcher(config=webhook_config(**FAST), layer=None)
    d._listen = loses_one_cancellation  # type: ignore[method-assign]
    task = asyncio.create_task(d.run())
    await d.ready.wait()
    await receive.entered.wait()
    d.stop()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done, "the dispatcher's stop waited for its listener"
    assert receive.lost == 1
