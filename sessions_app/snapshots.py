"""What a browser is shown of a session: one JSON-ready dict, built from the DB row.

The same function serves the first page render, the WebSocket snapshot on connect
and every push, so a late joiner and a live watcher see exactly the same thing.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import segno
from django.db import connection

from sessions_app.models import SessionEvent, WaSession
from sessions_app.states import State

EVENTS_SHOWN = 20

STATE_LABELS: dict[str, str] = {
    State.STOPPED: "Stopped",
    State.CONNECTING: "Connecting",
    State.QR_REQUIRED: "Scan the QR code",
    State.PAIRING: "Pairing",
    State.CONNECTED: "Connected",
    State.DEGRADED: "Degraded",
    State.DISCONNECTED: "Disconnected",
    State.ERROR: "Error",
    State.LOGGED_OUT: "Logged out",
    State.QR_TIMEOUT: "QR expired",
    State.REPLACED: "Replaced",
    State.BANNED: "Banned",
}


@functools.lru_cache(maxsize=256)
def qr_svg(code: str) -> str:
    """The QR code as inline SVG, for a page rendered server-side (the first render;
    the pushes carry the code and the page draws it).

    The mask is fixed (any of the eight is valid and scans) because choosing the
    best one costs ~10 ms of CPU per code (the page draws with the same mask).
    """
    qr = segno.make_qr(code, error="l", mask=0)
    return qr.svg_inline(scale=5, border=2, dark="#111", light="#fff")


def _ms(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def phone_number(jid: str) -> str:
    """``"4915112345678:12@s.whatsapp.net"`` → ``"+4915112345678"``."""
    user = jid.split("@", 1)[0].split(":", 1)[0]
    return f"+{user}" if user.isdigit() else user


def event_dict(event: SessionEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "at": _ms(event.at),
        "kind": event.kind,
        "message": event.message,
        "from": event.from_state,
        "to": event.to_state,
        "actor": event.actor,
    }


def row(session: WaSession) -> dict[str, Any]:
    """The compact form the list page needs (no QR)."""
    return {
        "id": session.pk,
        "name": session.name,
        "state": session.state,
        "state_label": STATE_LABELS.get(session.state, session.state),
        "desired_state": session.desired_state,
        "phone": phone_number(session.jid) if session.jid else "",
        "push_name": session.push_name,
        "version": session.version,
    }


def latest_events(session_id: int) -> list[SessionEvent]:
    """The session's :data:`EVENTS_SHOWN` newest events, newest first: one plain SELECT
    (every state change's snapshot reads them on its way to the browser; the ORM's
    compiling took twice the query's time)."""
    table = connection.ops.quote_name(SessionEvent._meta.db_table)
    sql = f"SELECT * FROM {table} WHERE session_id = %s ORDER BY at DESC, id DESC LIMIT %s"
    return list(SessionEvent.objects.raw(sql, [session_id, EVENTS_SHOWN]))


def snapshot(session: WaSession, *, with_events: bool = True) -> dict[str, Any]:
    """Everything the detail page shows. The QR code as its text (``qr_code``, empty
    when none is shown): the page draws it (session.js), so no SVG is made on the
    way from WhatsApp to the browser (segno took ~5 ms of CPU a code there). A
    snapshot travels through the channel layer to the pages' sockets and the API's
    long polls (which answer without the code), never to a log.
    """
    showing_qr = session.state == State.QR_REQUIRED and bool(session.qr_code)
    data = row(session) | {
        "qr_code": session.qr_code if showing_qr else "",
        "qr_issued_at": _ms(session.qr_issued_at) if showing_qr else None,
        "qr_expires_at": _ms(session.qr_expires_at) if showing_qr else None,
        "pairing_code": session.pairing_code if session.state == State.QR_REQUIRED else "",
        "last_error": session.last_error,
        "retry_count": session.retry_count,
        "next_retry_at": _ms(session.next_retry_at),
        "banned_until": _ms(session.banned_until),
        "lease_owner": session.lease_owner,
    }
    if with_events:
        data["events"] = [event_dict(e) for e in latest_events(session.pk)]
    return data
