"""The session lifecycle, as its runner carries it out: the half of
:class:`~sessions_app.runner.SessionRunner` that opens, serves, logs out,
deletes and closes the session's one driver connection, moves the row through
the state machine (:mod:`sessions_app.states`), and maps lifecycle driver events
(:mod:`sessions_app.event_mapping`) onto it.

A mixin, not a class of its own: it shares the runner's state (its lease, its
connection's ``attempt`` tag, whether a connection is open) and its inbox, and
runs only inside the runner's one-step-at-a-time loop. It writes only through
the runner's fenced :meth:`~sessions_app.runner.SessionRunner._write`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from django.utils import timezone

from sessions_app import doorbell, owner_db
from sessions_app.drivers.base import ConnectError, ConnectSpec, DriverError, DriverEvent, QrCode
from sessions_app.event_mapping import map_event, round_ended
from sessions_app.leases import QR_CLEARED, EventRecord, Lease
from sessions_app.models import SessionEvent, WaSession
from sessions_app.owner_db import LeaseLost, Published
from sessions_app.policy import DROPS_REQUESTS, SETTLED_STATES, Action
from sessions_app.states import State, Trigger, is_allowed, transition
from sessions_app.stopping import stop_after

if TYPE_CHECKING:
    from messaging.pump import MessagePump
    from sessions_app.supervisor import Supervisor

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Pushes, writes (and a delete with its push) under way in tasks of their own
#: (referenced: a task must not be collected before it ends, even if the runner
#: that started it was cancelled).
_pushes: set[asyncio.Future[Any]] = set()


def _task_soon(work: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
    """Run ``work`` (a push, a write) in a task of its own, kept until it ends; its
    error, if nobody awaits it (the runner was cancelled), is dropped quietly."""
    task = asyncio.ensure_future(work)
    _pushes.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Future[Any]) -> None:
    _pushes.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: "never retrieved" is no news here


async def _publish_after(writing: asyncio.Future[Published]) -> None:
    """Push what the write ``writing`` returns, once it has."""
    await doorbell.publish(*await writing)


class LifecycleMixin:
    """Acting on the policy's actions and on lifecycle driver events.

    Expects of the class it is mixed into (:class:`~sessions_app.runner.SessionRunner`)
    the attributes below and ``_write``, ``_end``, ``_keep_unconfirmed`` and ``_extra``.
    """

    sup: Supervisor
    lease: Lease
    session_id: int
    inbox: asyncio.Queue[tuple[str, Any]]
    connection_open: bool
    attempt: int
    continuing_round: bool
    round_qr_count: int
    fresh: bool
    row: WaSession | None
    exit_reason: str
    _stopping: asyncio.Future[None] | None
    stop_unconfirmed: bool
    unfinished_stop: asyncio.Future[None] | None
    messages: MessagePump

    def _extra(self) -> dict[str, Any]:
        raise NotImplementedError

    def _end(self, reason: str) -> NoReturn:
        raise NotImplementedError

    async def _keep_unconfirmed(
        self, why: str, fields: dict[str, Any] | None = None, row: WaSession | None = None
    ) -> NoReturn:
        raise NotImplementedError

    async def _write(
        self,
        fields: dict[str, Any],
        event: EventRecord | None,
        row: WaSession | None = None,
        *,
        publish: bool = True,
    ) -> Published:
        raise NotImplementedError

    # -- the policy's actions ----------------------------------------------------------

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
            fields = {**QR_CLEARED, **round_ended(session.pair_served)}
            await self._transition(session, Trigger.QR_TIMEOUT, why, fields)
        elif action is Action.CLOSE:
            await self._close_connection()
            fields = {
                "pair_served": session.pair_request,
                "connect_served": session.connect_request,
                **QR_CLEARED,
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

    # -- the connection ----------------------------------------------------------------

    async def _connect(
        self, session: WaSession, spec: ConnectSpec, why: str, fields: dict[str, Any] | None = None
    ) -> None:
        """Open the session's connection (a QR round or a resume).

        Never while the last one may still be open (a driver stop of it went
        unconfirmed, e.g. an admin's start or a new QR code right after a stuck
        stop): with neonize that would be a second worker for the same device in
        this very process. The stop is first asked again and waited for, bounded
        (:meth:`_stopped`); if it still has not finished, nothing is started and the
        runner ends as an orphan keeping the lease
        (:meth:`~sessions_app.runner.SessionRunner._keep_unconfirmed`), as after a
        close whose stop is unconfirmed: the renewal stops the session again until
        a stop finishes, then gives the lease back. Not a retry timer of its own:
        the orphan path already retries without spinning, and what was asked (a
        start, a new round, a retry due) is left unserved in the row, so the next
        owner does it, the connection closed. The last round's QR code is cleared:
        nobody should scan it.
        """
        if not await self._stopped():
            why = f"{why}: not started, the last connection's stop did not finish"
            await self._keep_unconfirmed(why, dict(QR_CLEARED))
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
            **QR_CLEARED,
            **(fields or {}),
        }
        # The fenced write of "connecting" (a database round trip, 4 ms p50 of the
        # 14 ms from a create to neonize's connect() on a slow machine) overlaps
        # the connection's opening instead of delaying it, when our leases are
        # live by our own clock (no I/O: that covers a pause of the whole process
        # up to this instant, which a write made before the start would not). By
        # the self-fence's own bound no one else can then hold the lease; a write
        # that finds it gone all the same raises LeaseLost below, and the runner
        # closes the connection it just opened. Otherwise (a stalled renewal, a
        # process paused) the database decides first.
        writing = _task_soon(
            self._transition(session, trigger, why, fields, row=session, publish=False)
        )
        if not self.sup.leases_live():
            await writing
        # The push of "connecting" (a Redis round trip or two on the production
        # shape) follows the write at once, also while the connection opens. It
        # ends before this step does (and raises what the write raised), so the
        # next snapshot (the code) still follows it. (A runner cancelled meanwhile
        # leaves both to end on their own, shielded; a later snapshot may then
        # overtake the push, and every client keeps the higher version.)
        pushing = _task_soon(_publish_after(writing))
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
        try:
            await asyncio.shield(pushing)
        except asyncio.CancelledError:
            pushing.add_done_callback(self._log_unseen_failure)
            raise

    def _log_unseen_failure(self, task: asyncio.Future[Any]) -> None:
        """How a write or push this runner stopped waiting for ended, if it failed
        otherwise than by finding the lease gone (nobody else will see it)."""
        if not task.cancelled() and not isinstance(task.exception(), LeaseLost | type(None)):
            logger.warning(
                "a write left to finish after its runner stopped failed: %r",
                task.exception(),
                extra=self._extra(),
            )

    def _deliver(self, attempt: int, event: DriverEvent) -> None:
        """The connection's ``on_event``: into the inbox, tagged with its attempt."""
        self.inbox.put_nowait(("event", (attempt, event)))

    async def _logout(self, session: WaSession) -> None:
        """Log the device out and close the connection (the driver's logout stops it).

        The logout is a stop like any other (:meth:`_begin_stop`, :meth:`_await_stop`):
        one that does not finish in time, or fails, leaves the connection perhaps
        open (``stop_unconfirmed``), so the release that follows keeps the lease
        until a stop has finished (before, it gave it back at once)."""
        self.attempt += 1
        self.connection_open = False
        self.continuing_round = False
        self._begin_stop(lambda: self.sup.driver.logout(self.session_id, session.jid))
        await self.messages.connection_closed()
        await self._await_stop()
        fields = {
            "jid": "",
            "push_name": "",
            "pair_served": session.pair_request,
            "connect_served": session.connect_request,
            **QR_CLEARED,
            **round_ended(session.pair_request),
        }
        if session.state == State.LOGGED_OUT:
            await self._write(fields, EventRecord(SessionEvent.Kind.INFO, "credentials removed"))
        else:
            await self._transition(session, Trigger.LOGGED_OUT, "logged out as asked", fields)

    async def _delete(self, session: WaSession) -> NoReturn:
        """Close the connection, unlink the device, delete the row.

        Not while the connection may still be open (its stop or the logout did not
        finish, and a stop asked again did not either): deleted then, the session
        would have no runner and no lease, and nobody would ever stop that
        connection again. The runner keeps the lease and ends as an orphan instead
        (:meth:`~sessions_app.runner.SessionRunner._keep_unconfirmed`); the renewal
        stops the session again until a stop finishes, then gives the lease back;
        the row still asks for its deletion, so the next owner deletes it, the
        connection closed. A logout that fails for another reason (e.g. the device
        store) does not hold the delete up once a stop has finished.
        """
        await self._close_connection()
        if not self.stop_unconfirmed:  # else the next owner logs out (not 3 stop timeouts)
            self._begin_stop(lambda: self.sup.driver.logout(self.session_id, session.jid))
            await self._await_stop()
        if not await self._stopped():
            why = "not deleted yet: the connection may still be open (its stop did not finish)"
            await self._keep_unconfirmed(why)
        # The delete and its push in a task of their own: the renewal that no
        # longer finds the row abandons this runner ("lease lost") as soon as the
        # delete has committed, perhaps before this await has its answer, and that
        # must not cancel the push every watcher of the session waits for.
        deleting = asyncio.ensure_future(self._delete_and_tell(session.name))
        _pushes.add(deleting)
        deleting.add_done_callback(_pushes.discard)
        if not await asyncio.shield(deleting):
            raise LeaseLost
        self._end("deleted")

    async def _delete_and_tell(self, name: str) -> bool:
        """Delete the row (fenced) and push its removal; False if the lease was lost."""
        if not await owner_db.delete(self.lease):
            return False
        logger.info("deleted session %r", name, extra=self._extra())
        await doorbell.publish_removed(self.session_id)
        return True

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
            self._begin_stop(lambda: self.sup.driver.stop(self.session_id))
            await self.messages.connection_closed()  # no answer comes after a stop
        await self._await_stop()

    def _begin_stop(self, stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``stop`` (the driver's stop or logout of the session) as ``_stopping``,
        after the stop still under way since an earlier timeout (``unfinished_stop``),
        if any (:func:`~sessions_app.stopping.stop_after`)."""
        self._stopping = stop_after(self.unfinished_stop, stop)

    async def _await_stop(self) -> None:
        """Wait, bounded by the stop timeout, for the stop under way (``_stopping``),
        never cutting it short (shielded), and record whether the connection is
        closed: if the stop did not finish without error in time, it may still be
        open (``stop_unconfirmed``; ``unfinished_stop`` keeps the stop if it still
        runs), and the lease is not given back until a stop has finished (see
        :meth:`~sessions_app.runner.SessionRunner._keep_unconfirmed`)."""
        stopping = self._stopping
        if stopping is None:
            return
        try:
            async with asyncio.timeout(self.sup.config.stop_timeout):
                await asyncio.shield(stopping)
            self.stop_unconfirmed = False  # the driver closed what it had of the session
            self.unfinished_stop = None
        except Exception as exc:
            self.stop_unconfirmed = True
            self.unfinished_stop = None if stopping.done() else stopping
            logger.warning("driver stop did not finish cleanly: %r", exc, extra=self._extra())
        self._stopping = None

    async def _stopped(self) -> bool:
        """Whether the session's connection is closed: True unless a driver stop went
        unconfirmed; then stop it again (after the stop still under way) and wait,
        bounded, for both."""
        if self.stop_unconfirmed:
            self._begin_stop(lambda: self.sup.driver.stop(self.session_id))
            await self._await_stop()
        return not self.stop_unconfirmed

    # -- the state machine ---------------------------------------------------------------

    async def _transition(
        self,
        session: WaSession,
        trigger: Trigger,
        why: str,
        fields: dict[str, Any],
        row: WaSession | None = None,
        *,
        publish: bool = True,
    ) -> Published:
        """Move to the trigger's state with ``fields``; a state that no longer needs
        the move (e.g. stop when already stopped) gets the fields alone. The change
        is pushed unless ``publish`` is false; it is returned either way."""
        current = State(session.state)
        if not is_allowed(current, trigger):
            logger.info("%s while %s: no state change", trigger, current, extra=self._extra())
            info = EventRecord(SessionEvent.Kind.INFO, why)
            return await self._write(fields, info, row, publish=publish)
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
        return await self._write(fields, event, row, publish=publish)

    # -- lifecycle driver events ---------------------------------------------------------

    async def _on_lifecycle_event(self, event: DriverEvent) -> None:
        """A lifecycle event of the current connection: map it, check it against the
        state machine, close the connection if it ended, write the row.

        A new QR code is written from the row the runner keeps (``self.row``: read
        at the step before, plus its own writes; it is the only writer of observed
        columns, and an intent changed since rings, so the step right after this one
        reads it): one database call from WhatsApp's code to the browser, not two.
        """
        kept = self.row if isinstance(event, QrCode) else None
        session = kept if kept is not None else await owner_db.load(self.session_id)
        if session is None:
            self._end("deleted")
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
