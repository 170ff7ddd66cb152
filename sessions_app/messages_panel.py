"""The detail page's Messages panel: what it shows of a message, and its send form.

One shape, :func:`panel_item`, serves the server-rendered panel
(``templates/sessions_app/_messages.html``), the socket's list on (re)connect and
every pushed change (``consumers.SessionConsumer``), and the send form's answer,
so ``static/waconnect/messages.js`` renders them all alike::

    {ref, direction ("in" | "out"), status, status_label, tick, reason,
     kind, peer, text, at (ms since the epoch, when written), version}

Seeing messages needs what seeing the session needs (``view_wasession``);
sending needs ``change_wasession`` (the form is shown only then, and
:class:`SendMessageView` refuses anyone else with 403). The page never writes a
message itself: :func:`messaging.intents.enqueue` queues it and rings the owner.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django import forms
from django.contrib import messages as flash
from django.contrib.auth.mixins import PermissionRequiredMixin
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from messaging import intents as message_intents
from messaging.models import Message
from messaging.recipients import MAX_TEXT
from sessions_app import intents, permissions
from sessions_app.models import WaSession
from sessions_app.snapshots import phone_number
from sessions_app.states import Desired

#: How many messages the panel shows (newest first).
MESSAGES_SHOWN = 20
TO_MAX = 128
TEXT_MAX = MAX_TEXT

#: The tick for each status, as WhatsApp draws them (read: two blue ticks, by CSS).
TICKS: dict[str, str] = {
    "queued": "◷",
    "sending": "◷",
    "sent": "✓",
    "delivered": "✓✓",
    "read": "✓✓",
    "failed": "✕",
    "expired": "✕",
    "unknown": "?",
    "received": "",
}
LABELS: dict[str, str] = {
    "queued": "Queued",
    "sending": "Sending",
    "sent": "Sent",
    "delivered": "Delivered",
    "read": "Read",
    "failed": "Failed",
    "expired": "Expired",
    "unknown": "Unknown",
    "received": "Received",
}
#: ``failure_reason`` for people.
REASONS: dict[str, str] = {
    "not_on_whatsapp": "the number is not on WhatsApp",
    "invalid_recipient": "not a valid recipient",
    "rate_limited": "WhatsApp rate-limited the account",
    "not_connected": "the session was not connected",
    "timeout": "WhatsApp did not answer in time; it may have gone out (never resent)",
    "error": "WhatsApp or the connection failed",
    "deadline": "not sent before its deadline",
    "owner_lost": "its sender stopped mid-send; it may have gone out (never resent)",
}
#: Statuses that show their reason under the tick.
WITH_REASON = frozenset({"failed", "expired", "unknown"})


def _field(message: Message | Mapping[str, Any], name: str, default: Any = "") -> Any:
    if isinstance(message, Mapping):
        return message.get(name, default)
    return getattr(message, name, default)


def _ms(value: Any) -> int:
    """A datetime, an ISO 8601 string or milliseconds → milliseconds (0 if unknown)."""
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value:
        try:
            return int(dt.datetime.fromisoformat(value).timestamp() * 1000)
        except ValueError:
            return 0
    return 0


def _peer(message: Message | Mapping[str, Any]) -> str:
    if _field(message, "direction") == "out":
        return str(_field(message, "to") or _field(message, "chat"))
    jid = str(_field(message, "sender_phone") or _field(message, "sender") or "")
    number = phone_number(jid) if jid else ""
    name = str(_field(message, "push_name") or "")
    if _field(message, "from_me"):
        name = "this phone"
    if name and number:
        return f"{name} ({number})"
    return name or number or "unknown sender"


def _reason(status: str, reason: str, detail: str) -> str:
    if status not in WITH_REASON:
        return ""
    text = REASONS.get(reason, reason.replace("_", " ")) if reason else ""
    if status == "expired" and not text:
        text = REASONS["deadline"]
    if detail and reason in ("", "error"):
        text = f"{text}: {detail}" if text else detail
    return f"{LABELS[status]}: {text}" if text else LABELS[status]


def panel_item(message: Message | Mapping[str, Any]) -> dict[str, Any]:
    """What the panel shows of a message: a row, or the field dict a push carries."""
    status = str(_field(message, "status"))
    return {
        "ref": str(_field(message, "ref")),
        "direction": str(_field(message, "direction")),
        "status": status,
        "status_label": LABELS.get(status, status),
        "tick": TICKS.get(status, ""),
        "reason": _reason(
            status,
            str(_field(message, "failure_reason") or ""),
            str(_field(message, "failure_detail") or ""),
        ),
        "kind": str(_field(message, "kind") or "text"),
        "peer": _peer(message),
        "text": str(_field(message, "text") or ""),
        "at": _ms(_field(message, "created_at", None)),
        "version": int(_field(message, "version", 0) or 0),
    }


def recent(session_id: int) -> list[dict[str, Any]]:
    """The panel's messages for a session, newest first: one plain SELECT (the
    detail page's render for the create's answer is on the way from "create" to
    the QR code, and the ORM's compiling took more than the query, 0.88 against
    0.38 ms on PostgreSQL; docs/benchmarks.md)."""
    table = connection.ops.quote_name(Message._meta.db_table)
    sql = f"SELECT * FROM {table} WHERE session_id = %s ORDER BY id DESC LIMIT %s"
    return [panel_item(m) for m in Message.objects.raw(sql, [session_id, MESSAGES_SHOWN])]


def context(session: WaSession, user: Any) -> dict[str, Any]:
    """The template's ``message_panel``."""
    return {
        "items": recent(session.pk),
        "shown": MESSAGES_SHOWN,
        "can_send": permissions.can(user, permissions.CHANGE),
        "to_max": TO_MAX,
        "text_max": TEXT_MAX,
    }


