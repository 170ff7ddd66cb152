"""The simulated WhatsApp carries messages as WhatsApp does, the same in process
and behind the service's socket: numbers that exist or not, session to session,
an offline queue, receipts after their delays (on the simulator's clock, no
sleeping), faults, the message id the client chose, and a record of every
message carried."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sessions_app.drivers import wire
from sessions_app.drivers.base import (
    Connected,
    ConnectSpec,
    DriverError,
    DriverEvent,
    MessageReceived,
    MessageSent,
    QrCode,
    Receipt,
    Replaced,
    SendFailed,
)
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.drivers.simulated_messages import ManualClock
from sessions_app.drivers.simulated_remote import RemoteSimulatedDriver
from sessions_app.drivers.simulated_service import ServiceControl, SimulatedWhatsAppService
from tests.unit.test_simulated_driver import Inbox

pytestmark = pytest.mark.timeout(20)

TIMING = SimulatedTiming(
    first_qr_ttl=5, next_qr_ttl=5, qr_count=2, pair_delay=0, delivered_delay=2.0, read_delay=3.0
)
SECRET = "the secret text of a message"


@dataclasses.dataclass
class Harness:
    """One world on a manual clock, reached in process or over the service."""

    kind: str
    world: SimulatedWhatsApp
    clock: ManualClock
    service: SimulatedWhatsAppService | None = None
    address: str = ""
    drivers: list[Any] = dataclasses.field(default_factory=list)

    def driver(self, send_timeout: float = 20.0) -> Any:
        if self.kind == "in-process":
            driver: Any = SimulatedDriver(self.world, send_timeout=send_timeout)
        else:  # the service's timers run on its clock; the driver's deadline is real time
            driver = RemoteSimulatedDriver(
                self.address, send_timeout=0.05 if send_timeout < 20 else send_timeout
            )
        self.drivers.append(driver)
        return driver

    async def expire(self, seconds: float) -> None:
        """Let ``seconds`` of send deadline pass (in process: on the world's clock)."""
        if self.kind == "in-process":
            self.clock.advance(seconds)

    async def settled(self, driver: Any, session_id: int) -> None:
        """Everything the world has emitted for ``session_id`` reached its inbox."""
        if self.kind == "service":  # a round trip behind whatever is on the socket
            await driver._command(session_id, "gesture", gesture="-")

    async def send(self, driver: Any, session_id: int, ref: str, to: str, text: str) -> None:
        """``send_text``, once the world has taken the send (over the service: a
        round trip), so that the clock can be moved past it."""
        await driver.send_text(session_id, ref, to, text)
        await self.settled(driver, session_id)

    def control(self) -> ServiceControl:
        return ServiceControl(self.address)


@pytest.fixture(params=["in-process", "service"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    clock = ManualClock()
    world = SimulatedWhatsApp(TIMING, clock=clock)
    h = Harness(request.param, world, clock)
    if request.param == "service":
        h.service = SimulatedWhatsAppService(world)
        host, port = await h.service.start()
        h.address = f"{host}:{port}"
    yield h
    for driver in h.drivers:
        await driver.aclose()
    if h.service is not None:
        await h.service.aclose()


def link(world: SimulatedWhatsApp, session_id: int) -> str:
    """A device linked for ``session_id``; its JID (the number is its user part)."""
    jid = f"4915{session_id:07d}@s.whatsapp.net"
    world.devices[jid] = session_id
    return jid


def number(jid: str) -> str:
    return jid.partition("@")[0]


async def connect(driver: Any, session_id: int, jid: str) -> Inbox:
    inbox = Inbox()
    await driver.start(ConnectSpec(session_id, jid=jid, owner="sup", epoch=7), inbox)
    assert isinstance(await inbox.next(), Connected)
    return inbox


async def next_of(inbox: Inbox, kind: type[DriverEvent]) -> Any:
    event = await inbox.next()
    assert isinstance(event, kind), event
    return event


async def test_a_session_messages_another_which_receives_it_with_receipts_back(
    harness: Harness,
) -> None:
    a, b = link(harness.world, 1), link(harness.world, 2)
    driver = harness.driver()
    inbox_a, inbox_b = await connect(driver, 1, a), await connect(driver, 2, b)

    await harness.send(driver, 1, "ref-1", "+" + number(b), "hello")
    received = await next_of(inbox_b, MessageReceived)
    assert (received.message_id, received.text, received.kind) == ("ref-1", "hello", "text")
    assert received.chat == received.sender == received.sender_phone == a
    assert not received.from_me and received.session_id == 2
    harness.clock.advance(0)
    sent = await next_of(inbox_a, MessageSent)
    assert (sent.ref, sent.message_id) == ("ref-1", "ref-1"), "the client's ref is WhatsApp's id"

    harness.clock.advance(TIMING.delivered_delay - 0.01)
    await harness.settled(driver, 1)
    assert inbox_a.queue.empty(), "no receipt before its delay"
    harness.clock.advance(0.01)
    delivered = await next_of(inbox_a, Receipt)
    assert (delivered.message_ids, delivered.status, delivered.chat) == (("ref-1",), "delivered", b)
    harness.clock.advance(TIMING.read_delay)
    read = await next_of(inbox_a, Receipt)
    assert (read.message_ids, read.status) == (("ref-1",), "read")

    record = harness.world.messages.carried["ref-1"]
    assert (record.from_session, record.to_session, record.accepted) == (1, 2, 1)
    assert (record.sender, record.recipient, record.status) == (number(a), number(b), "read")
    assert [(d.session_id, d.owner, d.epoch) for d in record.deliveries] == [(2, "sup", 7)]


async def test_a_message_for_an_offline_session_is_held_until_it_connects(
    harness: Harness,
) -> None:
    a, b = link(harness.world, 1), link(harness.world, 2)
    driver = harness.driver()
    inbox_a = await connect(driver, 1, a)
    for ref in ("first", "second"):
        await harness.send(driver, 1, ref, number(b), ref)
    harness.clock.advance(TIMING.delivered_delay + TIMING.read_delay)
    assert [(await next_of(inbox_a, MessageSent)).ref for _ in range(2)] == ["first", "second"]
    await harness.settled(driver, 1)
    assert inbox_a.queue.empty(), "no receipt while the recipient is away"
    assert harness.world.messages.carried["first"].status == "held"

    inbox_b = await connect(driver, 2, b)
    assert [(await next_of(inbox_b, MessageReceived)).text for _ in range(2)] == [
        "first",
        "second",
    ], "held messages arrive in order once it connects"
    harness.clock.advance(TIMING.delivered_delay)
    receipts = [await next_of(inbox_a, Receipt) for _ in range(2)]
    assert [(r.message_ids[0], r.status) for r in receipts] == [
        ("first", "delivered"),
        ("second", "delivered"),
    ]


async def test_receipts_for_an_offline_sender_wait_for_it(harness: Harness) -> None:
    a, b = link(harness.world, 1), link(harness.world, 2)
    driver = harness.driver()
    await connect(driver, 1, a)
    inbox_b = await connect(driver, 2, b)
    await harness.send(driver, 1, "r", number(b), "hi")
    await next_of(inbox_b, MessageReceived)
    await driver.stop(1)  # the sender goes away before its receipts come
    harness.clock.advance(TIMING.delivered_delay + TIMING.read_delay)
    inbox_a = await connect(driver, 1, a)
    assert [(r.message_ids, r.status) for r in [await next_of(inbox_a, Receipt) for _ in "12"]] == [
        (("r",), "delivered"),
        (("r",), "read"),
    ]


async def test_numbers_that_do_not_exist_and_bad_recipients_are_refused(
    harness: Harness,
) -> None:
    harness.world.messages.peers = {"4917000000001"}
    a = link(harness.world, 1)
    driver = harness.driver()
    inbox = await connect(driver, 1, a)
    await harness.send(driver, 1, "peer", "4917000000001", "to a peer")
    await harness.send(driver, 1, "nobody", "4917000000002", "to nobody")
    await harness.send(driver, 1, "bad", "call me", "to nothing")
    await harness.send(driver, 1, "device", "4917000000001:3@s.whatsapp.net", "to a device")
    harness.clock.advance(0)
    assert isinstance(await inbox.next(), MessageSent)
    outcomes = [await next_of(inbox, SendFailed) for _ in range(3)]
    assert [(f.ref, f.outcome, f.reason) for f in outcomes] == [
        ("nobody", "refused", "not_on_whatsapp"),
        ("bad", "refused", "invalid_recipient"),
        ("device", "refused", "invalid_recipient"),
    ]
    assert set(harness.world.messages.carried) == {"peer"}, "only what went out is recorded"
    assert harness.world.messages.carried["peer"].status == "delivered", "a peer's phone is on"


async def test_faults_refuse_then_clear(harness: Harness) -> None:
    a = link(harness.world, 1)
    driver = harness.driver()
    inbox = await connect(driver, 1, a)
    if harness.kind == "service":
        async with harness.control() as control:
            await control.fault("rate_limited", times=1)
            await control.fault("not_on_whatsapp", "4917000000009")
    else:
        harness.world.messages.set_fault("rate_limited", times=1)
        harness.world.messages.set_fault("not_on_whatsapp", "4917000000009")
    for ref, to in (("1", "4917000000001"), ("2", "4917000000001"), ("3", "4917000000009")):
        await harness.send(driver, 1, ref, to, "x")
    harness.clock.advance(0)
    first, second, third = [await inbox.next() for _ in range(3)]
    assert isinstance(first, SendFailed) and (first.outcome, first.reason) == (
        "refused",
        "rate_limited",
    )
    assert isinstance(second, MessageSent), "the fault was for one send"
    assert isinstance(third, SendFailed) and third.reason == "not_on_whatsapp"


async def test_an_ack_that_never_comes_is_unknown_after_the_drivers_deadline(
    harness: Harness,
) -> None:
    a, b = link(harness.world, 1), link(harness.world, 2)
    harness.world.messages.set_fault("no_ack", number(b), times=1)
    harness.world.timing = dataclasses.replace(TIMING, delivered_delay=100.0)
    driver = harness.driver(send_timeout=5.0)
    inbox_a, inbox_b = await connect(driver, 1, a), await connect(driver, 2, b)
    await harness.send(driver, 1, "lost-ack", number(b), "maybe")
    harness.clock.advance(0)
    await harness.expire(5.0)
    failed = await next_of(inbox_a, SendFailed)
    assert (failed.ref, failed.outcome, failed.reason) == ("lost-ack", "unknown", "timeout")
    assert (await next_of(inbox_b, MessageReceived)).message_id == "lost-ack", (
        "unknown means it may have gone out: here it did"
    )
    assert harness.world.messages.carried["lost-ack"].accepted == 1


async def test_an_answer_after_the_deadline_is_dropped(harness: Harness) -> None:
    """Each send's outcome is reported once: the deadline's, not a late ack too."""
    a = link(harness.world, 1)
    harness.world.timing = dataclasses.replace(TIMING, ack_delay=10.0, delivered_delay=100.0)
    driver = harness.driver(send_timeout=5.0)
    inbox = await connect(driver, 1, a)
    await harness.send(driver, 1, "slow", "4917000000001", "x")
    await harness.expire(5.0)
    assert (await next_of(inbox, SendFailed)).outcome == "unknown"
    harness.clock.advance(10.0)  # the ack comes now
    await harness.settled(driver, 1)
    assert inbox.queue.empty()


async def test_a_resend_with_the_same_ref_is_carried_twice_and_recognisable(
    harness: Harness,
) -> None:
    a, b = link(harness.world, 1), link(harness.world, 2)
    driver = harness.driver()
    inbox_a, inbox_b = await connect(driver, 1, a), await connect(driver, 2, b)
    for _ in range(2):  # e.g. a successor resending what its predecessor had sent
        await harness.send(driver, 1, "once", number(b), "x")
        harness.clock.advance(0)
        assert (await next_of(inbox_a, MessageSent)).message_id == "once"
    got = [await next_of(inbox_b, MessageReceived) for _ in range(2)]
    assert [m.message_id for m in got] == ["once", "once"], "WhatsApp carries it twice"
    record = harness.world.messages.carried["once"]
    assert record.accepted == 2 and len(record.deliveries) == 2


async def test_sending_needs_a_logged_in_connection(harness: Harness) -> None:
    driver = harness.driver()
    with pytest.raises(DriverError):
        await harness.send(driver, 3, "r", "4917000000001", "x")
    inbox = Inbox()
    await driver.start(ConnectSpec(3), inbox)  # a QR round: not logged in
    assert isinstance(await inbox.next(), QrCode)
    await harness.send(driver, 3, "r", "4917000000001", "x")
    harness.clock.advance(0)
    failed = await next_of(inbox, SendFailed)
    assert (failed.outcome, failed.reason) == ("refused", "not_connected")


async def test_a_peer_messages_a_session_online_offline_or_unlinked(harness: Harness) -> None:
    harness.world.messages.peers = set()
    b = link(harness.world, 2)
    driver = harness.driver()
    payload = {"from": "+4917612345678", "text": "from a peer", "push_name": "Ada"}
    assert not await driver.gesture(5, "message", payload), "no linked device, no number"
    assert await driver.gesture(2, "message", payload), "held while the session is away"
    inbox = await connect(driver, 2, b)
    got = await next_of(inbox, MessageReceived)
    assert (got.text, got.push_name, got.sender_phone) == (
        "from a peer",
        "Ada",
        "4917612345678@s.whatsapp.net",
    )
    assert await driver.gesture(2, "message", {**payload, "text": "again"})
    assert (await next_of(inbox, MessageReceived)).text == "again"
    assert not await driver.gesture(2, "message", {**payload, "from": "nobody"})

    await harness.send(driver, 2, "reply", "4917612345678", "a reply")  # the peer exists now
    harness.clock.advance(0)
    assert isinstance(await inbox.next(), MessageSent)
    record = harness.world.messages.carried[got.message_id]
    assert (record.from_session, record.to_session, record.sender) == (None, 2, "4917612345678")


async def test_unlinking_drops_what_was_held(harness: Harness) -> None:
    b = link(harness.world, 2)
    driver = harness.driver()
    assert await driver.gesture(2, "message", {"from": "4917612345678", "text": "x"})
    [record] = harness.world.messages.carried.values()
    assert record.status == "held"
    assert await driver.gesture(2, "logout")
    assert record.status == "dropped" and b not in harness.world.devices


async def test_nothing_is_reported_after_stop(harness: Harness) -> None:
    a = link(harness.world, 1)
    harness.world.timing = dataclasses.replace(TIMING, ack_delay=1.0)
    driver = harness.driver(send_timeout=5.0)
    inbox = await connect(driver, 1, a)
    await harness.send(driver, 1, "pending", "4917000000001", "x")
    await driver.stop(1)
    harness.clock.advance(10.0)
    await harness.expire(5.0)
    assert inbox.queue.empty()


async def test_the_service_answers_peer_messages_and_the_record_on_its_control_line() -> None:
    clock = ManualClock()
    service = SimulatedWhatsAppService(SimulatedWhatsApp(TIMING, clock=clock))
    host, port = await service.start()
    address = f"{host}:{port}"
    b = link(service.world, 2)
    driver = RemoteSimulatedDriver(address)
    try:
        inbox = await connect(driver, 2, b)
        async with ServiceControl(address) as control:
            message_id = await control.peer_message(2, "4917612345678", "hi there", "Ada")
            assert await control.peer_message(9, "4917612345678", "nobody home") is None
            got = await next_of(inbox, MessageReceived)
            assert got.message_id == message_id and got.text == "hi there"
            await control.delays(ack_delay=0, delivered_delay=0, read_delay=-1)
            await driver.send_text(2, "back", "4917612345678", "and back")
            await driver._command(2, "gesture", gesture="-")  # the service has it
            clock.advance(0)
            assert isinstance(await inbox.next(), MessageSent)
            carried = {c.message_id: c for c in await control.carried()}
    finally:
        await driver.aclose()
        await service.aclose()
    assert set(carried) == {got.message_id, "back"}
    assert carried[got.message_id].deliveries[0].session_id == 2
    assert carried["back"].status == "delivered", "read_delay < 0: never read"
    assert carried["back"].text == "", "texts stay in the service"


async def test_no_text_reaches_a_log(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = link(harness.world, 1), link(harness.world, 2)
    driver = harness.driver()
    await connect(driver, 1, a)
    inbox_b = await connect(driver, 2, b)
    await harness.send(driver, 1, "dup", number(b), SECRET)
    await harness.send(driver, 1, "dup", number(b), SECRET)  # logged as a duplicate
    assert not await driver.gesture(2, "message", {"from": "12", "text": SECRET})  # logged
    for _ in range(2):
        event = await next_of(inbox_b, MessageReceived)
        assert SECRET not in repr(event)
    harness.clock.advance(10)
    await harness.settled(driver, 1)
    assert "accepted 2 times" in caplog.text
    assert SECRET not in caplog.text


async def test_a_message_never_acked_is_delivered_again_when_the_device_reconnects() -> None:
    """As WhatsApp does: a client that vanished before acking (its process killed
    with the message still in its socket) gets it again from its next connection;
    one it acked is not repeated."""
    clock = ManualClock()
    service = SimulatedWhatsAppService(SimulatedWhatsApp(TIMING, clock=clock))
    host, port = await service.start()
    address = f"{host}:{port}"
    b = link(service.world, 2)
    try:
        reader, writer = await asyncio.open_connection(host, port)  # a client that never acks
        writer.write(wire.encode("hello", session=2, jid=b, owner="doomed", epoch=1))
        assert wire.decode(await reader.readline(), wire.EVENTS)["t"] == "connected"
        async with ServiceControl(address) as control:
            first = await control.peer_message(2, "4917612345678", "once")
            assert wire.decode(await reader.readline(), wire.EVENTS)["message_id"] == first
            writer.close()  # killed before it acked
            assert await control.wait_idle([2], timeout=5) == set()

            driver = RemoteSimulatedDriver(address)
            inbox = await connect(driver, 2, b)
            again = await next_of(inbox, MessageReceived)
            assert (again.message_id, again.text) == (first, "once")
            await driver._command(2, "gesture", gesture="-")  # its ack has arrived
            await driver.stop(2)
            inbox = await connect(driver, 2, b)
            await driver._command(2, "gesture", gesture="-")
            assert inbox.queue.empty(), "acked: not delivered a third time"
            await driver.aclose()
            [record] = await control.carried()
    finally:
        await service.aclose()
    assert record.accepted == 1
    assert [(d.owner, d.epoch) for d in record.deliveries] == [("doomed", 1), ("sup", 7)]


async def test_in_process_deliveries_are_acked_at_once(harness: Harness) -> None:
    b = link(harness.world, 2)
    driver = harness.driver()
    inbox = await connect(driver, 2, b)
    assert await driver.gesture(2, "message", {"from": "4917612345678", "text": "x"})
    await next_of(inbox, MessageReceived)
    await harness.settled(driver, 2)
    assert harness.world.messages.unacked_count(b) == 0


async def test_a_send_on_a_connection_whatsapp_ended_is_refused_at_once(harness: Harness) -> None:
    a = link(harness.world, 1)
    driver = harness.driver()
    inbox = await connect(driver, 1, a)
    assert await driver.gesture(1, "replace")  # someone else took the device
    await next_of(inbox, Replaced)
    await harness.send(driver, 1, "late", "4917000000001", "x")
    harness.clock.advance(0)
    failed = await next_of(inbox, SendFailed)
    assert (failed.ref, failed.outcome, failed.reason) == ("late", "refused", "not_connected")


async def test_a_send_on_a_kicked_connection_is_refused_at_once() -> None:
    """In process: the runner has not closed a connection a successor kicked yet."""
    clock = ManualClock()
    world = SimulatedWhatsApp(TIMING, clock=clock)
    a = link(world, 1)
    zombie, successor = SimulatedDriver(world), SimulatedDriver(world)
    inbox = await connect(zombie, 1, a)
    await connect(successor, 1, a)
    await next_of(inbox, Replaced)
    await zombie.send_text(1, "late", "4917000000001", "x")
    failed = await next_of(inbox, SendFailed)  # no clock needed: at once
    assert (failed.outcome, failed.reason) == ("refused", "not_connected")
    assert world.messages.carried == {}
