"""Messages through the real supervisor and the simulated WhatsApp: the session
runner sends its queue while connected, records every answer and receipt, stores
what arrives once, and never sends a message twice across a take-over."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from messaging import intents, outbound, pump_events, sender
from messaging.batcher import Batcher
from messaging.models import Message
from sessions_app.drivers.base import MessageReceived, Receipt
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.models import WaSession
from tests.unit.helpers import until
from tests.unit.messaging_helpers import statuses, until_messages
from tests.unit.test_supervisor import FAST, create, paired, running, running_driver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

PEER = "491700000001"
enqueue = sync_to_async(intents.enqueue)


@pytest.fixture(autouse=True)
def no_pacing(settings: Any) -> None:
    settings.WACONNECT_SEND_INTERVAL = 0


def simulated(delivered_delay: float = 0.05, read_delay: float = 0.05) -> SimulatedWhatsApp:
    timing = SimulatedTiming(first_qr_ttl=5, pair_delay=0.01, delivered_delay=delivered_delay)
    return SimulatedWhatsApp(dataclasses.replace(timing, read_delay=read_delay))


@pytest.fixture
def world() -> SimulatedWhatsApp:
    return simulated()


async def test_a_message_is_sent_then_delivered_then_read(world: SimulatedWhatsApp) -> None:
    async with running(world) as supervisor:
        session = await paired("sender", supervisor)
        message = await enqueue(session, f"+{PEER}", "hello", actor="ada")
        (row,) = await until_messages(session.pk, statuses("read"))
    assert row["wa_id"] == message.ref, "the simulated driver uses our ref as WhatsApp's id"
    assert row["sent_at"] and row["delivered_at"] and row["read_at"]
    carried = world.messages.carried[message.ref]
    assert (carried.accepted, carried.recipient) == (1, PEER)


async def test_the_queue_goes_out_in_order_each_once(world: SimulatedWhatsApp) -> None:
    async with running(world) as supervisor:
        session = await paired("sender", supervisor)
        refs = [(await enqueue(session, PEER, f"m{i}")).ref for i in range(10)]
        await until_messages(session.pk, lambda ms: all(m["status"] == "read" for m in ms))
    accepted = sorted(world.messages.carried.values(), key=lambda c: c.accepted_at)
    assert [c.message_id for c in accepted] == refs
    assert all(c.accepted == 1 for c in accepted)


async def test_a_session_messaging_another_is_received_by_it_once(
    world: SimulatedWhatsApp,
) -> None:
    async with running(world) as supervisor:
        alice = await paired("alice", supervisor)
        bob = await paired("bob", supervisor)
        bob_number = bob.jid.split("@")[0].split(":")[0]
        message = await enqueue(alice, bob_number, "hi bob")
        await until_messages(alice.pk, statuses("read"))
        (got,) = await until_messages(bob.pk, statuses("received"))
    assert (got["wa_id"], got["text"], got["from_me"], got["direction"]) == (
        message.ref,
        "hi bob",
        False,
        "in",
    )
    assert got["sender"].startswith(alice.jid.split("@")[0].split(":")[0])


async def test_a_refused_message_fails_with_the_reason(world: SimulatedWhatsApp) -> None:
    world.messages.set_fault("not_on_whatsapp", PEER)
    async with running(world) as supervisor:
        session = await paired("sender", supervisor)
        await enqueue(session, PEER, "to nobody")
        await enqueue(session, "491700000002", "to somebody")
        done = await until_messages(session.pk, statuses("failed", "read"))
    assert done[0]["failure_reason"] == "not_on_whatsapp"


async def test_the_doorbell_wakes_the_sender_without_waiting_for_the_reconcile(
    world: SimulatedWhatsApp,
) -> None:
    slow = dataclasses.replace(FAST, reconcile_interval=300.0)
    async with running(world, slow) as supervisor:
        session = await paired("sender", supervisor)
        await enqueue(session, PEER, "now")
        await until_messages(session.pk, statuses("read"), timeout=20)


async def test_the_periodic_pass_sends_a_message_whose_ring_was_lost(
    world: SimulatedWhatsApp,
) -> None:
    async with running(world) as supervisor:
        session = await paired("sender", supervisor)
        await sync_to_async(Message.objects.create)(  # queued without a ring
            session=session, direction="out", to=PEER, chat=f"{PEER}@s.whatsapp.net",
            text="quiet", status="queued", deadline=timezone.now() + dt.timedelta(minutes=1),
        )  # fmt: skip
        await until_messages(session.pk, statuses("read"))


class WatchedDriver(SimulatedDriver):
    """The simulated driver, telling when the world has taken a send."""

    def __init__(self, world: SimulatedWhatsApp) -> None:
        super().__init__(world)
        self.handed = asyncio.Event()

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        await super().send_text(session_id, ref, to, text)
        self.handed.set()


async def take_over_with_a_send_under_way(world: SimulatedWhatsApp) -> tuple[Message, Message]:
    """A message is under way (carried, never acknowledged) when its supervisor
    stops; another supervisor takes the session over and sends the next one."""
    world.messages.set_fault("no_ack", PEER)
    driver = WatchedDriver(world)
    async with running_driver(driver) as first:
        session = await paired("sender", first)
        stuck = await enqueue(session, PEER, "under way")
        await asyncio.wait_for(driver.handed.wait(), 10)
    assert stuck.ref in world.messages.carried
    after = await enqueue(session, "491700000002", "after")
    async with running(world) as second:
        await until_messages(session.pk, lambda ms: ms[1]["status"] == "sent")
        row = await sync_to_async(WaSession.objects.get)(pk=session.pk)
        assert row.lease_owner == second.owner
    return stuck, after


async def test_a_take_over_marks_the_message_under_way_unknown_and_never_resends_it() -> None:
    world = simulated(delivered_delay=60, read_delay=-1)  # no receipt to prove anything
    stuck, after = await take_over_with_a_send_under_way(world)
    done = await until_messages(stuck.session_id, statuses("unknown", "sent"))
    assert done[0]["failure_reason"] == "owner_lost"
    assert world.messages.carried[stuck.ref].accepted == 1, "never sent again"
    assert world.messages.carried[after.ref].accepted == 1


async def test_a_receipt_for_an_unknown_message_proves_it_went_out(
    world: SimulatedWhatsApp,
) -> None:
    stuck, _ = await take_over_with_a_send_under_way(world)
    async with running(world) as third:
        session = await sync_to_async(WaSession.objects.get)(pk=stuck.session_id)
        await until(session.pk, lambda snap: snap["state"] == "connected")
        conn = world.connection(session.pk)
        assert conn is not None and conn.owner == third.owner
        conn.emit(Receipt(session.pk, (stuck.ref,), "read", timezone.now()))  # WhatsApp's
        done = await until_messages(session.pk, lambda ms: ms[0]["status"] == "read")
    assert (done[0]["wa_id"], done[0]["failure_reason"]) == (stuck.ref, "")
    assert world.messages.carried[stuck.ref].accepted == 1


async def test_a_session_that_is_not_connected_keeps_it_queued_until_it_expires(
    world: SimulatedWhatsApp,
) -> None:
    async with running(world):
        session = await create("unpaired", "ada")
        await until(session.pk, lambda snap: snap["state"] == "qr_required")
        deadline = timezone.now() + dt.timedelta(seconds=0.5)
        await enqueue(session, PEER, "never", deadline=deadline)
        (row,) = await until_messages(session.pk, statuses("expired"))
    assert row["failure_reason"] == "deadline"
    assert world.messages.carried == {}


async def test_a_session_nobody_owns_has_its_messages_expired_by_the_sweep(
    world: SimulatedWhatsApp,
) -> None:
    stopped = await sync_to_async(WaSession.objects.create)(name="idle", desired_state="stopped")
    await enqueue(stopped, PEER, "never", deadline=timezone.now() + dt.timedelta(seconds=0.3))
    async with running(world):
        await until_messages(stopped.pk, statuses("expired"))
    assert (await sync_to_async(WaSession.objects.get)(pk=stopped.pk)).lease_owner == ""


async def test_a_message_redelivered_after_a_reconnect_is_stored_once(
    world: SimulatedWhatsApp,
) -> None:
    async with running(world) as supervisor:
        session = await paired("receiver", supervisor)
        message_id = world.messages.peer_message(session.pk, "+491700000003", "hi", "Peer")
        (first,) = await until_messages(session.pk, statuses("received"))
        assert (first["wa_id"], first["push_name"], first["text"]) == (message_id, "Peer", "hi")
        again = MessageReceived(
            session.pk, message_id, first["chat"], first["sender"], first["sender_phone"],
            False, timezone.now(), "Peer", "text", "hi",
        )  # fmt: skip
        conn = world.connection(session.pk)
        assert conn is not None
        conn.emit(again)  # whatsmeow redelivers
        other = world.messages.peer_message(session.pk, "+491700000003", "second", "Peer")
        done = await until_messages(session.pk, statuses("received", "received"))
    assert [m["wa_id"] for m in done] == [message_id, other]


class StopRecorder(SimulatedDriver):
    """The simulated driver, telling when the runner asked it to close a connection."""

    def __init__(self, world: SimulatedWhatsApp) -> None:
        super().__init__(world)
        self.stopped = asyncio.Event()

    async def stop(self, session_id: int) -> None:
        self.stopped.set()
        await super().stop(session_id)


async def test_a_hand_over_closes_the_connection_while_the_pumps_database_hangs(
    world: SimulatedWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partitioned owner's pump cannot record its last ack (its statements hang):
    the runner still closes the connection at once, not after the pump's bound, so
    it is closed before the lease can run out (a chaos run in CI: "partitioned: 1
    connections still open after 8.0s")."""
    hung, gate = asyncio.Event(), asyncio.Event()
    real_sent_and_take = Batcher.sent_and_take

    async def hang(*args: Any) -> None:
        hung.set()
        await gate.wait()

    async def sent_and_take(self: Batcher, lease: Any, sent: Any) -> Any:
        if sent is None:
            return await real_sent_and_take(self, lease, sent)
        await hang()  # recording the first ack: the database stopped answering
        return None, outbound.Taken(None, [])

    monkeypatch.setattr(Batcher, "sent_and_take", sent_and_take)
    monkeypatch.setattr(sender, "_mark_sent", hang)
    driver = StopRecorder(world)
    async with running_driver(driver) as supervisor:
        session = await paired("sender", supervisor)
        await enqueue(session, PEER, "first")
        await hung.wait()
        supervisor.runners[session.pk].hand_over()
        try:
            async with asyncio.timeout(2.0):  # the pump's own bound is 5 s
                await driver.stopped.wait()
        finally:
            gate.set()


