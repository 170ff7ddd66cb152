"""The web side's only way to change a session: write intent, log who asked, ring.

Views, the Django admin and management commands call these functions; none of
them writes an observed column, opens a connection or imports a driver. Each
update touches intent columns only (``update()``, never ``save()`` of a whole row,
which would overwrite the supervisor's observation with a stale copy).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import F

from sessions_app import doorbell
from sessions_app.models import PhoneAction, SessionEvent, WaSession
from sessions_app.states import Desired

logger = logging.getLogger(__name__)


class IntentRefused(Exception):
    """The request makes no sense in the session's current state; nothing was written."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _log(session_id: int, actor: str, message: str) -> None:
    SessionEvent.objects.create(
        session_id=session_id, kind=SessionEvent.Kind.INTENT, message=message, actor=actor
    )
    logger.info("%s: %s", actor, message, extra={"session": session_id})


def _ring_after_commit(session_id: int, reason: str) -> None:
    transaction.on_commit(lambda: doorbell.ring_supervisors_sync(session_id, reason))


def create_session(name: str, actor: str) -> WaSession:
    """A new session that should run, with a QR round requested for it."""
    with transaction.atomic():
        session = WaSession.objects.create(name=name, desired_state=Desired.RUNNING, pair_request=1)
        _log(session.pk, actor, "created the session and asked for a QR code")
        _ring_after_commit(session.pk, "created")
    return session


def _update(session: WaSession, actor: str, message: str, **changes: object) -> None:
    with transaction.atomic():
        WaSession.objects.filter(pk=session.pk).update(**changes)
        _log(session.pk, actor, message)
        _ring_after_commit(session.pk, message)


def start(session: WaSession, actor: str) -> None:
    """Run the session: resume its device, or ask for a QR round if it has none."""
    if session.jid:
        _update(
            session,
            actor,
            "asked to start",
            desired_state=Desired.RUNNING,
            connect_request=F("connect_request") + 1,
        )
    else:
        new_qr(session, actor)


def stop(session: WaSession, actor: str) -> None:
    """Close the connection and keep it closed; the device stays linked."""
    _update(session, actor, "asked to stop", desired_state=Desired.STOPPED)


def new_qr(session: WaSession, actor: str) -> None:
    """Start a new QR round (pairing a new device) now."""
    _update(
        session,
        actor,
        "asked for a new QR code",
        desired_state=Desired.RUNNING,
        pair_request=F("pair_request") + 1,
        pair_phone="",
    )


def pair_by_phone(session: WaSession, phone: str, actor: str) -> None:
    """Start a new pairing round that links by phone number (a code to type in)."""
    _update(
        session,
        actor,
        f"asked for a pairing code for a phone number ending in {phone[-2:]}",
        desired_state=Desired.RUNNING,
        pair_request=F("pair_request") + 1,
        pair_phone=phone,
    )


def logout(session: WaSession, actor: str) -> None:
    """Unlink the device from WhatsApp and forget its credentials."""
    _update(session, actor, "asked to log out", desired_state=Desired.LOGGED_OUT)


def delete(session: WaSession, actor: str) -> None:
    """Delete the session: a supervisor closes it, unlinks its device, removes the row.

    The row stays (shown as "deleting") until a supervisor has removed the
    device's credentials, so no linked device is ever left behind unknown.
    """
    _update(session, actor, "asked to delete the session", desired_state=Desired.DELETED)


def phone_gesture(session: WaSession, gesture: str, actor: str) -> None:
    """Ask the simulated phone to scan, log out, drop or replace (simulated driver only)."""
    if gesture not in PhoneAction.Gesture.values:
        raise ValueError(f"unknown gesture {gesture!r}")
    with transaction.atomic():
        PhoneAction.objects.create(session=session, gesture=gesture)
        _log(session.pk, actor, f"simulated phone: {gesture}")
        _ring_after_commit(session.pk, f"phone {gesture}")
