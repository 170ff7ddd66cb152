"""The web side's only way to change a session: write intent, log who asked, ring.

Views, the Django admin and management commands call these functions; none of
them writes an observed column, opens a connection or imports a driver. Each
update touches intent columns only (``update()``, never ``save()`` of a whole row,
which would overwrite the supervisor's observation with a stale copy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.db.models import F, Q

from sessions_app import doorbell, names
from sessions_app.models import PhoneAction, SessionEvent, WaSession
from sessions_app.states import Desired, State

logger = logging.getLogger(__name__)
S = State


class IntentRefused(Exception):
    """The request makes no sense in the session's current state; nothing was written."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: The row shows the session running: connected, connecting, or in a QR round
#: (under way, or asked for and not started yet). A start changes nothing then.
RUNNING_NOW = Q(desired_state=Desired.RUNNING) & (
    Q(state__in=[S.CONNECTING, S.QR_REQUIRED, S.PAIRING, S.CONNECTED, S.DEGRADED])
    | Q(pair_request__gt=F("pair_served"))
)
#: The row shows a linked device: pairing again would leave it linked on the phone.
LINKED = ~Q(jid="")


def _already_running(session_id: int) -> IntentRefused:
    row = WaSession.objects.filter(pk=session_id).values("jid", "state").first() or {}
    if row.get("jid") and row.get("state") != State.PAIRING:
        return IntentRefused("already_running", "This session is already connected.")
    return IntentRefused(
        "already_running", "A QR code round is already under way: scan the code shown."
    )


def _linked() -> IntentRefused:
    return IntentRefused(
        "linked",
        "This session is linked to a phone; log it out first, then ask for a new QR code.",
    )


def _log(session_id: int, actor: str, message: str) -> None:
    SessionEvent.objects.create(
        session_id=session_id, kind=SessionEvent.Kind.INTENT, message=message, actor=actor
    )
    logger.info("%s: %s", actor, message, extra={"session": session_id})


def _ring_after_commit(session_id: int, reason: str) -> None:
    transaction.on_commit(lambda: doorbell.ring_supervisors_sync(session_id, reason))


def create_session(name: str, actor: str, *, ring: bool = True) -> WaSession:
    """A new session that should run, with a QR round requested for it.

    Refused (``name_taken``) when another session has the name in any case: the
    database constraint decides, so two creates racing past the forms' checks
    end in one session and one refusal, not an error. The supervisors are rung
    once the row is committed; with ``ring=False`` the caller rings
    (``doorbell.ring_supervisors``) — and must, or the session waits for the
    next census.
    """
    try:
        with transaction.atomic():
            session = WaSession.objects.create(
                name=name, desired_state=Desired.RUNNING, pair_request=1
            )
            _log(session.pk, actor, "created the session and asked for a QR code")
            if ring:
                _ring_after_commit(session.pk, "created")
    except IntegrityError:
        if not WaSession.objects.filter(name__iexact=name).exists():
            raise
        raise IntentRefused(names.TAKEN_CODE, names.TAKEN_MESSAGE) from None
    return session


#: The row shows a deletion under way: nothing but the deletion applies any more.
DELETING = Q(desired_state=Desired.DELETED)


def _deleting() -> IntentRefused:
    return IntentRefused("deleting", "This session is being deleted.")


def _update(
    session: WaSession,
    actor: str,
    message: str,
    refuse: Q | None = None,
    refusal: Callable[[], IntentRefused] | None = None,
    **changes: object,
) -> None:
    """Write ``changes``, unless the row matches ``refuse`` at that moment (one
    conditional UPDATE, so a check and a write never straddle a change): then
    raise ``refusal()`` having written nothing. A row being deleted refuses every
    change (``deleting``): a stop or start racing a delete must not undo it."""
    blocked = DELETING if refuse is None else DELETING | refuse
    with transaction.atomic():
        rows = WaSession.objects.filter(pk=session.pk)
        if not rows.exclude(blocked).update(**changes) and rows.filter(blocked).exists():
            if refusal is None or rows.filter(DELETING).exists():
                raise _deleting()
            raise refusal()
        _log(session.pk, actor, message)
        _ring_after_commit(session.pk, message)