async def test_a_receipt_that_overtakes_the_ack_record_is_applied_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ack is written with the next take; a delivered receipt that arrives before
    that write matched nothing and was lost, so the message stayed ``sent`` (a
    webhooks flow run under load saw ``sent, read``: ``delivered`` skipped)."""
    world = simulated(delivered_delay=0.0, read_delay=-1)
    gate = asyncio.Event()
    real_sent_and_take = Batcher.sent_and_take
    real_receipt = pump_events.EventRecorder._receipt

    async def sent_and_take(self: Batcher, lease: Any, sent: Any) -> Any:
        if sent is not None:
            await gate.wait()  # the ack's write is slow
        return await real_sent_and_take(self, lease, sent)

    async def receipt(self: pump_events.EventRecorder, event: Receipt) -> None:
        gate.set()  # the ack is written from now on, after this receipt's own write
        await real_receipt(self, event)

    monkeypatch.setattr(Batcher, "sent_and_take", sent_and_take)
    monkeypatch.setattr(pump_events.EventRecorder, "_receipt", receipt)
    async with running(world) as supervisor:
        session = await paired("sender", supervisor)
        await enqueue(session, PEER, "quick")
        await enqueue(session, PEER, "second")  # the first ack goes with this take
        rows = await until_messages(session.pk, statuses("delivered", "delivered"))
    assert all(row["delivered_at"] for row in rows)
