"""The outbound message backlog on the web tier's /metrics: how many messages are
queued and sending, and how long the oldest queued one has waited, moving as the
owner's pump takes and sends them; read with one query per scrape."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messaging.models import Message
from messaging.states import Direction, Status
from ops.collector import message_families
from sessions_app.drivers.base import MessageSent
from tests.unit.messaging_helpers import statuses, until_messages
from tests.unit.test_messaging_pump import FAST, PEER, PEER_JID, claimed, enqueue, start
from tests.unit.test_ops_metrics_move import Samples, value, web

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

AGE = 60.0  # seconds the queued messages are made older than now
OTHER = "491700000002"


@sync_to_async
def age(message: Message, seconds: float) -> None:
    at = timezone.now() - dt.timedelta(seconds=seconds)
    Message.objects.filter(pk=message.pk).update(created_at=at)


@sync_to_async
def finished_and_inbound(session_id: int) -> None:
    """Old rows that are no backlog: an inbound message and a failed outbound one."""
    long_ago = timezone.now() - dt.timedelta(days=1)
    Message.objects.create(
        session_id=session_id,
        direction=Direction.IN,
        wa_id="IN-1",
        status=Status.RECEIVED,
        created_at=long_ago,
    )
    Message.objects.create(
        session_id=session_id,
        direction=Direction.OUT,
        to=PEER,
        status=Status.FAILED,
        created_at=long_ago,
    )


def backlog(found: Samples) -> tuple[float, float, float]:
    """(queued, sending, oldest queued age) as scraped."""
    return (
        value(found, "waconnect_messages_outbound", status="queued"),
        value(found, "waconnect_messages_outbound", status="sending"),
        value(found, "waconnect_messages_oldest_queued_age_seconds"),
    )


async def test_the_outbound_backlog_and_its_age_move_as_messages_are_queued_and_sent() -> None:
    h = await start(await claimed(), dataclasses.replace(FAST, answer_timeout=30))
    session_id = h.lease.session_id
    try:
        await finished_and_inbound(session_id)
        assert backlog(await web()) == (0, 0, 0)

        h.sends.behaviour[PEER_JID] = "silent"  # the first send waits for its answer
        first = await enqueue(session_id, PEER, "first")
        second = await enqueue(session_id, OTHER, "second")
        third = await enqueue(session_id, OTHER, "third")
        await age(first, 2 * AGE)
        await age(second, AGE)
        await age(third, AGE / 2)
        queued, sending, oldest = backlog(await web())
        assert (queued, sending) == (3, 0)
        assert 2 * AGE <= oldest < 2 * AGE + 30

        h.pump.settled(connected=True)
        await asyncio.wait_for(h.sends.asked.wait(), 10)
        await until_messages(
            session_id, statuses("received", "failed", "sending", "queued", "queued")
        )
        queued, sending, oldest = backlog(await web())
        assert (queued, sending) == (2, 1)
        assert AGE <= oldest < AGE + 30, "the oldest is sending now: the next queued one counts"

        assert h.sends.deliver is not None
        h.sends.deliver(MessageSent(session_id, first.ref, "WA-late", timezone.now()))
        await until_messages(session_id, statuses("received", "failed", "sent", "sent", "sent"))
        assert backlog(await web()) == (0, 0, 0)
        assert h.sends.refs() == [first.ref, second.ref, third.ref]
    finally:
        await h.pump.aclose()


async def test_a_message_put_back_in_the_queue_keeps_its_age() -> None:
    """Refused as not connected, it waits again; its age runs from its request."""
    h = await start(await claimed())
    session_id = h.lease.session_id
    try:
        h.sends.behaviour[PEER_JID] = "refused:not_connected"
        message = await enqueue(session_id, PEER, "again")
        await age(message, AGE)
        h.pump.settled(connected=True)
        await until_messages(
            session_id, lambda ms: len(h.sends.sends) == 1 and ms[0]["status"] == "queued"
        )
        queued, sending, oldest = backlog(await web())
        assert (queued, sending) == (1, 0)
        assert AGE <= oldest < AGE + 30
    finally:
        await h.pump.aclose()


def test_the_message_backlog_is_one_query() -> None:
    with CaptureQueriesContext(connection) as queries:
        families = {family.name: family for family in message_families()}
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert set(families) == {
        "waconnect_messages_outbound",
        "waconnect_messages_oldest_queued_age_seconds",
    }
