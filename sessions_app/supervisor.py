"""The connection supervisor: the only code that opens WhatsApp connections.

One asyncio component, used the same way inside ``runserver`` and alone in
``manage.py run_supervisor``. It claims the sessions that need an owner (a lease
with a fencing number), runs one :class:`SessionRunner` per owned session, renews
all its leases in one statement, fences itself when it cannot renew in time,
listens for intent changes on the channel layer (the doorbell) and reconciles
with the database periodically (the safety net).

Side tasks are named; if one dies, the supervisor stops rather than limp along.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer
from django.db import DatabaseError, connections
from django.utils import timezone

from messaging import pump
from messaging.conf import messaging_config
from messaging.live import RING_REASON
from messaging.pump import MessagePump
from ops import metrics
from sessions_app import doorbell, leases, snapshots
from sessions_app.conf import SupervisorConfig, supervisor_config
from sessions_app.dbthread import lease_db, supervisor_db
from sessions_app.drivers.base import (
    ConnectError,
    ConnectSpec,
    Driver,
    DriverError,
    DriverEvent,
    QrCode,
)
from sessions_app.event_mapping import epoch, map_event, round_ended
from sessions_app.leases import EventRecord, Lease
from sessions_app.models import PhoneAction, SessionEvent, WaSession
from sessions_app.policy import (
    DROPS_REQUESTS,
    SETTLED_STATES,
    Action,
    Backoff,
    ConnectCeiling,
    Round,
    SessionView,
    fair_share,
    pick_to_shed,
    plan,
    round_status,
    shed_count,
)
from sessions_app.states import LIVE_STATES, Desired, State, Trigger, is_allowed, transition

logger = logging.getLogger(__name__)


def make_owner_id() -> str:
    """Unique per supervisor process start: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LeaseLost(Exception):
    """A fenced write matched no row: someone else owns the session now (or it is gone)."""


class _Exit(Exception):
    """The runner has nothing more to do."""


_QR_CLEARED = leases.QR_CLEARED


