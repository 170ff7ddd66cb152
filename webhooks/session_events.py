"""``session.status`` and ``session.qr`` events, emitted from the owner's fenced writes.

:mod:`sessions_app.leases` calls these inside the transaction of the fenced UPDATE
that made the change (after it matched its row): the event commits with the
state it reports, or not at all. Pure mapping from the write to the event data.

``session.status`` carries every observed state change with its cause (the
event-log sentence) and who made it; ``session.qr`` a new QR code, for endpoints
that opted in. The QR string goes only into the payload, never into a log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from webhooks import outbox
from webhooks.models import Endpoint


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return None


def status_changed(
    session_id: int,
    previous: str,
    state: str,
    cause: str,
    actor: str,
    epoch: int,
    at: dt.datetime | None = None,
    candidates: Sequence[Endpoint] | None = None,
) -> None:
    """Emit ``session.status`` for a state change (or a re-entry, e.g. a reconnect)."""
    outbox.emit(
        "session.status",
        session_id,
        {
            "state": state,
            "previous_state": previous,
            "cause": cause,
            "actor": actor,
            "lease_epoch": epoch,
            "at": _iso(at),
        },
        candidates=candidates,
    )


def fenced_write(
    session_id: int,
    fields: Mapping[str, Any],
    kind: str | None,
    previous: str,
    state: str,
    cause: str,
    actor: str,
    epoch: int,
) -> bool | None:
    """The events of one fenced write: its state change (a ``state`` event-log line)
    and a new QR code, in that order; the endpoints looked up once for both.

    Returns whether an endpoint listens to the session, or None when the write
    emits nothing (no lookup made).
    """
    changed, qr = _changed(kind, state), _new_qr(fields)
    if not (changed or qr):
        return None
    candidates = outbox.session_endpoints(session_id)
    if not candidates:
        return False
    if changed:
        status_changed(
            session_id,
            previous,
            state,
            cause,
            actor,
            epoch,
            fields.get("state_changed_at"),
            candidates,
        )
    if qr:
        outbox.emit(
            "session.qr",
            session_id,
            {
                "qr": qr,
                "issued_at": _iso(fields.get("qr_issued_at")),
                "expires_at": _iso(fields.get("qr_expires_at")),
            },
            candidates=candidates,
        )
    return True


def emits(fields: Mapping[str, Any], kind: str | None, state: str) -> bool:
    """Whether a fenced write of ``fields`` with an event-log line of ``kind`` (to
    ``state``) has events to emit: a state change, or a new QR code."""
    return _changed(kind, state) or bool(_new_qr(fields))


def _changed(kind: str | None, state: str) -> bool:
    return kind == "state" and bool(state)


def _new_qr(fields: Mapping[str, Any]) -> str:
    """The write's new QR code, or "" when it shows none."""
    qr = fields.get("qr_code")
    return qr if isinstance(qr, str) else ""


def deleted(session_id: int, name: str, state: str, actor: str, epoch: int) -> None:
    """The owner deleted the session: a last ``session.status`` with state ``deleted``."""
    outbox.emit(
        "session.status",
        session_id,
        {
            "state": "deleted",
            "previous_state": state,
            "cause": "deleted as asked",
            "actor": actor,
            "lease_epoch": epoch,
            "at": _iso(dt.datetime.now(dt.UTC)),
        },
        session_name=name,
    )
