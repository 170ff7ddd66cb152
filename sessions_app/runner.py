"""The session runner: one per session a supervisor owns, for as long as its lease holds.

Everything that happens to the session (an intent ring, a driver event, a retry
timer, a phone gesture) is a message in the runner's inbox, processed in order,
so the runner never races itself and never opens a second connection. Each
message ends in a *step*: read the row, check the lease, decide with the pure
policy (:func:`sessions_app.policy.plan`), act, until the policy says wait.

The parts:

- this module: the inbox and its loop, cancellation, the step, fenced writes
  (:meth:`SessionRunner._write`), and the dispatch of driver events;
- :mod:`sessions_app.runner_lifecycle`: the session lifecycle (connect, serve,
  log out, delete, close; state transitions; lifecycle driver events);
- :mod:`sessions_app.owner_db`: every database call.

What goes over the connection is the message pump's
(:class:`messaging.pump.MessagePump`, one per runner): :meth:`SessionRunner._run`
hands it the messaging events and the "message queued" rings, each step ends by
telling it whether the session is connected (:meth:`SessionRunner._settled`), the
lifecycle tells it when the connection closes, and it is closed before the
connection when the runner ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from django.db import DatabaseError
from django.utils import timezone

from messaging import pump
from messaging.conf import messaging_config
from messaging.live import RING_REASON
from messaging.pump import MessagePump
from sessions_app import doorbell, owner_db
from sessions_app.drivers.base import DriverEvent
from sessions_app.event_mapping import epoch
from sessions_app.leases import QR_CLEARED, EventRecord, Lease
from sessions_app.models import SessionEvent, WaSession
from sessions_app.owner_db import Gesture, LeaseLost
from sessions_app.policy import Action, Round, SessionView, plan, round_status
from sessions_app.runner_lifecycle import LifecycleMixin
from sessions_app.states import LIVE_STATES, Desired, State, Trigger, is_allowed, transition

if TYPE_CHECKING:
    from sessions_app.supervisor import Supervisor

__all__ = ["CANCEL_REPEAT", "LeaseLost", "SessionRunner"]

logger = logging.getLogger(__name__)

#: Seconds between repeated cancellations of a runner (see SessionRunner._cancel).
CANCEL_REPEAT = 0.05


class _Exit(Exception):
    """The runner has nothing more to do."""


class SessionRunner(LifecycleMixin):
    """Owns one session for as long as its lease holds: one inbox, one step at a time.

    Everything that happens to the session (an intent ring, a driver event, a
    retry timer, a phone gesture) is a message in the inbox, processed in order,
    so the runner never races itself and never opens a second connection.
    """

    def __init__(self, supervisor: Supervisor, lease: Lease) -> None:
        self.sup = supervisor
        self.lease = lease.proof()
        self.session_id = lease.session_id
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.connection_open = False
        self.attempt = 0  # tags driver callbacks; stale ones are dropped
        self.continuing_round = False  # the open connection continues an earlier round
        self.round_qr_count = 0  # QR codes seen in the current round
        self.fresh = True  # just claimed: the DB state is the previous owner's
        self.started = supervisor.clock()  # after the claim committed
        self.seen: tuple[Any, ...] = ()  # watched columns at the last step
        #: The row as this runner last read it plus what it wrote since (None once a
        #: write could not be applied to it): a QR rotation is written from it. At
        #: first, the row as the claim left it (None for a lease not from a claim).
        self.row: WaSession | None = lease.claimed_row
        #: The claim saw simulated phone gestures waiting (True when unknown).
        self._gestures_waiting = lease.gestures_waiting
        self.exit_reason = "done"
        self._stopping: asyncio.Future[None] | None = None  # the driver stop under way
        #: A driver stop did not finish in time: the connection may still be open,
        #: so the lease is not released with the others (given back later).
        self.stop_unconfirmed = False
        #: That stop, if it was still running when the runner gave up waiting: the
        #: supervisor waits for it before it gives the lease back (a second stop
        #: may find nothing left to stop and return at once, e.g. neonize's).
        self.unfinished_stop: asyncio.Future[None] | None = None
        self._canceller: asyncio.Task[None] | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._finishing = False
        #: What goes over the connection: messages (sent in a task of its own).
        self.messages = MessagePump(self.lease, supervisor.driver, messaging_config())
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

        A cancellation can be lost inside a library: Python 3.11's
        ``asyncio.wait_for`` (redis-py's socket writes, so every push to the
        browsers) returns the inner call's outcome when that call finished as the
        cancellation came (gh-86296); so does asgiref's ``sync_to_async`` for a
        call that runs ``async_to_sync`` inside. One lost ``cancel()`` and the
        runner would go on, connection and all (CI's chaos run, 5714032).
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

    def _end(self, reason: str) -> NoReturn:
        """End the runner (it has nothing more to do) with ``reason`` as its exit reason."""
        self.exit_reason = reason
        raise _Exit

    async def _run(self) -> None:
        try:
            # The claim brought the row: the first step decides from it, without a
            # read, unless the simulated phone's gestures are to be taken (that
            # read takes them). A runner whose session was rung while the claim
            # was under way got no row (Supervisor._run_claimed), and one poked
            # since it was registered has that ring in its inbox: either reads
            # first, as every runner's first step did before the claim's row.
            take = self.sup.driver.simulated and self._gestures_waiting
            rung = not self.inbox.empty()
            await self._step(gestures=take, reread=take or rung or self.row is None)
            while True:
                kind, payload = await self.inbox.get()
                if kind == "event":
                    attempt, event = payload
                    if attempt != self.attempt or not self.connection_open:
                        continue  # from a connection we already closed
                    if pump.handles(event):  # the messages layer's: no step needed
                        await self.messages.on_event(event)
                        continue
                    await self._on_event(event)
                    await self._step(reread=False)  # the event changed only our own columns
                    continue
                if payload == RING_REASON:  # a message was queued: only the pump acts
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
            self.messages.close()  # before the connection: no send starts after
            # Closed at once, not after the pump's last writes: they may hang (a
            # partition) while the lease runs out.
            await self._close_connection()
            await self.messages.aclose()
            if self.exit_reason == "crashed" and not self.stop_unconfirmed:
                await self._release_with_handover_state()
        except Exception:
            logger.warning(
                "could not hand the session over cleanly", exc_info=True, extra=self._extra()
            )
        finally:
            self.sup._runner_done(self)

    async def _release_with_handover_state(self) -> None:
        session = await owner_db.load(self.session_id)
        if session is None:
            return
        fields: dict[str, Any] = {}
        event = None
        state = State(session.state)
        if state in LIVE_STATES and is_allowed(state, Trigger.DISCONNECTED):
            why = "supervisor error; handing over"
            target = transition(state, Trigger.DISCONNECTED)
            fields = {"state": target, "state_changed_at": timezone.now(), **QR_CLEARED}
            event = EventRecord(SessionEvent.Kind.STATE, why, state, target)
        self.sup._runner_done(self)  # before the release: a re-claim gets a new runner
        published = await owner_db.release(self.lease, fields, event)
        if published:
            await doorbell.wake_supervisors("a session was handed over")
            await doorbell.publish(*published)

    # -- deciding ----------------------------------------------------------------------

    async def _step(self, *, gestures: bool = False, reread: bool = True) -> None:
        """Read the session, decide with the pure policy, act, until it says wait.

        Only the first decision of a step triggered from outside (an intent's ring,
        a timer, the periodic pass) needs the row read: the decisions after this
        runner's own acts and driver events use the row it keeps (``self.row``:
        what it read, plus its own fenced writes; it is the only writer of those
        columns). Intent columns changed meanwhile are never missed that way: every
        intent rings (and the periodic pass pokes a runner whose watched columns
        moved), and that poke's step reads the row. The first step after a claim
        decides from the row the claim brought (``Lease.claimed_row``).
        """
        while True:
            taken: list[Gesture] = []
            if not reread and self.row is not None:
                session: WaSession | None = self.row  # no hop: on the way to the next event
            elif gestures and self.sup.driver.simulated:
                session, taken = await owner_db.load_taking_gestures(self.lease)  # one hop
            else:
                session = await owner_db.load(self.session_id)
            if session is None:
                self._end("deleted")
            if (session.lease_owner, session.lease_epoch) != (self.lease.owner, self.lease.epoch):
                raise LeaseLost
            self.seen = owner_db.watched(session)
            self.row = session
            if gestures and self.sup.driver.simulated:
                gestures = False
                await self._apply_gestures(taken)
            view, wake = self._view(session)
            action = plan(view)
            if action is Action.WAIT:
                self._arm_retry_timer(wake)
                await self._settled(session)
                return
            if action is Action.RELEASE and self.stop_unconfirmed:
                # Nothing left to run; the row keeps what the close wrote (e.g.
                # "stopped"); the request is served.
                why = "the connection may still be open (its stop did not finish): lease kept"
                await self._keep_unconfirmed(
                    why, {"connect_served": session.connect_request}, session
                )
            if action is Action.RELEASE:
                self.exit_reason = "released"
                # Deregister before the release is visible, so that a claim racing
                # it starts a fresh runner instead of finding this one.
                self.sup._runner_done(self)
                published = await owner_db.release(
                    self.lease, {"connect_served": session.connect_request}
                )
                if published:
                    await doorbell.publish(*published)
                self._end("released")
            await self._act(action, session)
            self.fresh = False
            reread = False

    async def _keep_unconfirmed(
        self, why: str, fields: dict[str, Any] | None = None, row: WaSession | None = None
    ) -> NoReturn:
        """The driver's stop (or logout) did not finish: the connection may still be
        open, so the lease is not released and nothing more is done (no release, no
        new connection, no delete). The runner writes ``fields`` and ``why`` and ends
        as an orphan (``_finish`` releases nothing either); the renewal gives the
        lease back once a stop of the session has finished
        (:meth:`~sessions_app.lease_keeping.LeaseKeepingMixin._confirm_stop`), and
        what the row still asks for is the next owner's."""
        await self._write(fields or {}, EventRecord(SessionEvent.Kind.INFO, why), row)
        logger.warning("driver stop unconfirmed; keeping the lease (%s)", why, extra=self._extra())
        self._end("stop unconfirmed")

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

    def _arm_retry_timer(self, wake: float | None) -> None:
        """Look again at ``wake`` (epoch seconds): a retry, the ceiling, a round's end."""
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if wake is None:
            return
        delay = max(0.0, wake - timezone.now().timestamp())
        self._retry_timer = asyncio.get_running_loop().call_later(delay, self.poke, "retry due")

    async def _settled(self, session: WaSession) -> None:
        """The lifecycle has nothing to do now (the policy said wait): tell the message
        pump whether the session is connected (logged in), so it sends its queue.

        ``session`` is the row as this step read it, under this runner's lease.
        Every inbox message but the pump's own ends in a step, so this runs after
        each lifecycle event (``Connected`` included), ring, retry timer and
        periodic poke. A step that opened a connection or showed a code to scan
        says so: the pump then keeps its start-up's database calls out of the way
        of WhatsApp's first answer and of the code's push.
        """
        connected = session.state in (State.CONNECTED, State.DEGRADED)
        connecting = session.state == State.CONNECTING
        awaiting_scan = session.state in (State.QR_REQUIRED, State.PAIRING)
        self.messages.settled(
            self.connection_open and connected,
            connecting=self.connection_open and connecting,
            awaiting_scan=self.connection_open and awaiting_scan,
        )

    # -- writing -----------------------------------------------------------------------

    async def _write(
        self,
        fields: dict[str, Any],
        event: EventRecord | None,
        row: WaSession | None = None,
        *,
        publish: bool = True,
    ) -> owner_db.Published:
        """Fenced write of the session's ``fields`` (and ``event``), then push it
        (unless ``publish`` is false: the caller pushes what this returns).

        Raises :class:`LeaseLost` when the lease is no longer this runner's."""
        published = await owner_db.write(self.lease, fields, event, row)
        if published is None:
            raise LeaseLost
        # owner_db.write applied ``fields`` to ``row`` (and its version) unless one is
        # an SQL expression; otherwise the kept row no longer matches the database.
        applied = row is not None and not any(
            hasattr(value, "resolve_expression") for value in fields.values()
        )
        self.row = row if applied else None
        if publish:
            await doorbell.publish(*published)
        return published

    # -- driver events -----------------------------------------------------------------

    async def _on_event(self, event: DriverEvent) -> None:
        """Dispatch one lifecycle event of the current connection (stale ones are gone).

        Lifecycle events (QR codes, pairing, connected, disconnected, logged out,
        errors: see :func:`sessions_app.event_mapping.map_event`) go to the
        lifecycle, :meth:`_on_lifecycle_event`. The messages layer's events
        (``MessageSent``, ``SendFailed``, ``MessageReceived``, ``Receipt``) never
        come here: :meth:`_run` hands them to the message pump first, without a
        step (nothing about the lifecycle changed).
        """
        await self._on_lifecycle_event(event)

    async def _apply_gestures(self, gestures: list[owner_db.Gesture]) -> None:
        """Play the simulated phone's gestures, taken from the database (fenced),
        each with its payload (a peer's message)."""
        driver: Any = self.sup.driver  # the simulated one (gesture() is not in Driver)
        for gesture, payload in gestures:
            if payload:  # a peer's message: its sender and text
                applied = await driver.gesture(self.session_id, gesture, payload)
            else:
                applied = await driver.gesture(self.session_id, gesture)
            if not applied:
                why = f"simulated phone: '{gesture}' had nothing to act on"
                await self._write({}, EventRecord(SessionEvent.Kind.INFO, why))
