"""The simulated WhatsApp service over loopback TCP, and the driver that talks to it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import pytest

from sessions_app.drivers import wire
from sessions_app.drivers.base import (
    Connected,
    ConnectSpec,
    Disconnected,
    Driver,
    DriverError,
    LoggedOut,
    PairingCode,
    PairSuccess,
    QrCode,
    Replaced,
)
from sessions_app.drivers.simulated import SimulatedTiming, SimulatedWhatsApp
from sessions_app.drivers.simulated_remote import RemoteSimulatedDriver
from sessions_app.drivers.simulated_service import (
    ServiceControl,
    SimulatedWhatsAppService,
    parse_address,
)
from tests.unit.test_simulated_driver import Inbox

pytestmark = pytest.mark.timeout(20)

TIMING = SimulatedTiming(first_qr_ttl=5, next_qr_ttl=5, qr_count=2, pair_delay=0)


@dataclasses.dataclass
class Running:
    service: SimulatedWhatsAppService
    address: str
    control: ServiceControl

    @property
    def world(self) -> SimulatedWhatsApp:
        return self.service.world


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    service = SimulatedWhatsAppService(SimulatedWhatsApp(TIMING))
    host, port = await service.start()
    address = f"{host}:{port}"
    async with ServiceControl(address) as control:
        yield Running(service, address, control)
    await service.aclose()


async def pair(driver: RemoteSimulatedDriver, control: ServiceControl, session_id: int) -> str:
    inbox = Inbox()
    await driver.start(ConnectSpec(session_id, owner="pairer", epoch=1), inbox)
    assert isinstance(await inbox.next(), QrCode)
    assert await control.phone(session_id, "scan")
    paired = await inbox.next()
    assert isinstance(paired, PairSuccess)
    assert isinstance(await inbox.next(), Connected)
    await driver.stop(session_id)
    return paired.jid


def test_it_implements_the_driver_protocol() -> None:
    assert isinstance(RemoteSimulatedDriver("127.0.0.1:1"), Driver)


@pytest.mark.parametrize("bad", ["", "7480", "host:", ":7480", "host:port"])
def test_a_bad_address_is_refused_clearly(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(bad)


async def test_a_qr_round_over_tcp_pairs_and_connects(running: Running) -> None:
    driver, inbox = RemoteSimulatedDriver(running.address), Inbox()
    await driver.start(ConnectSpec(1, owner="sup-a", epoch=3), inbox)
    qr = await inbox.next()
    assert isinstance(qr, QrCode) and qr.valid_for == 5
    assert await running.control.phone(1, "scan")
    assert isinstance(await inbox.next(), PairSuccess)
    assert isinstance(await inbox.next(), Connected)
    assert await running.control.wait_connected([1], timeout=2) == set()
    stats = await running.control.stats()
    assert stats.connected == {1} and stats.live == {1: 1} and stats.qr_issued == {1: 1}
    assert stats.connected_at[1] <= time.time()
    assert await running.control.wait_idle([1], timeout=0.05) == {1}
    await driver.aclose()
    assert await running.control.wait_connected([1], timeout=0.05) == {1}
    assert await running.control.wait_idle([1], timeout=1) == set()


async def test_a_second_connection_kicks_the_first_and_is_recorded_with_owners(
    running: Running,
) -> None:
    jid = await pair(RemoteSimulatedDriver(running.address), running.control, 2)
    zombie, successor = (
        RemoteSimulatedDriver(running.address),
        RemoteSimulatedDriver(running.address),
    )
    old, new = Inbox(), Inbox()
    await zombie.start(ConnectSpec(2, jid=jid, owner="zombie", epoch=4), old)
    assert isinstance(await old.next(), Connected)
    assert await running.control.wait_connected([2], timeout=0.05, exclude_owner="zombie") == {2}
    await successor.start(ConnectSpec(2, jid=jid, owner="successor", epoch=5), new)
    assert isinstance(await new.next(), Connected)
    assert await running.control.wait_connected([2], timeout=1, exclude_owner="zombie") == set()
    assert isinstance(await old.next(), Replaced)
    [overlap] = (await running.control.stats()).overlaps
    assert (overlap.old_owner, overlap.old_epoch) == ("zombie", 4)
    assert (overlap.new_owner, overlap.new_epoch) == ("successor", 5)
    await zombie.stop(2)
    await successor.stop(2)
    assert old.queue.empty(), "a kicked connection reports its reason once, then nothing"


async def test_stop_then_start_at_once_never_overlaps(running: Running) -> None:
    jid = await pair(RemoteSimulatedDriver(running.address), running.control, 3)
    driver = RemoteSimulatedDriver(running.address)
    for epoch in range(30):
        inbox = Inbox()
        await driver.start(ConnectSpec(3, jid=jid, owner="flip", epoch=epoch), inbox)
        assert isinstance(await inbox.next(), Connected)
        await driver.stop(3)
        assert running.world.live[3] == 0, "stop returns once WhatsApp let go"
    stats = await running.control.stats()
    assert stats.overlaps == [] and stats.max_live[3] == 1


async def test_waiting_for_an_owner_to_let_go_reports_when_it_did(running: Running) -> None:
    """What the chaos test asks about a partitioned supervisor: are all its
    connections closed, and since when (the others' are not its)."""
    mine, theirs = RemoteSimulatedDriver(running.address), RemoteSimulatedDriver(running.address)
    for sid, driver, owner in ((5, mine, "island"), (6, mine, "island"), (7, theirs, "other")):
        inbox = Inbox()
        await driver.start(ConnectSpec(sid, owner=owner, epoch=1), inbox)
        assert isinstance(await inbox.next(), QrCode)
    assert await running.control.wait_owner_idle("island", 0.0) == (2, 0.0)
    waiting = asyncio.create_task(running.control.wait_owner_idle("island", 5.0))
    before = time.time()
    await mine.aclose()
    live, ended_at = await waiting
    assert live == 0 and before <= ended_at <= time.time()
    assert running.world.live[7] == 1
    await theirs.aclose()


async def test_a_connection_the_service_drops_is_reported_as_disconnected(
    running: Running,
) -> None:
    driver, inbox = RemoteSimulatedDriver(running.address), Inbox()
    await driver.start(ConnectSpec(4), inbox)
    assert isinstance(await inbox.next(), QrCode)
    await running.service.aclose()  # WhatsApp goes away
    event = await inbox.next()
    assert isinstance(event, Disconnected) and not event.will_retry
    await driver.aclose()


async def test_no_service_fails_the_start(running: Running) -> None:
    await running.service.aclose()
    with pytest.raises(ConnectionError):
        await RemoteSimulatedDriver(running.address).start(ConnectSpec(5), Inbox())


async def test_gestures_and_pairing_code_through_the_driver(running: Running) -> None:
    driver, inbox = RemoteSimulatedDriver(running.address), Inbox()
    await driver.start(ConnectSpec(6), inbox)
    assert isinstance(await inbox.next(), QrCode)
    await driver.request_pairing_code(6, "+4915112345678")
    assert isinstance(await inbox.next(), PairingCode)
    assert await driver.gesture(6, "scan")
    assert isinstance(await inbox.next(), PairSuccess)
    assert isinstance(await inbox.next(), Connected)
    with pytest.raises(DriverError):
        await driver.request_pairing_code(6, "+4915112345678")
    assert not await driver.gesture(6, "scan"), "nothing to scan once linked"
    assert not await driver.gesture(99, "scan"), "no connection, no gesture"
    assert await driver.gesture(6, "logout")
    assert isinstance(await inbox.next(), LoggedOut)
    await driver.aclose()


async def test_logout_unlinks_the_device_with_or_without_a_connection(running: Running) -> None:
    driver = RemoteSimulatedDriver(running.address)
    for connected in (True, False):
        jid = await pair(driver, running.control, 7)
        if connected:
            await driver.start(ConnectSpec(7, jid=jid), Inbox())
        await driver.logout(7, jid)
        inbox = Inbox()
        await driver.start(ConnectSpec(7, jid=jid), inbox)
        assert isinstance(await inbox.next(), LoggedOut)
        await driver.stop(7)


async def test_garbage_is_dropped_and_logged(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(running.service.host, running.service.port)
    writer.write(b"not json\n")
    assert await reader.read() == b"", "the service hangs up"
    writer.close()
    assert "dropped a client: not JSON" in caplog.text


async def test_a_client_that_leaves_before_its_first_message_is_no_warning(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver's connect cancelled mid-way (a supervisor stopping while it takes
    sessions over) hangs up before its hello: nothing went wrong on the wire."""
    caplog.set_level(logging.DEBUG, logger="sessions_app.drivers.simulated_service")
    handled = asyncio.Event()  # the service logged what it made of that client

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "client" in record.getMessage():
                handled.set()

    service_logger = logging.getLogger("sessions_app.drivers.simulated_service")
    seen = Seen()
    service_logger.addHandler(seen)
    try:
        _, writer = await asyncio.open_connection(running.service.host, running.service.port)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        service_logger.removeHandler(seen)
    assert "left before its first message" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_half_a_line_then_a_hang_up_is_still_a_protocol_error(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(running.service.host, running.service.port)
    writer.write(b'{"v": 1, "t": "hel')
    writer.write_eof()
    assert await reader.read() == b"", "the service hangs up"
    writer.close()
    assert "dropped a client: not JSON" in caplog.text


async def test_a_command_out_of_place_is_a_protocol_error(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    reader, writer = await asyncio.open_connection(running.service.host, running.service.port)
    writer.write(wire.encode("hello", session=8, jid="", owner="x", epoch=1))
    writer.write(wire.encode("stats"))
    while await reader.readline():
        pass
    writer.close()
    assert "'stats' is not a device command" in caplog.text
    assert (await running.control.stats()).live == {8: 0}


async def test_a_silent_client_is_dropped_and_a_pinging_one_kept() -> None:
    service = SimulatedWhatsAppService(SimulatedWhatsApp(TIMING), client_timeout=0.3)
    host, port = await service.start()
    address = f"{host}:{port}"
    pinging, silent = RemoteSimulatedDriver(address, 0.05), RemoteSimulatedDriver(address, 60)
    alive, frozen = Inbox(), Inbox()
    await pinging.start(ConnectSpec(1), alive)
    await silent.start(ConnectSpec(2), frozen)
    assert isinstance(await frozen.next(), QrCode)
    event = await frozen.next()  # after client_timeout without a ping
    assert isinstance(event, Disconnected)
    assert service.world.live[2] == 0
    assert service.world.live[1] == 1, "pings keep a connection"
    await pinging.aclose()
    await silent.aclose()
    await service.aclose()


async def test_a_phone_logout_while_no_connection_is_open_unlinks_the_device(
    running: Running,
) -> None:
    """The service keeps WhatsApp's rule too: the phone's logout during a backoff wait
    unlinks the device, and the next connection is refused as logged out."""
    driver = RemoteSimulatedDriver(running.address)
    jid = await pair(driver, running.control, 8)
    assert await driver.gesture(8, "logout")
    assert jid not in running.world.devices
    inbox = Inbox()
    await driver.start(ConnectSpec(8, jid=jid), inbox)
    assert isinstance(await inbox.next(), LoggedOut)
    await driver.stop(8)
    assert not await driver.gesture(8, "logout"), "nothing left to log out"
    await driver.aclose()


async def test_a_cancelled_control_call_leaves_no_answer_for_the_next(running: Running) -> None:
    """The chaos test's traffic is cancelled while a peer's message is under way:
    the next command (the count of what was carried) must read its own answer,
    not the cancelled one's (it read "done" for "carried": KeyError 'messages')."""
    waiting = asyncio.create_task(running.control.wait_connected([99], timeout=0.3))
    await asyncio.sleep(0)  # the command is on the line; its answer comes in 0.3 s
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    stats = await running.control.stats()
    assert stats.qr_issued == {} and stats.overlaps == []
