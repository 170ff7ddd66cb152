"""The runner's way from a claim to WhatsApp's first answer keeps out of its own way:
the push of ``connecting`` overlaps the connection's opening, and the message pump
makes no database call while a connection opens (issue 14: create → QR)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from messaging.pump import MessagePump
from sessions_app import doorbell
from sessions_app.drivers.base import ConnectSpec, DriverEvent, EventSink, QrCode
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedWhatsApp
from tests.unit.helpers import state_is, until
from tests.unit.test_supervisor import create, running_driver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


class CodeWatchingDriver(SimulatedDriver):
    """The simulated driver, telling when WhatsApp's first QR code reached the runner."""

    def __init__(self, world: SimulatedWhatsApp) -> None:
        super().__init__(world)
        self.code_delivered = asyncio.Event()

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        def sink(event: DriverEvent) -> None:
            if isinstance(event, QrCode):
                self.code_delivered.set()
            on_event(event)

        await super().start(spec, sink)


async def test_connecting_is_pushed_while_the_connection_opens_and_before_the_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = CodeWatchingDriver(SimulatedWhatsApp())
    pushed: list[str] = []
    overlapped: list[bool] = []
    publish = doorbell.publish

    async def slow_publish(snapshot: dict[str, Any], row: dict[str, Any] | None) -> None:
        if snapshot["state"] == "connecting":
            # A push that takes until the code is here: it can only end if the
            # connection was opened without waiting for it.
            try:
                await asyncio.wait_for(driver.code_delivered.wait(), 5)
            except TimeoutError:
                overlapped.append(False)
            else:
                overlapped.append(True)
        pushed.append(snapshot["state"])
        await publish(snapshot, row)

    monkeypatch.setattr(doorbell, "publish", slow_publish)
    async with running_driver(driver):
        session = await create("overlap", "ada")
        await until(session.pk, state_is("qr_required"), timeout=15)
    assert overlapped == [True], "the connection opened while connecting was being pushed"
    assert pushed[:2] == ["connecting", "qr_required"], "the code's snapshot comes after"


async def test_the_step_that_opens_a_connection_tells_the_pump_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    told: list[tuple[bool, bool, bool]] = []
    settled = MessagePump.settled

    def recording(
        self: MessagePump, connected: bool, *, connecting: bool = False, awaiting_scan: bool = False
    ) -> None:
        told.append((connected, connecting, awaiting_scan))
        settled(self, connected, connecting=connecting, awaiting_scan=awaiting_scan)

    monkeypatch.setattr(MessagePump, "settled", recording)
    async with running_driver(SimulatedDriver(SimulatedWhatsApp())):
        session = await create("told", "ada")
        await until(session.pk, state_is("qr_required"))
    assert told[:2] == [(False, True, False), (False, False, True)], (
        "first the step that opened the connection, then the one that showed the code"
    )
