"""The owner's message pump with a scripted driver (no session runner): in order,
one at a time, paced, each outcome recorded; deadlines; inbound once; receipts."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone
from prometheus_client import REGISTRY

from messaging import intents, outbound, pump
from messaging.conf import MessagingConfig
from messaging.models import Message
from sessions_app import leases
from sessions_app.drivers.base import DriverEvent, MessageReceived, Receipt
from sessions_app.leases import Lease
from sessions_app.models import WaSession
from tests.unit.messaging_helpers import ScriptedSends, rows, statuses, until_messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

FAST = MessagingConfig(send_interval=0.0, message_ttl=60.0, answer_timeout=0.3)
PEER = "491700000001"
PEER_JID = f"{PEER}@s.whatsapp.net"


@dataclasses.dataclass
class Harness:
    lease: Lease
    sends: ScriptedSends
    pump: pump.MessagePump


@sync_to_async
def claimed() -> Lease:
    WaSession.objects.create(name="pumped", pair_request=1)
    (lease,) = leases.claim("owner-a", 60, 1)
    return lease


enqueue = sync_to_async(intents.enqueue)


async def start(lease: Lease, config: MessagingConfig = FAST) -> Harness:
    sends = ScriptedSends()
    driver = type("Driver", (), {"send_text": sends.send_text})()
    the_pump = pump.MessagePump(lease, driver, config)  # type: ignore[arg-type]

    def deliver(event: DriverEvent) -> None:  # as the runner would: in order
        asyncio.get_running_loop().create_task(the_pump.on_event(event))

    sends.deliver = deliver
    return Harness(lease, sends, the_pump)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = await start(await claimed())
    yield harness
    await harness.pump.aclose()


async def queue(h: Harness, n: int, to: str = PEER, **kwargs: object) -> list[Message]:
    return [await enqueue(h.lease.session_id, to, f"text {i}", **kwargs) for i in range(n)]


async def test_a_connected_session_sends_its_queue_in_order_one_at_a_time(h: Harness) -> None:
    queued = await queue(h, 5)
    h.pump.settled(connected=True)
    done = await until_messages(h.lease.session_id, statuses(*["sent"] * 5))
    assert h.sends.refs() == [m.ref for m in queued], "in order, each once"
    assert h.sends.overlaps == 0, "one at a time"
    assert all(m["wa_id"].startswith("WA-") and m["chat"] == PEER_JID for m in done)


async def test_nothing_is_sent_while_not_connected(h: Harness) -> None:
    await queue(h, 2)
    h.pump.settled(connected=False)
    h.pump.kick()
    await h.pump.connection_closed()  # a round trip through the pump's state
    assert h.sends.sends == []
    assert [m["status"] for m in await rows(h.lease.session_id)] == ["queued", "queued"]
    h.pump.settled(connected=True)
    await until_messages(h.lease.session_id, statuses("sent", "sent"))


async def test_sends_are_paced_by_the_interval() -> None:
    h = await start(await claimed(), dataclasses.replace(FAST, send_interval=0.2))
    try:
        await queue(h, 3)
        h.pump.settled(connected=True)
        done = await until_messages(h.lease.session_id, statuses("sent", "sent", "sent"))
        starts = [dt.datetime.fromisoformat(m["sent_at"]) for m in done]
        sending = await sync_to_async(
            lambda: list(Message.objects.order_by("id").values_list("sending_at", flat=True))
        )()
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sending)]
        assert all(gap >= 0.2 for gap in gaps), gaps
        assert starts == sorted(starts)
    finally:
        await h.pump.aclose()


async def test_a_refused_message_fails_with_its_reason_and_the_next_goes_out(h: Harness) -> None:
    h.sends.behaviour["491700000002@s.whatsapp.net"] = "refused:not_on_whatsapp"
    await enqueue(h.lease.session_id, "491700000002", "to nobody")
    await queue(h, 1)
    h.pump.settled(connected=True)
    done = await until_messages(h.lease.session_id, statuses("failed", "sent"))
    assert done[0]["failure_reason"] == "not_on_whatsapp"


def counted(name: str, **labels: str) -> float:
    """A sample of this process's registry (what the supervisor's port serves)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_no_answer_is_unknown_and_never_resent(h: Harness) -> None:
    unknown = counted("waconnect_messages_sent_total", outcome="unknown")
    h.sends.behaviour[PEER_JID] = "silent"
    (first,) = await queue(h, 1)
    (second,) = await queue(h, 1, to="491700000002")
    h.pump.settled(connected=True)
    done = await until_messages(h.lease.session_id, statuses("unknown", "sent"))
    assert done[0]["failure_reason"] == "timeout"
    h.pump.settled(connected=True)
    h.pump.kick()
    await until_messages(h.lease.session_id, statuses("unknown", "sent"))
    assert h.sends.refs() == [first.ref, second.ref]
    assert counted("waconnect_messages_sent_total", outcome="unknown") == unknown + 1


