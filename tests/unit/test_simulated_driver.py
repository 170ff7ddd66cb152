"""The simulated WhatsApp keeps WhatsApp's rules: cadence, one live connection per device."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import pytest

from sessions_app.drivers.base import (
    Connected,
    ConnectSpec,
    Driver,
    DriverError,
    DriverEvent,
    LoggedOut,
    PairingCode,
    PairSuccess,
    QrCode,
    QrTimeout,
    Replaced,
)
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.drivers.simulated_devices import DeviceFileError

pytestmark = pytest.mark.timeout(10)

TIMING = SimulatedTiming(first_qr_ttl=0.2, next_qr_ttl=0.05, qr_count=4, pair_delay=0)


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[DriverEvent] = asyncio.Queue()

    def __call__(self, event: DriverEvent) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> DriverEvent:
        return await asyncio.wait_for(self.queue.get(), 2)


def test_it_implements_the_driver_protocol() -> None:
    assert isinstance(SimulatedDriver(), Driver)


async def test_a_round_issues_the_cadence_then_times_out() -> None:
    driver, inbox = SimulatedDriver(SimulatedWhatsApp(TIMING)), Inbox()
    await driver.start(ConnectSpec(1), inbox)
    codes = [await inbox.next() for _ in range(4)]
    assert all(isinstance(c, QrCode) for c in codes)
    assert [c.valid_for for c in codes] == [0.2, 0.05, 0.05, 0.05]
    assert len({c.code for c in codes}) == 4
    assert isinstance(await inbox.next(), QrTimeout)
    assert "code=<hidden>" in repr(codes[0]) and codes[0].code not in repr(codes[0])


async def test_scan_links_a_device_that_can_be_resumed() -> None:
    world = SimulatedWhatsApp(TIMING)
    driver, inbox = SimulatedDriver(world), Inbox()
    await driver.start(ConnectSpec(7), inbox)
    assert isinstance(await inbox.next(), QrCode)
    await driver.request_pairing_code(7, "+4915112345678")
    assert isinstance(await inbox.next(), PairingCode)
    assert await driver.gesture(7, "scan")
    paired = await inbox.next()
    assert isinstance(paired, PairSuccess)
    assert isinstance(await inbox.next(), Connected)
    await driver.stop(7)
    assert world.live[7] == 0

    resumed = Inbox()
    await driver.start(ConnectSpec(7, jid=paired.jid), resumed)
    assert isinstance(await resumed.next(), Connected)
    with pytest.raises(DriverError):
        await driver.request_pairing_code(7, "+4915112345678")


async def test_a_second_connection_of_a_device_kicks_the_first() -> None:
    world = SimulatedWhatsApp(TIMING)
    world.devices["1@s.whatsapp.net"] = 3
    one, two = SimulatedDriver(world), SimulatedDriver(world)
    first, second = Inbox(), Inbox()
    await one.start(ConnectSpec(3, jid="1@s.whatsapp.net", owner="a", epoch=1), first)
    assert isinstance(await first.next(), Connected)
    await two.start(ConnectSpec(3, jid="1@s.whatsapp.net", owner="b", epoch=2), second)
    assert isinstance(await first.next(), Replaced)
    assert isinstance(await second.next(), Connected)
    [overlap] = world.overlaps
    assert (overlap.session_id, overlap.jid) == (3, "1@s.whatsapp.net")
    assert (overlap.old_owner, overlap.old_epoch, overlap.new_owner, overlap.new_epoch) == (
        "a",
        1,
        "b",
        2,
    )
    assert world.max_live[3] == 2
    assert world.live[3] == 1, "the kicked connection is gone on WhatsApp's side"
    assert world.connected_sessions() == {3}


async def test_the_phone_scans_by_itself_when_asked_to() -> None:
    world = SimulatedWhatsApp(dataclasses.replace(TIMING, auto_scan=0.01))
    driver, inbox = SimulatedDriver(world), Inbox()
    await driver.start(ConnectSpec(8), inbox)
    assert isinstance(await inbox.next(), QrCode)
    assert isinstance(await inbox.next(), PairSuccess)
    assert isinstance(await inbox.next(), Connected)
    assert await world.until_connected([8], timeout=1) == set()
    await driver.stop(8)
    assert await world.until_connected([8], timeout=0.01) == {8}


async def test_an_unknown_device_is_logged_out() -> None:
    driver, inbox = SimulatedDriver(SimulatedWhatsApp(TIMING)), Inbox()
    await driver.start(ConnectSpec(4, jid="9@s.whatsapp.net"), inbox)
    assert isinstance(await inbox.next(), LoggedOut)


async def test_starting_twice_is_refused_loudly() -> None:
    driver = SimulatedDriver(SimulatedWhatsApp(TIMING))
    await driver.start(ConnectSpec(5), Inbox())
    with pytest.raises(ConnectionError, match="already has a connection"):
        await driver.start(ConnectSpec(5), Inbox())
    await driver.aclose()
    assert driver.calls[-1] == ("stop", 5)


async def pair(driver: SimulatedDriver, session_id: int) -> str:
    """Link a device for ``session_id`` and close the connection; return its JID."""
    inbox = Inbox()
    await driver.start(ConnectSpec(session_id), inbox)
    assert isinstance(await inbox.next(), QrCode)
    assert await driver.gesture(session_id, "scan")
    paired = await inbox.next()
    assert isinstance(paired, PairSuccess)
    assert isinstance(await inbox.next(), Connected)
    await driver.stop(session_id)
    return paired.jid


async def test_a_phone_logout_while_no_connection_is_open_unlinks_the_device() -> None:
    """As on WhatsApp: the phone removes the device during a backoff wait, and the
    next connection is refused as logged out."""
    world = SimulatedWhatsApp(TIMING)
    driver = SimulatedDriver(world)
    jid = await pair(driver, 9)
    other = await pair(driver, 10)
    assert await driver.gesture(9, "logout"), "the phone's logout is applied"
    assert jid not in world.devices
    assert world.devices == {other: 10}, "only that session's device goes"
    inbox = Inbox()
    await driver.start(ConnectSpec(9, jid=jid), inbox)
    assert isinstance(await inbox.next(), LoggedOut)
    assert not await driver.gesture(11, "logout"), "nothing linked, nothing to log out"
    assert not await driver.gesture(10, "disconnect"), "other gestures need a connection"


async def test_linked_devices_outlive_the_process_in_the_state_file(tmp_path: Path) -> None:
    """A new world on the same file (a restarted server) resumes the linked device."""
    state = tmp_path / "data" / "simulated-whatsapp.json"
    first = SimulatedWhatsApp(TIMING, state_file=state)
    jid = await pair(SimulatedDriver(first), 12)
    forgotten = await pair(SimulatedDriver(first), 13)
    first.forget(forgotten)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert [p.name for p in state.parent.iterdir()] == [state.name], "no temporary file left"

    restarted = SimulatedWhatsApp(TIMING, state_file=state)
    assert restarted.devices == {jid: 12}
    driver, inbox = SimulatedDriver(restarted), Inbox()
    await driver.start(ConnectSpec(12, jid=jid), inbox)
    assert isinstance(await inbox.next(), Connected)
    await driver.logout(12, jid)
    assert SimulatedWhatsApp(TIMING, state_file=state).devices == {}


def test_a_state_file_it_did_not_write_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "simulated-whatsapp.json"
    assert SimulatedWhatsApp(TIMING, state_file=state).devices == {}, "none yet: empty"
    for text in ("not json", '{"version": 9, "devices": {}}', '{"version": 1}', "[]"):
        state.write_text(text)
        with pytest.raises(DeviceFileError, match=r"simulated-whatsapp\.json"):
            SimulatedWhatsApp(TIMING, state_file=state)


async def test_a_linked_devices_number_is_a_phone_number_others_can_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A number never starts with 0 (country codes do not): one in ten did, and other
    sessions' messages to it were refused as not a phone number (flaky tests)."""
    from messaging.recipients import recipient_jid
    from sessions_app.drivers import simulated

    monkeypatch.setattr(simulated.secrets, "randbelow", lambda bound: 0)
    jid = await pair(SimulatedDriver(SimulatedWhatsApp(timing=TIMING)), 3)
    number = jid.split("@")[0]
    assert recipient_jid(number) == jid