@supervisor_db
def _db_write(
    lease: Lease,
    fields: dict[str, Any],
    event: EventRecord | None,
    row: WaSession | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Fenced write; on success the snapshot and list row to publish.

    With ``row`` (the session as just read by this owner, the only writer of
    observed columns) the snapshot is built from it plus ``fields`` instead of
    reading the row again; the event log is sent only when it changed. This
    keeps a QR rotation to two statements on the path to the browser.
    """
    if not leases.write(lease, fields, event):
        return None
    session = row if row is not None else leases.load(lease.session_id)
    if session is None:
        return None
    if row is not None:
        for name, value in fields.items():
            if not hasattr(value, "resolve_expression"):  # SQL expressions stay unread
                setattr(row, name, value)
        row.version += 1
    with_events = event is not None or row is None
    return snapshots.snapshot(session, with_events=with_events), snapshots.row(session)


@supervisor_db
def _db_release(
    lease: Lease, fields: dict[str, Any], event: EventRecord | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if not leases.release(lease, fields, event):
        return None
    session = leases.load(lease.session_id)
    if session is None:
        return None
    return snapshots.snapshot(session), snapshots.row(session)


@supervisor_db
def _db_hand_over(
    owner: str, session_ids: list[int], why: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Hand sessions over; the snapshots and list rows to publish."""
    released = leases.hand_over(owner, session_ids, why)
    sessions = WaSession.objects.filter(pk__in=released)
    return [(snapshots.snapshot(s, with_events=False), snapshots.row(s)) for s in sessions]


_db_load = supervisor_db(leases.load)
_db_claim = supervisor_db(leases.claim)
_db_renew = lease_db(leases.renew)
_db_release_leases = lease_db(leases.release_leases)
_db_release_all = supervisor_db(leases.release_all)
_db_announce = lease_db(leases.announce)
_db_withdraw = supervisor_db(leases.withdraw)
_db_census = supervisor_db(leases.census)
_db_held = supervisor_db(leases.held_sessions)
_db_close = supervisor_db(connections.close_all)
_db_close_lease = lease_db(connections.close_all)


GESTURE_MAX_AGE = dt.timedelta(seconds=30)

#: Seconds between repeated cancellations of a runner (see SessionRunner._cancel).
CANCEL_REPEAT = 0.05

#: Look for work this long after another's lease is due to expire (clock skew
#: between our sleep and the database's clock).
EXPIRY_SLACK = 0.1


@supervisor_db
def _db_take_gestures(lease: Lease) -> list[str]:
    """Take the simulated phone's pending gestures, fenced like every owner's write
    (a runner that lost its lease takes none of its successor's); stale ones are
    dropped unapplied."""
    actions = list(
        PhoneAction.objects.filter(
            session_id=lease.session_id,
            session__lease_owner=lease.owner,
            session__lease_epoch=lease.epoch,
        )
    )
    PhoneAction.objects.filter(pk__in=[a.pk for a in actions]).delete()
    fresh_since = timezone.now() - GESTURE_MAX_AGE
    return [a.gesture for a in actions if a.created_at >= fresh_since]


#: The columns whose change a runner must act on that it did not write itself:
#: intent (the web side's) and lease. The periodic pass compares them in one query.
WATCHED_FIELDS = ("desired_state", "pair_request", "connect_request", "lease_owner", "lease_epoch")


def watched(session: WaSession) -> tuple[Any, ...]:
    return tuple(getattr(session, name) for name in WATCHED_FIELDS)


@supervisor_db
def _db_owned_changes(owner: str) -> tuple[dict[int, tuple[Any, ...]], set[int]]:
    """For the periodic pass, in two queries: the watched columns of every session
    ``owner`` holds, and the sessions with a simulated phone gesture waiting."""
    rows = WaSession.objects.filter(lease_owner=owner).values_list("id", *WATCHED_FIELDS)
    gestured = PhoneAction.objects.filter(session__lease_owner=owner).values_list(
        "session_id", flat=True
    )
    return {row[0]: tuple(row[1:]) for row in rows}, set(gestured)


class SessionRunner:
    """Owns one session for as long as its lease holds: one inbox, one step at a time.

    Everything that happens to the session (an intent ring, a driver event, a
    retry timer, a phone gesture) is a message in the inbox, processed in order,
    so the runner never races itself and never opens a second connection.
    """

    def __init__(self, supervisor: Supervisor, lease: Lease) -> None:
        self.sup = supervisor
        self.lease = lease
        self.session_id = lease.session_id
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.connection_open = False
        self.attempt = 0  # tags driver callbacks; stale ones are dropped
        self.continuing_round = False  # the open connection continues an earlier round
        self.round_qr_count = 0  # QR codes seen in the current round
        self.fresh = True  # just claimed: the DB state is the previous owner's
        self.started = supervisor.clock()  # after the claim committed
        self.seen: tuple[Any, ...] = ()  # watched columns at the last step
        self.exit_reason = "done"
        self._stopping: asyncio.Future[None] | None = None  # the driver stop under way
        self._canceller: asyncio.Task[None] | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._finishing = False
        self.messages = MessagePump(lease, supervisor.driver, messaging_config())
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"waconnect-session-{self.session_id}"
        )

    # -- called from outside ------------------------------------------------------------

    def poke(self, reason: str = "poke") -> None:
        self.inbox.put_nowait(("poke", reason))

    def abandon(self, reason: str) -> None:
        """Drop the connection at once, write nothing (lease lost or self-fenced)."""
        if not self._finishing:
            self.exit_reason = reason
            self._cancel()

    def hand_over(self) -> None:
        """Close the connection; the supervisor then releases the lease with the
        others it hands over (:func:`sessions_app.leases.hand_over`)."""
        if not self._finishing:
            self.exit_reason = "handover"
            self._cancel()

    def _cancel(self) -> None:
        """Cancel the runner, and again until it takes.

        asgiref's ``sync_to_async`` (every database call) swallows a cancellation
        that arrives while its thread is busy: it waits for the call and returns
        its result. Under load most runners are in a database call, so a single
        ``cancel()`` would often be lost and the runner would go on, connection
        and all.
        """
        self.task.cancel()
        if self._canceller is None:
            self._canceller = asyncio.get_running_loop().create_task(
                self._cancel_until_done(), name=f"waconnect-cancel-{self.session_id}"
            )

    async def _cancel_until_done(self) -> None:
        while not (self.task.done() or self._finishing):
            await asyncio.sleep(CANCEL_REPEAT)
            if not (self.task.done() or self._finishing):
                self.task.cancel()

    # -- the loop ----------------------------------------------------------------------

    def _extra(self) -> dict[str, Any]:
        return {"session": self.session_id}

    async def _run(self) -> None:
        try:
            await self._step(gestures=True)
            while True:
                kind, payload = await self.inbox.get()
                if kind == "event":
                    attempt, event = payload
                    if attempt != self.attempt or not self.connection_open:
                        continue  # from a connection we already closed
                    if pump.handles(event):  # the messages layer's; no step needed
                        await self.messages.on_event(event)
                        continue
                    await self._on_event(event)
                elif payload == RING_REASON:  # a queued message: only the pump acts
                    self.messages.kick()
                    continue
                gestures = kind == "poke" and payload.startswith(("phone", "periodic"))
                await self._step(gestures=gestures)
        except _Exit:
            pass
        except LeaseLost:
            self.exit_reason = "lost"
            logger.warning("lost the lease; dropping the connection", extra=self._extra())
        except asyncio.CancelledError:
            pass
        except DatabaseError as exc:  # e.g. the server dropped our connection
            self.exit_reason = "crashed"
            logger.warning(
                "database error (%s); handing the session over", exc, extra=self._extra()
            )
        except Exception:
            self.exit_reason = "crashed"
            logger.exception("session runner failed", extra=self._extra())
        finally:
            await self._finish()

    async def _finish(self) -> None:
        self._finishing = True
        try:
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            await self.messages.aclose()  # no send starts after this
            await self._close_connection()
            if self.exit_reason == "crashed":
                await self._release_with_handover_state()
        except Exception:
            logger.warning(
                "could not hand the session over cleanly", exc_info=True, extra=self._extra()
            )
        finally:
            self.sup._runner_done(self)

    async def _release_with_handover_state(self) -> None:
        session = await _db_load(self.session_id)
        if session is None:
            return
        fields: dict[str, Any] = {}
        event = None
        state = State(session.state)
        if state in LIVE_STATES and is_allowed(state, Trigger.DISCONNECTED):
            why = "supervisor error; handing over"
            target = transition(state, Trigger.DISCONNECTED)
            fields = {"state": target, "state_changed_at": timezone.now(), **_QR_CLEARED}
            event = EventRecord(SessionEvent.Kind.STATE, why, state, target)
        self.sup._runner_done(self)  # before the release: a re-claim gets a new runner
        published = await _db_release(self.lease, fields, event)
        if published:
            await doorbell.wake_supervisors("a session was handed over")
            await doorbell.publish(*published)

    # -- deciding ----------------------------------------------------------------------

    async def _step(self, *, gestures: bool = False) -> None:
        """Read the session, decide with the pure policy, act."""
        while True:
            session = await _db_load(self.session_id)
            if session is None:
                self.exit_reason = "deleted"
                raise _Exit
            if (session.lease_owner, session.lease_epoch) != (self.lease.owner, self.lease.epoch):
                raise LeaseLost
            self.seen = watched(session)
            if gestures and self.sup.driver.simulated:
                gestures = False
                await self._apply_gestures()
            view, wake = self._view(session)
            action = plan(view)
            if action is Action.WAIT:
                self._arm_retry_timer(wake)
                self.messages.settled(
                    self.connection_open and session.state in (State.CONNECTED, State.DEGRADED)
                )
                return
            if action is Action.RELEASE:
                self.exit_reason = "released"
                # Deregister before the release is visible, so that a claim racing
                # it starts a fresh runner instead of finding this one.
                self.sup._runner_done(self)
                published = await _db_release(
                    self.lease, {"connect_served": session.connect_request}
                )
                if published:
                    await doorbell.publish(*published)
                self.exit_reason = "released"
                raise _Exit
            await self._act(action, session)
            self.fresh = False

    def _view(self, session: WaSession) -> tuple[SessionView, float | None]:
        """The policy's view of the row, and when a wait should look again (epoch s).

        Every clock comes from the row (retry time, round start, recent connects),
        so a new owner sees exactly what the last one would have.
        """
        now = timezone.now().timestamp()
        retry_at = epoch(session.next_retry_at)
        started = epoch(session.qr_round_started_at)
        limit = self.sup.config.qr_round_limit
        round_ = round_status(started, now, limit)
        own_round = self.connection_open and not self.continuing_round
        if own_round and round_ is Round.OVER:
            round_ = Round.LIVE  # a round this connection began ends by WhatsApp's clock
        rate_at = self.sup.ceiling.next_at(session.recent_connects or [], now)
        view = SessionView(
            desired=Desired(session.desired_state),
            state=State(session.state),
            has_credentials=bool(session.jid),
            pair_pending=session.pair_pending,
            connect_pending=session.connect_pending,
            connection_open=self.connection_open,
            retry_due=retry_at is None or retry_at <= now,
            ban_over=session.banned_until is None or session.banned_until <= timezone.now(),
            round=round_,
            rate_ok=rate_at <= now,
        )
        round_end = None if own_round or started is None else started + limit
        wake = min((t for t in (retry_at, rate_at, round_end) if t and t > now), default=None)
        return view, wake

    async def _act(self, action: Action, session: WaSession) -> None:
        if action is Action.PAIR:
            await self._close_connection()
            self.round_qr_count = 0
            self.continuing_round = not session.pair_pending
            if self.continuing_round:  # interrupted (crash, deploy, failure): same round
                await self._connect(session, self._spec(), "continuing the QR round")
            else:  # served when started, so a failure does not skip the next backoff
                fields = {
                    "pair_served": session.pair_request,
                    "qr_round_started_at": timezone.now(),
                }
                await self._connect(session, self._spec(), "QR round requested", fields)
        elif action is Action.RESUME:
            await self._close_connection()  # a driver that did not reconnect in time
            await self._connect(session, self._spec(session.jid), "resuming the linked device")
        elif action is Action.SERVE:
            await self._serve(session)
        elif action is Action.EXPIRE_ROUND:
            await self._close_connection()
            why = "the interrupted QR round would have ended by now; waiting for the admin"
            fields = {**_QR_CLEARED, **round_ended(session.pair_served)}
            await self._transition(session, Trigger.QR_TIMEOUT, why, fields)
        elif action is Action.CLOSE:
            await self._close_connection()
            fields = {
                "pair_served": session.pair_request,
                "connect_served": session.connect_request,
                **_QR_CLEARED,
                **round_ended(session.pair_request),
            }
            await self._transition(session, Trigger.STOP, "stopped as asked", fields)
        elif action is Action.LOGOUT:
            await self._logout(session)
        elif action is Action.DELETE:
            await self._delete(session)

    def _spec(self, jid: str = "") -> ConnectSpec:
        return ConnectSpec(self.session_id, jid=jid, owner=self.lease.owner, epoch=self.lease.epoch)

    async def _serve(self, session: WaSession) -> None:
        """Answer a request that needs no connection: record it served, and why (a
        start made with it is left to the next step)."""
        fields: dict[str, Any] = {"connect_served": session.connect_request}
        if session.pair_pending and session.jid:
            fields = {"pair_served": session.pair_request, **round_ended(session.pair_request)}
            why = "new QR code request dropped: the session is linked; log it out first"
        elif session.jid:
            connected = session.state in (State.CONNECTED, State.DEGRADED)
            why = f"start request served: already {'connected' if connected else 'connecting'}"
        else:
            why = "start request served: a QR round is under way; nothing restarted"
        await self._write(fields, EventRecord(SessionEvent.Kind.INFO, why))

    async def _connect(
        self, session: WaSession, spec: ConnectSpec, why: str, fields: dict[str, Any] | None = None
    ) -> None:
        trigger = Trigger.CONNECT
        if not is_allowed(session.state, Trigger.CONNECT):
            # A new owner starts from whatever the last one left; an owner of its
            # own starts over (e.g. a round's connection that was still opening).
            trigger = Trigger.TAKE_OVER
            how = "taken over from the previous owner" if self.fresh else "restarted"
            why = f"{why} ({how})"
        now = timezone.now()
        connects = self.sup.ceiling.record(session.recent_connects or [], now.timestamp())
        fields = {
            "connect_served": session.connect_request,
            "banned_until": None,
            "recent_connects": connects,
            **_QR_CLEARED,
            **(fields or {}),
        }
        await self._transition(session, trigger, why, fields, row=session)
        self.attempt += 1
        attempt = self.attempt
        self.connection_open = True
        logger.info(
            "connecting (%s)", "new device" if spec.pairing else "resume", extra=self._extra()
        )
        try:
            await self.sup.driver.start(spec, lambda event: self._deliver(attempt, event))
        except Exception as exc:
            logger.warning("driver could not start: %s", exc, extra=self._extra())
            self._deliver(attempt, ConnectError(self.session_id, f"could not start: {exc}"))

    def _deliver(self, attempt: int, event: DriverEvent) -> None:
        self.inbox.put_nowait(("event", (attempt, event)))

    async def _logout(self, session: WaSession) -> None:
        self.attempt += 1
        self.connection_open = False
        self.continuing_round = False
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
            # cancellation of a hand-over, and the runner would never end.
            async with asyncio.timeout(self.sup.config.stop_timeout):
                await self.sup.driver.logout(self.session_id, session.jid)
        except Exception as exc:
            logger.warning("logout did not finish cleanly: %r", exc, extra=self._extra())
        fields = {
            "jid": "",
            "push_name": "",
            "pair_served": session.pair_request,
            "connect_served": session.connect_request,
            **_QR_CLEARED,
            **round_ended(session.pair_request),
        }
        if session.state == State.LOGGED_OUT:
            await self._write(fields, EventRecord(SessionEvent.Kind.INFO, "credentials removed"))
        else:
            await self._transition(session, Trigger.LOGGED_OUT, "logged out as asked", fields)

    async def _delete(self, session: WaSession) -> None:
        await self._close_connection()
        try:
            async with asyncio.timeout(self.sup.config.stop_timeout):
                await self.sup.driver.logout(self.session_id, session.jid)
        except Exception as exc:
            logger.warning("could not unlink before deleting: %r", exc, extra=self._extra())
        if not await supervisor_db(leases.delete)(self.lease):
            raise LeaseLost
        logger.info("deleted session %r", session.name, extra=self._extra())
        await doorbell.publish_removed(self.session_id)
        self.exit_reason = "deleted"
        raise _Exit

    async def _close_connection(self) -> None:
        """Stop the driver's connection and wait (bounded) until it is closed.

        The stop runs as its own task: if this runner is cancelled meanwhile (a
        hand-over), ``_finish`` waits for the same stop again, so the lease is
        never released while the connection may still be open.
        """
        if self.connection_open:
            self.connection_open = False
            self.attempt += 1
            self.continuing_round = False
            self._stopping = asyncio.ensure_future(self.sup.driver.stop(self.session_id))
            await self.messages.connection_closed()
        if self._stopping is None:
            return
        try:
            async with asyncio.timeout(self.sup.config.stop_timeout):
                await asyncio.shield(self._stopping)
        except Exception as exc:
            logger.warning("driver stop did not finish cleanly: %r", exc, extra=self._extra())
        self._stopping = None

    def _arm_retry_timer(self, wake: float | None) -> None:
        """Look again at ``wake`` (epoch seconds): a retry, the ceiling, a round's end."""
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if wake is None:
            return
        delay = max(0.0, wake - timezone.now().timestamp())
        self._retry_timer = asyncio.get_running_loop().call_later(delay, self.poke, "retry due")

    # -- writing -----------------------------------------------------------------------

    async def _write(
        self, fields: dict[str, Any], event: EventRecord | None, row: WaSession | None = None
    ) -> None:
        published = await _db_write(self.lease, fields, event, row)
        if published is None:
            raise LeaseLost
        await doorbell.publish(*published)

    async def _transition(
        self,
        session: WaSession,
        trigger: Trigger,
        why: str,
        fields: dict[str, Any],
        row: WaSession | None = None,
    ) -> None:
        """Move to the trigger's state with ``fields``; a state that no longer needs
        the move (e.g. stop when already stopped) gets the fields alone."""
        current = State(session.state)
        if not is_allowed(current, trigger):
            logger.info("%s while %s: no state change", trigger, current, extra=self._extra())
            await self._write(fields, EventRecord(SessionEvent.Kind.INFO, why), row)
            return
        target = transition(current, trigger)
        if target in SETTLED_STATES:  # an old failure no longer applies
            fields = {"last_error": "", "retry_count": 0, "next_retry_at": None, **fields}
        if target in DROPS_REQUESTS:  # waits for a start made after this
            fields = {"connect_served": session.connect_request, **fields}
        fields = {"state": target, **fields}
        event = None
        if target is not current or trigger in (Trigger.CONNECT, Trigger.TAKE_OVER):
            fields["state_changed_at"] = timezone.now()
            event = EventRecord(SessionEvent.Kind.STATE, why, current, target)
            logger.info("%s → %s: %s", current, target, why, extra=self._extra())
        await self._write(fields, event, row)

    # -- driver events -----------------------------------------------------------------

    async def _on_event(self, event: DriverEvent) -> None:
        session = await _db_load(self.session_id)
        if session is None:
            self.exit_reason = "deleted"
            raise _Exit
        state = State(session.state)
        mapped = map_event(
            event,
            retry_count=session.retry_count,
            now=timezone.now(),
            backoff=self.sup.backoff,
            reconnect_watch=self.sup.config.reconnect_watch,
        )
        fields = mapped.fields
        if mapped.ends_round:
            fields = {**fields, **round_ended(session.pair_served)}
        if mapped.trigger is None:
            info = EventRecord(SessionEvent.Kind.INFO, mapped.why) if mapped.why else None
            await self._write(fields, info, session)
            return
        if not is_allowed(state, mapped.trigger):
            logger.warning("ignored %s in state %s", mapped.trigger, state, extra=self._extra())
            await self._write(
                {}, EventRecord(SessionEvent.Kind.INFO, f"ignored {mapped.trigger} while {state}")
            )
            return
        if mapped.close:
            await self._close_connection()
        if isinstance(event, QrCode):
            self.round_qr_count += 1
        await self._transition(session, mapped.trigger, mapped.why, fields, row=session)
        await self._after_event(event, session)

    async def _after_event(self, event: DriverEvent, session: WaSession) -> None:
        """Follow-ups: a pairing code is asked for once the round's first QR is up."""
        if isinstance(event, QrCode) and session.pair_phone and self.round_qr_count == 1:
            try:
                await self.sup.driver.request_pairing_code(self.session_id, session.pair_phone)
            except DriverError as exc:
                await self._write({}, EventRecord(SessionEvent.Kind.ERROR, f"pairing code: {exc}"))

    async def _apply_gestures(self) -> None:
        gestures = await _db_take_gestures(self.lease)
        for gesture in gestures:
            applied = await self.sup.driver.gesture(self.session_id, gesture)  # type: ignore[attr-defined]
            if not applied:
                why = f"simulated phone: '{gesture}' had nothing to act on"
                await self._write({}, EventRecord(SessionEvent.Kind.INFO, why))