@pytest.mark.parametrize("how", ["unknown", "raise"])
async def test_an_unknown_outcome_or_a_failing_driver_is_unknown(h: Harness, how: str) -> None:
    h.sends.behaviour[PEER_JID] = how
    await queue(h, 1)
    h.pump.settled(connected=True)
    await until_messages(h.lease.session_id, statuses("unknown"))
    assert len(h.sends.sends) == 1


async def test_not_connected_puts_it_back_and_it_goes_out_on_the_next_connection(
    h: Harness,
) -> None:
    h.sends.behaviour[PEER_JID] = "refused:not_connected"
    (message,) = await queue(h, 1)
    h.pump.settled(connected=True)
    await until_messages(
        h.lease.session_id, lambda ms: len(h.sends.sends) == 1 and ms[0]["status"] == "queued"
    )
    del h.sends.behaviour[PEER_JID]
    h.pump.settled(connected=False)
    h.pump.settled(connected=True)  # a new connection ends the pause
    await until_messages(h.lease.session_id, statuses("sent"))
    assert h.sends.refs() == [message.ref, message.ref], "never reached WhatsApp the first time"


async def test_a_send_under_way_when_the_connection_closes_is_unknown(h: Harness) -> None:
    h.sends.behaviour[PEER_JID] = "silent"
    await queue(h, 1)
    h.pump.config = dataclasses.replace(FAST, answer_timeout=30)
    h.pump.settled(connected=True)
    await asyncio.wait_for(h.sends.asked.wait(), 10)
    await h.pump.connection_closed()
    (row,) = await until_messages(h.lease.session_id, statuses("unknown"))
    assert row["failure_reason"] == "timeout"


async def test_a_new_owner_marks_the_old_epochs_send_unknown_and_sends_the_rest(
    h: Harness,
) -> None:
    h.sends.behaviour[PEER_JID] = "silent"
    h.pump.config = dataclasses.replace(FAST, answer_timeout=30)
    first, second = await queue(h, 2)
    h.pump.settled(connected=True)
    await asyncio.wait_for(h.sends.asked.wait(), 10)
    await h.pump.aclose()  # the owner dies mid-send
    await sync_to_async(WaSession.objects.filter(pk=h.lease.session_id).update)(
        lease_owner="owner-b", lease_epoch=F("lease_epoch") + 1
    )
    newer = Lease(h.lease.session_id, "owner-b", h.lease.epoch + 1)
    successor = await start(newer)
    try:
        successor.pump.settled(connected=False)  # the runner's first step ended
        await until_messages(newer.session_id, lambda ms: ms[0]["status"] == "unknown")
        successor.pump.settled(connected=True)
        done = await until_messages(newer.session_id, statuses("unknown", "sent"))
        assert done[0]["failure_reason"] == outbound.OWNER_LOST
        assert successor.sends.refs() == [second.ref], "the first is never sent again"
        assert h.sends.refs() == [first.ref]
    finally:
        await successor.pump.aclose()


