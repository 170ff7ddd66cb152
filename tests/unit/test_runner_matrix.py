"""Every observed state × every admin action, on the real supervisor and runner.

Issue 8 fault 3: a new QR code or a pairing code while connected, pairing or
connecting crashed the runner ("supervisor error; handing over"). Here each of the
twelve states is reached on the simulated WhatsApp (the driver scripted only where
WhatsApp's side has no gesture for it), then each action is applied twice over:
through ``intents`` (which may refuse, the web side's answer) and as the raw
intent a web process with a stale read of the row would have written, which the
runner must handle on its own. Every pair has a defined outcome; no runner fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone

from sessions_app import doorbell, intents
from sessions_app.drivers.base import (
    Banned,
    ConnectError,
    ConnectSpec,
    Disconnected,
    EventSink,
    KeepAliveTimeout,
    PairSuccess,
    QrTimeout,
)
from sessions_app.drivers.simulated import SimulatedDriver, SimulatedTiming, SimulatedWhatsApp
from sessions_app.models import SessionEvent, WaSession
from sessions_app.states import State
from sessions_app.supervisor import Supervisor
from tests.unit.helpers import Snapshot, settled, state_is, until
from tests.unit.test_supervisor import FAST, create, gesture, get, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

#: Backoffs long enough that `error` and `disconnected` hold while the test acts.
CONFIG = dataclasses.replace(FAST, backoff_base=30, backoff_cap=60)

S = State
ACTIONS = ["start", "stop", "new_qr", "pair_phone", "logout", "delete"]
PHONE = "+4915112345678"


class Scripted(SimulatedDriver):
    """The simulated driver, able to leave a new connection hanging in `connecting`."""

    hold = False

    async def start(self, spec: ConnectSpec, on_event: EventSink) -> None:
        if self.hold:
            self.calls.append(("start", spec.session_id))
            return  # opened as far as the runner knows; WhatsApp never answers
        await super().start(spec, on_event)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a session must end as: a state (None: deleted), with no owner left
    (``settled``), after at least one write of the runner (``writes``), or
    refused by the web side with ``refused`` (nothing written at all)."""

    state: str | None = None
    settled: bool = False
    writes: bool = True
    refused: str = ""


RUNNING_NOW = {S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED}
LINKED = set(State) - {S.CONNECTING, S.QR_REQUIRED, S.LOGGED_OUT, S.QR_TIMEOUT}
#: Where each state's session is when nothing changes it (its owner's wait).
STAYS = {
    S.STOPPED: Outcome("stopped", settled=True),
    S.REPLACED: Outcome("replaced", settled=True),
    S.BANNED: Outcome("banned", settled=True),
    S.LOGGED_OUT: Outcome("logged_out", settled=True),
    S.QR_TIMEOUT: Outcome("qr_timeout", settled=True),
}


def expected(state: State, action: str, raw: bool) -> Outcome:
    """The defined outcome of ``action`` on a session in ``state``."""
    if action == "delete":
        return Outcome(None)
    if action == "stop":
        return Outcome("stopped", settled=True, writes=state is not S.STOPPED)
    if action == "logout":
        return Outcome("logged_out", settled=True, writes=state is not S.LOGGED_OUT)
    if action == "start":
        if state in RUNNING_NOW:
            # Served where it was made: nothing restarts (a round's code stays).
            return Outcome(state) if raw else Outcome(refused="already_running")
        if state is S.BANNED:
            # Nothing to do until the ban runs out (no owner is needed); the session
            # then resumes by itself, serving the request.
            return Outcome("banned", settled=True, writes=False)
        if state in LINKED:
            return Outcome("connected")
        # Unlinked: the page asks for a new QR round. A raw start has nothing to
        # resume and needs no owner; the next connection or release serves it.
        return dataclasses.replace(STAYS[state], writes=False) if raw else Outcome("qr_required")
    # new QR code / pairing code
    if state in LINKED:
        if not raw:
            return Outcome(refused="linked")
        # Dropped by the runner, with a reason; whatever the state waited for goes on.
        return {S.STOPPED: Outcome("connected")}.get(state) or STAYS.get(state, Outcome(state))
    return Outcome("qr_required")


@sync_to_async
def write_raw(session_id: int, action: str) -> None:
    """What ``intents`` would write without its refusals (a stale read), and the ring."""
    run: dict[str, Any] = {"desired_state": "running"}
    changes: dict[str, Any] = {
        "start": run | {"connect_request": F("connect_request") + 1},
        "stop": {"desired_state": "stopped"},
        "new_qr": run | {"pair_request": F("pair_request") + 1, "pair_phone": ""},
        "pair_phone": run | {"pair_request": F("pair_request") + 1, "pair_phone": PHONE},
        "logout": {"desired_state": "logged_out"},
        "delete": {"desired_state": "deleted"},
    }[action]
    WaSession.objects.filter(pk=session_id).update(**changes)
    doorbell.ring_supervisors_sync(session_id, f"raw {action}")


def via_intents(session: WaSession, action: str) -> Awaitable[None]:
    func: Callable[..., None] = {
        "start": intents.start,
        "stop": intents.stop,
        "new_qr": intents.new_qr,
        "logout": intents.logout,
        "delete": intents.delete,
    }.get(action, intents.pair_by_phone)
    args = (session, PHONE, "ada") if action == "pair_phone" else (session, "ada")
    return sync_to_async(func)(*args)