class Supervisor:
    """Claims sessions, runs them, keeps its leases, and fences itself if it can't."""

    def __init__(
        self,
        driver: Driver,
        *,
        owner: str | None = None,
        config: SupervisorConfig | None = None,
        layer: BaseChannelLayer | bool | None = True,
        clock: Callable[[], float] = time.monotonic,
        poll_only: bool = False,
    ) -> None:
        """``poll_only``: no doorbell and no waking at lease expiry, only the periodic
        pass (the design waconnect replaces; for comparison benchmarks)."""
        self.driver = driver
        self.poll_only = poll_only
        self.owner = owner or make_owner_id()
        self.config = config or supervisor_config()
        self.backoff = Backoff(base=self.config.backoff_base, cap=self.config.backoff_cap)
        self.ceiling = ConnectCeiling(limit=self.config.connect_limit)
        self._layer_arg = layer
        self.clock = clock
        self.runners: dict[int, SessionRunner] = {}
        self.fenced = False
        self._last_renewal = clock()
        self.layer: BaseChannelLayer | None = None
        self._channel: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._next_expiry = self.config.reconcile_interval
        self._orphans: dict[int, int] = {}  # session id -> epoch, see _release_orphans
        #: Set after the first reconcile pass: the supervisor is listening and has
        #: claimed what was waiting.
        self.ready = asyncio.Event()

    def _extra(self) -> dict[str, Any]:
        return {"owner": self.owner}

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; then hand every session over and return."""
        self._loop = asyncio.get_running_loop()
        self._last_renewal = self.clock()
        if self.poll_only:
            self.layer = None
        else:
            self.layer = get_channel_layer() if self._layer_arg is True else self._layer_arg
        prepare = getattr(self.driver, "prepare", None)
        if prepare is not None:  # e.g. neonize: create its store, warm workers
            await prepare()
        logger.info(
            "supervisor %s starting (driver %s, lease TTL %ss)",
            self.owner,
            self.driver.name,
            self.config.lease_ttl,
            extra=self._extra(),
        )
        side = [
            asyncio.create_task(self._doorbell_loop(), name="waconnect-doorbell"),
            asyncio.create_task(self._renew_loop(), name="waconnect-renew"),
            asyncio.create_task(self._fence_watchdog(), name="waconnect-fence-watchdog"),
            asyncio.create_task(self._reconcile_loop(), name="waconnect-reconcile"),
        ]
        stop_wait = asyncio.create_task(self._stop.wait(), name="waconnect-stop-wait")
        try:
            done, _ = await asyncio.wait([stop_wait, *side], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and not task.cancelled() and task.exception():
                    logger.error(
                        "supervisor task %s died; stopping",
                        task.get_name(),
                        exc_info=task.exception(),
                        extra=self._extra(),
                    )
        finally:
            for task in [stop_wait, *side]:
                task.cancel()
            # Bounded: a library that swallows a cancellation must not hang shutdown.
            _, stuck = await asyncio.wait([stop_wait, *side], timeout=5.0)
            for task in stuck:
                logger.warning("task %s did not stop in time", task.get_name(), extra=self._extra())
            await self._shutdown()

    def stop(self) -> None:
        """Ask the supervisor to shut down; idempotent, callable from any thread."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):  # first: the others may now take everything
            await _db_withdraw(self.owner)
        runners = list(self.runners.values())
        with contextlib.suppress(Exception):
            await self._hand_over(runners, "supervisor shutting down; handing over")
        with contextlib.suppress(Exception):  # anything left, e.g. a self-fenced lease
            await _db_release_all(self.owner)
        with contextlib.suppress(Exception):
            await self.driver.aclose()
        with contextlib.suppress(Exception):  # give back our database connections
            await _db_close()
            await _db_close_lease()
        logger.info(
            "supervisor %s stopped; %d sessions handed over",
            self.owner,
            len(runners),
            extra=self._extra(),
        )

    def _runner_done(self, runner: SessionRunner) -> None:
        """Forget a runner (idempotent); it may still be closing its last write."""
        if self.runners.get(runner.session_id) is not runner:
            return
        del self.runners[runner.session_id]
        if runner.exit_reason in ("self-fenced", "crashed"):
            # Perhaps still ours in the database: the next renewal gives it back.
            self._orphans[runner.session_id] = runner.lease.epoch
        if runner.exit_reason in ("released", "deleted"):
            # An intent may have changed while it was finishing: look again.
            self._wake.set()

    # -- the doorbell ---------------------------------------------------------------------

    async def _doorbell_loop(self) -> None:
        if self.layer is None:
            self._listening.set()
            await asyncio.Event().wait()
            return
        # The default prefix, not one of our own: channels-redis reads every
        # process-local channel through one BLPOP on one prefix, and a channel with
        # another prefix would starve the consumers' receives in the same process.
        channel = await self.layer.new_channel()
        await self.layer.group_add(doorbell.SUPERVISORS_GROUP, channel)
        self._channel = channel
        self._listening.set()
        try:
            failures = 0
            while True:
                try:
                    message = await self.layer.receive(channel)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    current = asyncio.current_task()
                    if self._stop.is_set() or (current is not None and current.cancelling()):
                        # channels-redis can turn our cancellation into a read
                        # timeout: we are being stopped, not failing.
                        return
                    failures += 1
                    logger.warning(
                        "doorbell receive failed; retrying", exc_info=True, extra=self._extra()
                    )
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                    continue
                self.ring(message)
        finally:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(doorbell.SUPERVISORS_GROUP, channel)

    def ring(self, message: dict[str, Any]) -> None:
        """Act on a doorbell message: poke the owner's runner, or look for work."""
        session_id = message.get("session")
        runner = self.runners.get(session_id) if isinstance(session_id, int) else None
        if runner is not None:
            runner.poke(str(message.get("reason", "ring")))
        else:
            self._wake.set()

    # -- leases ---------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.renew_interval)
            started = self.clock()
            try:
                held = await _db_renew(self.owner, self.config.lease_ttl)
            except Exception:
                logger.warning("lease renewal failed", exc_info=True, extra=self._extra())
                continue
            self._last_renewal = started
            try:
                await _db_announce(
                    self.owner, self.config.lease_ttl, self.config.max_sessions, len(held)
                )
            except Exception:
                logger.warning("could not renew our presence", exc_info=True, extra=self._extra())
            if self.fenced and self._fence_deadline() > self.clock():
                logger.info("lease renewal works again; claiming resumes", extra=self._extra())
                self.fenced = False
            elif self.fenced:
                # Sent before a partition, answered as it healed: it says nothing
                # about our leases now. The next renewal decides.
                logger.info(
                    "a lease renewal took %.1fs; staying fenced",
                    self.clock() - started,
                    extra=self._extra(),
                )
            held_ids = {lease.session_id: lease for lease in held}
            for session_id, runner in list(self.runners.items()):
                if runner.started >= started:
                    # Claimed on the other database thread while this renewal was
                    # under way: the renewal may not have seen it yet.
                    continue
                lease = held_ids.get(session_id)
                if lease is None or lease.epoch != runner.lease.epoch:
                    logger.warning("lease lost; dropping the connection", extra=runner._extra())
                    runner.abandon("lease lost")
            await self._release_orphans(held_ids)

    async def _release_orphans(self, held: dict[int, Lease]) -> None:
        """Give back leases still ours whose runner ended without releasing them
        (we self-fenced, or it crashed), so that anyone may claim them."""
        orphans = [
            held[sid]
            for sid, epoch in self._orphans.items()
            if sid in held and held[sid].epoch == epoch and sid not in self.runners
        ]
        self._orphans = {}  # the rest were not ours any more at this renewal
        if not orphans:
            return
        try:
            released = await _db_release_leases(self.owner, orphans)
        except Exception:
            logger.warning("could not release leases", exc_info=True, extra=self._extra())
            self._orphans.update({lease.session_id: lease.epoch for lease in orphans})
            return
        if released:
            self._wake.set()
            await doorbell.wake_supervisors("leases given back")

    def _fence_deadline(self) -> float:
        """When, on our monotonic clock, we must have dropped every connection."""
        return self._last_renewal + self.config.lease_ttl - self.config.self_fence_margin

    async def _fence_watchdog(self) -> None:
        """Drop every connection before our leases can expire if renewal stalls."""
        while True:
            remaining = self._fence_deadline() - self.clock()
            if remaining > 0 and not self.fenced:
                await asyncio.sleep(min(remaining, 0.5))
                continue
            if not self.fenced:
                self.fenced = True
                metrics.self_fences.inc()
                logger.error(
                    "could not renew leases for %.1fs; dropping %d connections (self-fencing)",
                    self.config.lease_ttl - self.config.self_fence_margin,
                    len(self.runners),
                    extra=self._extra(),
                )
            # Every tick while fenced: a claim sent before the fence may have been
            # answered since (a partition healing for a moment), and its runner
            # would run without renewals.
            for runner in list(self.runners.values()):
                runner.abandon("self-fenced")
            await asyncio.sleep(0.5)

    # -- reconcile ------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        # The first pass runs once the doorbell listens: a ring in between would be
        # lost until the next periodic pass.
        await self._listening.wait()
        await self._join()
        self._wake.set()
        last_periodic = self.clock()
        while True:
            # Wake on a ring, when another's lease or presence runs out (to take
            # over a dead supervisor's sessions without delay), or for the
            # periodic pass. asyncio.timeout, not wait_for: on 3.11 wait_for can
            # swallow a cancellation that races the wake-up.
            until_periodic = self.config.reconcile_interval - (self.clock() - last_periodic)
            with contextlib.suppress(TimeoutError):
                wake_in = (
                    until_periodic if self.poll_only else min(until_periodic, self._next_expiry)
                )
                async with asyncio.timeout(max(0.0, wake_in)):
                    await self._wake.wait()
            periodic = self.clock() - last_periodic >= self.config.reconcile_interval
            if periodic:
                last_periodic = self.clock()
            self._wake.clear()
            try:
                await self.reconcile(periodic=periodic)
            except Exception:
                self._next_expiry = self.config.reconcile_interval
                logger.warning("reconcile failed; will retry", exc_info=True, extra=self._extra())
            self.ready.set()

    async def _join(self) -> None:
        """Enter the census and ask the others to make room for our share."""
        try:
            await _db_announce(self.owner, self.config.lease_ttl, self.config.max_sessions, 0)
        except Exception:
            logger.warning("could not announce ourselves", exc_info=True, extra=self._extra())
            return
        await doorbell.wake_supervisors("a supervisor joined")

    async def reconcile(self, *, periodic: bool = True) -> int:
        """Claim what needs an owner; on the periodic pass, re-check owned sessions too
        and expire overdue queued messages of every session (owned or not)."""
        if periodic:
            await self._poke_changed()
            try:
                await pump.sweep_expired()
            except DatabaseError:
                logger.warning("could not expire overdue messages", exc_info=True)
            if self.layer is not None and self._channel is not None:
                # Group membership expires (a day by default): renew it.
                with contextlib.suppress(Exception):
                    await self.layer.group_add(doorbell.SUPERVISORS_GROUP, self._channel)
        if self.fenced:
            return 0
        census = await _db_census(self.owner)
        self._next_expiry = (
            self.config.reconcile_interval
            if census.next_expiry is None
            else census.next_expiry + EXPIRY_SLACK
        )
        share = fair_share(census.wanted, self.config.max_sessions, census.other_caps)
        await self._shed(share)
        claimed = 0
        while True:
            room = share - len(self.runners)
            batch = min(room, self.config.claim_batch)
            if batch <= 0:
                break
            got = await _db_claim(self.owner, self.config.lease_ttl, batch)
            if self.fenced:
                # Answered after we fenced ourselves: no renewal covers these leases.
                # Connect none; the next renewal that works gives them back.
                self._orphans.update({lease.session_id: lease.epoch for lease in got})
                break
            for lease in got:
                if lease.session_id in self.runners:  # cannot happen; be loud if it does
                    logger.error(
                        "claimed a session we already run", extra={"session": lease.session_id}
                    )
                    continue
                logger.info("claimed (epoch %d)", lease.epoch, extra={"session": lease.session_id})
                self.runners[lease.session_id] = SessionRunner(self, lease)
            claimed += len(got)
            if len(got) < batch:
                break
        return claimed

    async def _stop_runners(self, runners: list[SessionRunner]) -> list[SessionRunner]:
        """Cancel these runners and wait (bounded) until each has closed its connection.

        A runner still running at the end keeps its session (and lease) and is
        logged; only the stopped ones are returned.
        """
        for runner in runners:
            runner.hand_over()
        if runners:
            await asyncio.wait({r.task for r in runners}, timeout=self.config.stop_timeout + 2.0)
        for runner in runners:
            if not runner.task.done():
                logger.warning("did not stop in time; keeping it", extra=runner._extra())
        return [runner for runner in runners if runner.task.done()]

    async def _poke_changed(self) -> None:
        """The safety net for a lost ring: poke only the runners whose session
        changed since their last step (or has a phone gesture waiting), found in
        two queries, instead of every runner reading its row."""
        rows, gestured = await _db_owned_changes(self.owner)
        for session_id, runner in list(self.runners.items()):
            if rows.get(session_id) != runner.seen or session_id in gestured:
                runner.poke("periodic reconcile")

    async def _shed(self, share: int) -> None:
        """Hand over what we hold beyond our share, so a newcomer can take it."""
        count = shed_count(len(self.runners), share)
        if not count:
            return
        chosen = pick_to_shed(await _db_held(self.owner), count)
        runners = [self.runners[sid] for sid in chosen if sid in self.runners]
        if not runners:
            return
        logger.info(
            "holding %d sessions, fair share %d: handing %d over",
            len(self.runners),
            share,
            len(runners),
            extra=self._extra(),
        )
        await self._hand_over(runners, "handed over to another supervisor to balance the load")

    async def _hand_over(self, runners: list[SessionRunner], why: str) -> None:
        """Close these sessions' connections, then release them all at once and ring."""
        stopped = await self._stop_runners(runners)
        if not stopped:
            return
        published = await _db_hand_over(self.owner, [r.session_id for r in stopped], why)
        await doorbell.wake_supervisors(why)  # first: the others claim while we publish
        for snapshot, row in published:
            await doorbell.publish(snapshot, row)