@pytest.fixture
def start_up(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set when a pump's start-up makes its first database call."""
    called = asyncio.Event()
    mark_stale = pump._mark_stale

    async def recording(lease: Lease, now: dt.datetime) -> list[Message]:
        called.set()
        return await mark_stale(lease, now)

    monkeypatch.setattr(pump, "_mark_stale", recording)
    return called


def released_by_a_step(**settled: bool) -> Callable[[pump.MessagePump], None]:
    return lambda the_pump: the_pump.settled(**settled)


@pytest.mark.parametrize(
    ("holding", "release"),
    [
        # WhatsApp's first answer is due; then a step that neither opens nor shows a code.
        ([{"connecting": True}], released_by_a_step(connected=False)),
        # The first code is pushed and waits for its scan; then the login.
        ([{"connecting": True}, {"awaiting_scan": True}], released_by_a_step(connected=True)),
        # The same, and a message is queued before the scan (its ring).
        ([{"connecting": True}, {"awaiting_scan": True}], pump.MessagePump.kick),
    ],
    ids=["while-a-connection-opens", "while-a-code-awaits-its-scan", "until-a-message-is-queued"],
)
async def test_the_start_up_waits(
    monkeypatch: pytest.MonkeyPatch,
    start_up: asyncio.Event,
    holding: list[dict[str, bool]],
    release: Callable[[pump.MessagePump], None],
) -> None:
    monkeypatch.setattr(pump, "START_HOLD", 60.0)
    h = await start(await claimed())
    try:
        for step in holding:
            h.pump.settled(connected=False, **step)
        assert not h.pump.sender.wake.is_set()
        with pytest.raises(TimeoutError):  # bounded: shows a call that must not come
            await asyncio.wait_for(asyncio.shield(start_up.wait()), 0.2)
        assert not start_up.is_set(), "no database call while the first answer or code is due"
        release(h.pump)
        await asyncio.wait_for(start_up.wait(), 10)
    finally:
        await h.pump.aclose()


async def test_the_start_up_waits_no_longer_than_its_hold(
    monkeypatch: pytest.MonkeyPatch, start_up: asyncio.Event
) -> None:
    monkeypatch.setattr(pump, "START_HOLD", 0.05)
    h = await start(await claimed())
    try:
        h.pump.settled(connected=False, connecting=True)  # and no answer ever comes
        await asyncio.wait_for(start_up.wait(), 10)
    finally:
        await h.pump.aclose()


async def test_a_message_queued_before_the_owner_expires_while_its_connection_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pump, "START_HOLD", 0.05)
    h = await start(await claimed())
    try:
        # Queued before this owner's runner: no ring will tell its pump.
        await queue(h, 1, deadline=timezone.now() + dt.timedelta(seconds=0.3))
        h.pump.settled(connected=False, connecting=True)  # and it stays connecting
        done = await until_messages(h.lease.session_id, statuses("expired"))
        assert done[0]["failure_reason"] == "deadline"
    finally:
        await h.pump.aclose()


async def test_a_started_pump_expires_a_message_at_its_deadline_in_a_new_qr_round(
    h: Harness,
) -> None:
    passed = asyncio.Event()
    send_queued = h.pump.sender.send_queued

    async def recording(last: dt.datetime | None) -> dt.datetime | None:
        sent = await send_queued(last)
        # Set once the rest of the pump's pass (its deadline, if any) is done too.
        asyncio.get_running_loop().call_soon(passed.set)
        return sent

    h.pump.sender.send_queued = recording  # type: ignore[method-assign]
    h.pump.settled(connected=True)  # logged in: the start-up, then a pass
    await asyncio.wait_for(passed.wait(), 10)
    assert h.pump.started
    # Queued without a ring (as before an owner); then logged out, a new code shown.
    await queue(h, 1, deadline=timezone.now() + dt.timedelta(seconds=0.3))
    h.pump.settled(connected=False, awaiting_scan=True)
    done = await until_messages(h.lease.session_id, statuses("expired"))
    assert done[0]["failure_reason"] == "deadline"


