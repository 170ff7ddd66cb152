"""The owner's hot path for many sessions at once (``messaging.outbound_batch``) and
the pumps' batcher (``messaging.batcher``), on SQLite (and on PostgreSQL in ``make
test``'s second pass): each session's ack and next take as if alone, fenced per
session, in order, one at a time, never sent twice."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone

from messaging import batcher as batcher_mod
from messaging import outbound, signals
from messaging.batcher import Batcher
from messaging.models import Message
from messaging.outbound_batch import Step, sent_and_take_many
from messaging.states import Status
from sessions_app import leases
from sessions_app.leases import Lease
from sessions_app.models import WaSession
from tests.unit.test_messaging_outbound import queue

pytestmark = pytest.mark.django_db(transaction=True)

NOW = timezone.now()
LATER = NOW + dt.timedelta(hours=1)


@pytest.fixture
def held() -> list[Lease]:
    for i in range(3):
        WaSession.objects.create(name=f"batch-{i}", pair_request=1)
    return sorted(leases.claim("owner-a", 60, 3), key=lambda lease: lease.session_id)


def status(message: Message) -> str:
    return Message.objects.get(pk=message.pk).status


def test_each_session_gets_its_own_oldest_message_and_its_own_ack(held: list[Lease]) -> None:
    a, b, c = held
    qa, qb = queue(a, 2), queue(b, 2)
    first = sent_and_take_many([Step(a), Step(b), Step(c)], NOW)
    assert [t.message.pk if t.message else None for _, t in first] == [qa[0].pk, qb[0].pk, None]
    assert all(row is None for row, _ in first)
    assert Message.objects.get(pk=qa[0].pk).send_epoch == a.epoch
    # a acked, b not yet: a moves on, b's next waits (one at a time)
    second = sent_and_take_many([Step(a, (qa[0].ref, "WA-A0", NOW)), Step(b)], NOW)
    (row_a, taken_a), (row_b, taken_b) = second
    assert row_a is not None and (row_a.status, row_a.wa_id) == (Status.SENT, "WA-A0")
    assert taken_a.message is not None and taken_a.message.pk == qa[1].pk
    assert row_b is None and taken_b.message is None, "b's first is still sending"
    assert [status(m) for m in qb] == [Status.SENDING, Status.QUEUED]


def test_a_lost_lease_writes_nothing_for_its_session_and_the_others_go_on(
    held: list[Lease],
) -> None:
    a, b, _ = held
    qa, qb = queue(a, 2), queue(b, 2)
    sent_and_take_many([Step(a), Step(b)], NOW)
    WaSession.objects.filter(pk=a.session_id).update(
        lease_owner="owner-b", lease_epoch=F("lease_epoch") + 1
    )
    results = sent_and_take_many(
        [Step(a, (qa[0].ref, "WA-A0", NOW)), Step(b, (qb[0].ref, "WA-B0", NOW))], NOW
    )
    assert results[0][0] is None and results[0][1].message is None
    assert [status(m) for m in qa] == [Status.SENDING, Status.QUEUED]
    assert results[1][0] is not None and results[1][1].message is not None
    assert [status(m) for m in qb] == [Status.SENT, Status.SENDING]


def test_a_send_left_by_an_older_epoch_is_unknown_and_the_next_is_taken(
    held: list[Lease],
) -> None:
    a, b, _ = held
    qa, qb = queue(a, 2), queue(b, 1)
    sent_and_take_many([Step(a)], NOW)
    WaSession.objects.filter(pk=a.session_id).update(lease_epoch=F("lease_epoch") + 1)
    newer = Lease(a.session_id, a.owner, a.epoch + 1)
    (_, ta), (_, tb) = sent_and_take_many([Step(newer), Step(b)], NOW)
    assert [m.pk for m in ta.stale] == [qa[0].pk] and tb.stale == []
    assert ta.message is not None and ta.message.pk == qa[1].pk, "the next one, never again"
    assert tb.message is not None and tb.message.pk == qb[0].pk
    row = Message.objects.get(pk=qa[0].pk)
    assert (row.status, row.failure_reason) == (Status.UNKNOWN, outbound.OWNER_LOST)


def test_past_their_deadline_messages_are_not_taken(held: list[Lease]) -> None:
    a, _, _ = held
    (old,) = queue(a, 1, deadline=NOW)
    ((_, taken),) = sent_and_take_many([Step(a)], NOW)
    assert taken.message is None and status(old) == Status.QUEUED


def test_one_signal_per_statement_inside_the_transaction(held: list[Lease]) -> None:
    a, b, _ = held
    qa, qb = queue(a, 1), queue(b, 1)
    seen: list[tuple[str, list[str]]] = []

    def receiver(sender: Any, messages: list[Message], change: str, **kwargs: Any) -> None:
        seen.append((change, sorted(m.ref for m in messages)))

    signals.messages_changed.connect(receiver)
    try:
        sent_and_take_many([Step(a), Step(b)], NOW)
    finally:
        signals.messages_changed.disconnect(receiver)
    assert seen == [(signals.STATUS, sorted([qa[0].ref, qb[0].ref]))]


def test_a_session_appears_once_in_a_batch(held: list[Lease]) -> None:
    with pytest.raises(ValueError, match="once in a batch"):
        sent_and_take_many([Step(held[0]), Step(held[0])], NOW)


# -- the batcher ----------------------------------------------------------------------


async def test_calls_made_while_the_database_is_busy_go_together(held: list[Lease]) -> None:
    """No call waits to be grouped: the first goes at once; the two that come while
    it runs (one slot) share the next batch."""
    for lease in held:
        await sync_to_async(queue)(lease, 1)
    batcher = Batcher(slots=1)
    results = await asyncio.gather(*(batcher.sent_and_take(lease, None) for lease in held))
    assert (batcher.batches, batcher.calls) == (2, 3)
    assert all(taken.message is not None for _, taken in results)
    assert [taken.message.session_id for _, taken in results if taken.message] == [
        lease.session_id for lease in held
    ]


async def test_a_message_taken_for_a_pump_that_stopped_goes_back_in_the_queue(
    held: list[Lease],
) -> None:
    """It was never given to the driver: queued again, not left sending (which the
    next owner would have to mark unknown)."""
    (message,) = await sync_to_async(queue)(held[0], 1)
    batcher = Batcher(slots=1)
    call = asyncio.create_task(batcher.sent_and_take(held[0], None))
    await asyncio.sleep(0)  # the batch is under way
    call.cancel()
    await asyncio.gather(*list(batcher._tasks))
    row = await Message.objects.aget(pk=message.pk)
    assert row.status == Status.QUEUED and row.send_epoch is None


async def test_a_failed_batch_fails_each_of_its_calls(
    held: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(steps: list[Step], now: dt.datetime) -> list[Any]:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(batcher_mod, "_sent_and_take_many", broken)
    batcher = Batcher(slots=1)
    calls = [batcher.sent_and_take(lease, None) for lease in held[:2]]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert batcher.running == 0


async def test_two_calls_for_one_session_go_in_different_batches(held: list[Lease]) -> None:
    """A session's old pump may still have a call waiting when its new one calls (a
    lease given up and claimed again by the same supervisor): they never share a
    batch (the batch would be refused), and the other sessions' calls are not held up."""
    a, b, _ = held
    await sync_to_async(queue)(a, 2)
    await sync_to_async(queue)(b, 1)
    batcher = Batcher(slots=1)
    busy = asyncio.create_task(batcher.sent_and_take(b, None))  # takes the one slot
    await asyncio.sleep(0)
    twice = [batcher.sent_and_take(a, None), batcher.sent_and_take(a, None)]
    outcomes = await asyncio.gather(busy, *twice, return_exceptions=True)
    assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
    assert (batcher.batches, batcher.calls) == (3, 3)
