"""Webhooks seen on both endpoints as a real receiver answers: the web tier's /metrics
shows the backlog and its age while nothing delivers and empties as the dispatcher
works; the supervisor process's port counts each attempt's outcome, the delivery
latency (from the event's commit) and the dead letters."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from ops.server import MetricsServer
from tests.unit.test_ops_metrics_move import moved, port, value, web
from tests.unit.test_webhooks_dispatch import FAST, Outcomes, emit_many, make_world
from tests.webhooks.receiver import Receiver
from webhooks.conf import webhook_config
from webhooks.dispatcher import Dispatcher
from webhooks.models import Delivery, Event

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

AGE = 60.0  # seconds the queued events are made older than now


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    """The port ``run_supervisor --metrics-port`` serves (the dispatcher runs beside it)."""
    server = MetricsServer("127.0.0.1", 0, lambda: (True, {})).start()
    yield server
    server.close()


@sync_to_async
def age_backlog(seconds: float) -> None:
    at = timezone.now() - dt.timedelta(seconds=seconds)
    Event.objects.update(created_at=at)
    Delivery.objects.update(created_at=at)


async def test_webhook_backlog_outcomes_latency_and_dead_letters_move(
    server: MetricsServer,
) -> None:
    outcomes = Outcomes()
    async with Receiver(script=[500]) as receiver:
        hook, sessions = await make_world(receiver.url)
        receiver.secret = hook.secret
        await emit_many(sessions, 1)
        await age_backlog(AGE)
        queued, before = await web(), await port(server)
        assert value(queued, "waconnect_webhook_backlog", status="pending") == 2
        assert value(queued, "waconnect_webhook_backlog", status="delivering") == 0
        assert AGE <= value(queued, "waconnect_webhook_backlog_oldest_age_seconds") < AGE + 30

        dispatcher = Dispatcher(config=webhook_config(**FAST), observer=outcomes)
        task = asyncio.create_task(dispatcher.run())
        try:
            await outcomes.until(lambda seen: sum(s == "delivered" for _, _, s in seen) == 2)
            delivered, drained = await port(server), await web()

            receiver.then(*[500] * len(FAST["schedule"]))  # the next one never gets a 2xx
            await emit_many(sessions[:1], 1)
            await outcomes.until(lambda seen: any(s == "dead" for _, _, s in seen))
            dead, shown = await port(server), await web()
        finally:
            dispatcher.stop()
            await task

    assert moved(before, delivered, "waconnect_webhook_deliveries_total", outcome="delivered") == 2
    assert moved(before, delivered, "waconnect_webhook_deliveries_total", outcome="failed") == 1
    assert moved(before, delivered, "waconnect_webhook_attempt_duration_seconds_count") == 3
    assert moved(before, delivered, "waconnect_webhook_delivery_latency_seconds_count") == 2
    # timed from each event's commit, a minute ago, not from its last attempt
    assert moved(before, delivered, "waconnect_webhook_delivery_latency_seconds_sum") >= 2 * AGE
    assert moved(before, delivered, "waconnect_webhook_dead_total") == 0
    assert value(drained, "waconnect_webhook_backlog", status="pending") == 0
    assert value(drained, "waconnect_webhook_backlog_oldest_age_seconds") == 0

    retries = len(FAST["schedule"])
    assert moved(delivered, dead, "waconnect_webhook_deliveries_total", outcome="failed") == retries
    assert moved(delivered, dead, "waconnect_webhook_dead_total") == 1
    assert moved(delivered, dead, "waconnect_webhook_delivery_latency_seconds_count") == 0
    assert value(shown, "waconnect_webhook_backlog", status="dead") == 1
    assert value(shown, "waconnect_webhook_backlog", status="pending") == 0