def start(session: WaSession, actor: str) -> None:
    """Run the session: resume its device, or ask for a QR round if it has none.

    Refused (``already_running``) when the row shows it running: connected,
    connecting, or in a QR round, whose code a new round would invalidate. The
    caller's copy may predate a pairing: a device linked since it was read is
    started as the linked device it now is, not refused as "linked".
    """
    if not session.jid:
        try:
            _new_round(
                session, actor, "asked to start; a new QR code", RUNNING_NOW | LINKED, phone=""
            )
            return
        except IntentRefused as refused:
            if refused.code != "linked":
                raise
            session = WaSession.objects.get(pk=session.pk)  # linked meanwhile
            if not session.jid:  # and unlinked again: the refusal stands
                raise
    _update(
        session,
        actor,
        "asked to start",
        RUNNING_NOW,
        lambda: _already_running(session.pk),
        desired_state=Desired.RUNNING,
        connect_request=F("connect_request") + 1,
    )


def stop(session: WaSession, actor: str) -> None:
    """Close the connection and keep it closed; the device stays linked."""
    _update(session, actor, "asked to stop", desired_state=Desired.STOPPED)


def _new_round(session: WaSession, actor: str, message: str, refuse: Q, phone: str) -> None:
    def refusal() -> IntentRefused:
        linked = WaSession.objects.filter(pk=session.pk).exclude(jid="").exists()
        return _linked() if linked else _already_running(session.pk)

    _update(
        session,
        actor,
        message,
        refuse,
        refusal,
        desired_state=Desired.RUNNING,
        pair_request=F("pair_request") + 1,
        pair_phone=phone,
    )


def new_qr(session: WaSession, actor: str) -> None:
    """Start a new QR round (pairing a new device) now; a round under way is replaced.

    Refused (``linked``) for a linked session: the old device would stay linked
    and use up one of the phone's linked-device slots. Log it out first.
    """
    _new_round(session, actor, "asked for a new QR code", LINKED, phone="")


def pair_by_phone(session: WaSession, phone: str, actor: str) -> None:
    """Start a new pairing round that links by phone number (a code to type in).

    Refused (``linked``) like :func:`new_qr`.
    """
    message = f"asked for a pairing code for a phone number ending in {phone[-2:]}"
    _new_round(session, actor, message, LINKED, phone=phone)


def logout(session: WaSession, actor: str) -> None:
    """Unlink the device from WhatsApp and forget its credentials."""
    _update(session, actor, "asked to log out", desired_state=Desired.LOGGED_OUT)


def delete(session: WaSession, actor: str) -> None:
    """Delete the session: a supervisor closes it, unlinks its device, removes the row.

    The row stays (shown as "deleting") until a supervisor has removed the
    device's credentials, so no linked device is ever left behind unknown.
    """
    with transaction.atomic():  # a second delete changes nothing, and is no error
        if not WaSession.objects.filter(pk=session.pk).update(desired_state=Desired.DELETED):
            # A supervisor finished an earlier deletion since the caller read the
            # row: the deletion asked for has happened; no row to log it against.
            return
        _log(session.pk, actor, "asked to delete the session")
        _ring_after_commit(session.pk, "asked to delete the session")


def phone_gesture(session: WaSession, gesture: str, actor: str) -> None:
    """Ask the simulated phone to scan, log out, drop or replace (simulated driver only)."""
    if gesture not in PhoneAction.Gesture.values:
        raise ValueError(f"unknown gesture {gesture!r}")
    if gesture == PhoneAction.Gesture.MESSAGE:
        raise ValueError("a peer's message needs its sender and text: use peer_message")
    with transaction.atomic():
        PhoneAction.objects.create(session=session, gesture=gesture)
        _log(session.pk, actor, f"simulated phone: {gesture}")
        _ring_after_commit(session.pk, f"phone {gesture}")


def peer_message(
    session: WaSession, sender: str, text: str, actor: str, push_name: str = ""
) -> None:
    """A peer's phone (``sender``: digits with the country code, "+" allowed) sends
    ``text`` to the session (simulated driver only). The simulated WhatsApp delivers
    it when the session is connected, or holds it until it is; a session with no
    linked device has no number to message, which its event log then says. The
    text is never logged (the event log names the gesture only)."""
    payload = {"from": sender, "text": text, "push_name": push_name}
    with transaction.atomic():
        PhoneAction.objects.create(
            session=session, gesture=PhoneAction.Gesture.MESSAGE, payload=payload
        )
        _log(session.pk, actor, "simulated phone: a peer sent a message")
        _ring_after_commit(session.pk, "phone message")