async def test_queued_messages_expire_at_their_deadline_while_not_connected(h: Harness) -> None:
    expired = counted("waconnect_messages_sent_total", outcome="expired")
    soon = timezone.now() + dt.timedelta(seconds=0.3)
    await queue(h, 1, deadline=soon)
    await queue(h, 1)
    h.pump.settled(connected=False)
    done = await until_messages(h.lease.session_id, statuses("expired", "queued"))
    assert done[0]["failure_reason"] == "deadline"
    assert h.sends.sends == []
    assert counted("waconnect_messages_sent_total", outcome="expired") == expired + 1


async def test_the_sweep_expires_messages_of_sessions_nobody_owns(h: Harness) -> None:
    await h.pump.aclose()
    orphan = await sync_to_async(WaSession.objects.create)(name="orphan")
    deadline = timezone.now() + dt.timedelta(seconds=30)
    await enqueue(orphan.pk, PEER, "x", deadline=deadline)
    assert await pump.sweep_expired(now=deadline - dt.timedelta(seconds=1)) == 0
    assert await pump.sweep_expired(now=deadline) == 1
    await until_messages(orphan.pk, statuses("expired"))


async def test_an_incoming_message_redelivered_is_stored_once(h: Harness) -> None:
    event = MessageReceived(
        h.lease.session_id, "IN-1", PEER_JID, "99@lid", PEER_JID, False, timezone.now(), "P",
        "text", "hello",
    )  # fmt: skip
    await h.pump.on_event(event)
    await h.pump.on_event(event)
    done = await until_messages(h.lease.session_id, statuses("received"))
    assert (done[0]["wa_id"], done[0]["sender_phone"]) == ("IN-1", PEER_JID)


async def test_receipts_move_the_message_forward_only(h: Harness) -> None:
    await queue(h, 1)
    h.pump.settled(connected=True)
    (sent,) = await until_messages(h.lease.session_id, statuses("sent"))
    now = timezone.now()
    await h.pump.on_event(Receipt(h.lease.session_id, (sent["wa_id"],), "read", now))
    await h.pump.on_event(Receipt(h.lease.session_id, (sent["wa_id"],), "delivered", now))
    (row,) = await until_messages(h.lease.session_id, statuses("read"))
    assert row["delivered_at"] == row["read_at"]


async def test_a_driver_with_no_connection_open_leaves_the_message_queued(h: Harness) -> None:
    """A DriverError means the driver could not send: certainly not sent, so queued."""
    h.sends.behaviour[PEER_JID] = "driver-error"
    await queue(h, 1)
    h.pump.settled(connected=True)
    await asyncio.wait_for(h.sends.asked.wait(), 10)
    await until_messages(h.lease.session_id, lambda ms: ms[0]["version"] >= 2)
    assert [m["status"] for m in await rows(h.lease.session_id)] == ["queued"]
    del h.sends.behaviour[PEER_JID]
    h.pump.settled(connected=False)
    h.pump.settled(connected=True)
    await until_messages(h.lease.session_id, statuses("sent"))


async def test_outcomes_and_stored_messages_are_counted(h: Harness) -> None:

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        outcome: value("waconnect_messages_sent_total", outcome=outcome)
        for outcome in ("sent", "failed")
    }
    received = value("waconnect_messages_received_total")
    timed = value("waconnect_message_send_seconds_count")
    h.sends.behaviour["491700000002@s.whatsapp.net"] = "refused:rate_limited"
    await queue(h, 2)
    await enqueue(h.lease.session_id, "491700000002", "too fast")
    h.pump.settled(connected=True)
    await until_messages(h.lease.session_id, statuses("sent", "sent", "failed"))
    event = MessageReceived(
        h.lease.session_id, "IN-9", PEER_JID, PEER_JID, "", False, timezone.now(), "", "text", "x"
    )
    await h.pump.on_event(event)
    await h.pump.on_event(event)
    assert value("waconnect_messages_sent_total", outcome="sent") == before["sent"] + 2
    assert value("waconnect_messages_sent_total", outcome="failed") == before["failed"] + 1
    assert value("waconnect_messages_received_total") == received + 1
    assert value("waconnect_message_send_seconds_count") == timed + 2  # the two sent