class SendMessageForm(forms.Form):
    to = forms.CharField(max_length=TO_MAX)
    text = forms.CharField(max_length=TEXT_MAX, widget=forms.Textarea)


@method_decorator(never_cache, name="dispatch")
class SendMessageView(PermissionRequiredMixin, View):
    """POST (CSRF-protected) the panel's form: queue a message, as the API does.

    Needs an active staff user who may see the session and change it (403
    otherwise, anonymous users to the login). Answers JSON ``{ok, message, item}``
    (or ``{ok: false, error}`` with 400/409) to the page's script, a redirect to
    a plain form post.
    """

    http_method_names = ["post"]
    permission_required = permissions.CHANGE

    def has_permission(self) -> bool:
        user = self.request.user
        return permissions.can_view(user) and permissions.can(user, permissions.CHANGE)

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        session = get_object_or_404(WaSession, pk=pk)
        target = reverse("sessions:detail", args=[pk])
        wants_json = "application/json" in request.headers.get("Accept", "")
        form = SendMessageForm(request.POST)
        if session.desired_state == Desired.DELETED:
            return _answer(request, wants_json, target, "This session is being deleted.", 409)
        if not form.is_valid():
            errors = [f"{name}: {' '.join(errs)}" for name, errs in form.errors.items()]
            return _answer(request, wants_json, target, " ".join(errors), 400)
        try:
            message = message_intents.enqueue(
                session,
                form.cleaned_data["to"],
                form.cleaned_data["text"],
                actor=request.user.get_username(),
            )
        except ValidationError as invalid:
            return _answer(request, wants_json, target, " ".join(invalid.messages), 400)
        except intents.IntentRefused as refused:
            return _answer(request, wants_json, target, refused.message, 409)
        text = "Queued: it goes out as soon as the session is connected."
        if wants_json:
            return JsonResponse({"ok": True, "message": text, "item": panel_item(message)})
        flash.success(request, text)
        return redirect(target)


def _answer(
    request: HttpRequest, wants_json: bool, target: str, error: str, status: int
) -> HttpResponse:
    if wants_json:
        return JsonResponse({"ok": False, "error": error}, status=status)
    flash.error(request, error)
    return redirect(target)
