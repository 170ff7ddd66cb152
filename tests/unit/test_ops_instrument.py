"""What the counting driver makes of event sequences the simulated WhatsApp does not
produce: whatsmeow's own reconnect after a network drop (``will_retry``), and a QR
round that a connection error ends."""

from __future__ import annotations

from prometheus_client import REGISTRY

from ops.instrument import instrument
from sessions_app.drivers.base import (
    Connected,
    ConnectError,
    ConnectSpec,
    Disconnected,
    DriverEvent,
    EventSink,
)


class Inner:
    """A driver that only keeps each session's event sink, for the test to emit on."""

    def __init__(self) -> None:
        self.sinks: dict[int, EventSink] = {}

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        self.sinks[spec.session_id] = on_event

    async def stop(self, session_id: int) -> None:
        self.sinks.pop(session_id, None)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_network_drop_the_driver_recovers_from_is_one_disconnect_and_one_reconnect() -> (
    None
):
    inner, seen = Inner(), list[DriverEvent]()
    driver = instrument(inner)  # type: ignore[arg-type]
    await driver.start(ConnectSpec(session_id=7, jid="1@s.whatsapp.net"), seen.append)
    before = {
        name: counted(name, cause="network")
        for name in ("waconnect_disconnects_total", "waconnect_reconnects_total")
    }
    emit = inner.sinks[7]
    emit(Connected(7))
    emit(Disconnected(7, reason="network", will_retry=True))
    emit(Connected(7))  # whatsmeow reconnected by itself: no new start()
    emit(Connected(7))  # a second Connected is not a second reconnect
    assert counted("waconnect_disconnects_total", cause="network") == (
        before["waconnect_disconnects_total"] + 1
    )
    assert counted("waconnect_reconnects_total", cause="network") == (
        before["waconnect_reconnects_total"] + 1
    )
    assert len(seen) == 4  # every event still reaches the supervisor


async def test_a_qr_round_a_connection_error_ends_is_failed() -> None:
    inner = Inner()
    driver = instrument(inner)  # type: ignore[arg-type]
    ended = {
        outcome: counted("waconnect_qr_rounds_ended_total", outcome=outcome)
        for outcome in ("failed", "cancelled")
    }
    started = counted("waconnect_qr_rounds_started_total")
    await driver.start(ConnectSpec(session_id=8), lambda event: None)  # no jid: pairing
    inner.sinks[8](ConnectError(8, "websocket closed"))
    await driver.stop(8)  # the round ended already: not also cancelled
    assert counted("waconnect_qr_rounds_started_total") == started + 1
    assert counted("waconnect_qr_rounds_ended_total", outcome="failed") == ended["failed"] + 1
    assert counted("waconnect_qr_rounds_ended_total", outcome="cancelled") == ended["cancelled"]