@sync_to_async
def row_values(session_id: int) -> dict[str, Any]:
    """The row but its lease expiry, which the owner's renewals move on their own."""
    values = WaSession.objects.filter(pk=session_id).values().get()
    values.pop("lease_expires_at")
    return values


async def put_in(
    state: State, world: SimulatedWhatsApp, driver: Scripted, sup: Supervisor
) -> WaSession:
    """A session in ``state``, reached the way it happens (scripted where needed)."""
    session = await create(f"in-{state.value}", "ada")
    pk = session.pk

    def emit(event: Any) -> None:
        world.connection(pk).emit(event)  # type: ignore[union-attr]

    if state is S.CONNECTING:
        driver.hold = True
        await until(pk, state_is("connecting"))
        await until(pk, lambda _: ("start", pk) in driver.calls)
        driver.hold = False
        return await get(pk=pk)
    await until(pk, state_is("qr_required"))
    if state is S.QR_REQUIRED:
        return await get(pk=pk)
    if state is S.QR_TIMEOUT:
        emit(QrTimeout(pk))
        await until(pk, settled("qr_timeout"))
        return await get(pk=pk)
    if state is S.PAIRING:  # the phone scanned; the connection is finishing
        jid = f"{pk:011d}@s.whatsapp.net"
        world.devices[jid] = pk
        emit(PairSuccess(pk, jid=jid, push_name="Simulated phone"))
        await until(pk, state_is("pairing"))
        return await get(pk=pk)
    await gesture(session, "scan", "test")
    await until(pk, state_is("connected"))
    scripted: dict[State, Callable[[], Any]] = {
        S.DEGRADED: lambda: emit(KeepAliveTimeout(pk)),
        S.DISCONNECTED: lambda: emit(Disconnected(pk, "network", will_retry=True)),
        S.ERROR: lambda: emit(ConnectError(pk, "stream error")),
        S.BANNED: lambda: emit(Banned(pk, until=timezone.now() + dt.timedelta(hours=1))),
    }
    gestures = {S.LOGGED_OUT: "logout", S.REPLACED: "replace"}
    if state in scripted:
        scripted[state]()
    elif state in gestures:
        await gesture(session, gestures[state], "test")
    elif state is S.STOPPED:
        await stop(await get(pk=pk), "ada")
    if state is not S.CONNECTED:
        await until(pk, state_is(state.value))
    if state in STAYS:
        await until(pk, settled(state.value))
    return await get(pk=pk)


def reached(outcome: Outcome, before: int) -> Callable[[Snapshot], bool]:
    def check(snap: Snapshot) -> bool:
        if outcome.state is None:
            return snap is None or snap == {}
        return (
            snap is not None
            and snap["state"] == outcome.state
            and (not outcome.settled or snap["lease_owner"] == "")
            and (not outcome.writes or snap["version"] > before)
        )

    return check


@pytest.mark.parametrize("raw", [False, True], ids=["intents", "stale-read"])
@pytest.mark.parametrize("action", ACTIONS)
async def test_every_state_and_action_has_a_defined_outcome(
    action: str, raw: bool, caplog: pytest.LogCaptureFixture
) -> None:
    world = SimulatedWhatsApp(
        SimulatedTiming(first_qr_ttl=60, next_qr_ttl=20, qr_count=2, pair_delay=0.01)
    )
    driver = Scripted(world)
    sup = Supervisor(driver, config=CONFIG)
    task = asyncio.create_task(sup.run())
    await sup.ready.wait()
    try:
        sessions = {state: await put_in(state, world, driver, sup) for state in State}
        for state, session in sessions.items():
            before = await row_values(session.pk)
            outcome = expected(state, action, raw)
            if raw:
                await write_raw(session.pk, action)
            elif outcome.refused:
                with pytest.raises(intents.IntentRefused) as refused:
                    await via_intents(session, action)
                assert refused.value.code == outcome.refused, state
                assert await row_values(session.pk) == before, f"{state}: refused, yet written"
                continue
            else:
                await via_intents(session, action)
            try:
                await until(session.pk, reached(outcome, before["version"]))
            except AssertionError as exc:
                raise AssertionError(f"{state} + {action}: expected {outcome}; {exc}") from None
            if outcome.state is None:
                continue
            row = await row_values(session.pk)
            if outcome.writes and outcome.state in (
                "stopped",
                "logged_out",
                "replaced",
                "qr_timeout",
            ):
                # A settled session has served or dropped every request made before.
                assert row["connect_served"] == row["connect_request"], state
            if row["jid"] and action in ("new_qr", "pair_phone"):
                assert row["pair_served"] == row["pair_request"], f"{state}: re-paired"
                assert row["jid"] == before["jid"], state
        assert all(world.max_live[s.pk] <= 1 for s in sessions.values())
    finally:
        sup.stop()
        await task
    crashes = [r for r in caplog.records if r.getMessage() == "session runner failed"]
    assert not crashes, crashes[0].exc_text
    assert not await sync_to_async(
        SessionEvent.objects.filter(message__contains="supervisor error").exists
    )()
