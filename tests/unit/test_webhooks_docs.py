"""docs/webhooks.md's JSON examples have the fields the events really carry: the
envelope, and each type's ``data`` (made here by the code that makes it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from messaging import signals
from messaging.models import Message
from sessions_app.models import WaSession
from webhooks import message_events, outbox, session_events
from webhooks.models import Endpoint, Event

pytestmark = pytest.mark.django_db

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
#: A key the message.status example uses for "the rest as in message.received".
ELLIPSIS = "…"


def documented() -> dict[str, dict[str, Any]]:
    """Each event type's example body (the envelope example has no type of its own)."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.DOTALL)
    examples = [json.loads(block) for block in blocks]
    assert len(examples) >= 6, "docs/webhooks.md lost its JSON examples"
    return {e["type"]: e for e in examples if e["data"]}  # the envelope's data is {}


def made() -> dict[str, dict[str, Any]]:
    """A body of each type, as the code makes it."""
    session = WaSession.objects.create(name="sales-team")
    Endpoint.objects.create(url="http://127.0.0.1:9/hook", event_types=["session.status"])
    qr_hook = Endpoint.objects.create(url="http://127.0.0.1:9/qr", event_types=["session.qr"])
    now = timezone.now()
    session_events.status_changed(session.pk, "pairing", "connected", "connected", "me", 7, now)
    session_events.fenced_write(
        session.pk,
        {"qr_code": "2@abc", "qr_issued_at": now, "qr_expires_at": now},
        None,
        "",
        "",
        "",
        "",
        1,
    )
    Endpoint.objects.create(
        url="http://127.0.0.1:9/messages", event_types=["message.received", "message.status"]
    )
    message = Message.objects.create(
        session=session, direction="in", status="received", chat="4917@s.whatsapp.net",
        wa_id="3EB0", text="hi",
    )  # fmt: skip
    message_events.on_messages_changed(None, [message], signals.RECEIVED)
    message.status = "delivered"
    message_events.on_messages_changed(None, [message], signals.STATUS)
    bodies = {e.type: e.payload for e in Event.objects.all()}
    bodies["webhook.test"] = outbox.emit_test(qr_hook).payload
    return bodies


def test_every_documented_payload_has_the_fields_the_code_sends() -> None:
    docs, real = documented(), made()
    assert set(docs) == {"session.status", "session.qr", "message.received", "message.status",
                         "webhook.test"}  # fmt: skip
    for kind, example in docs.items():
        assert set(example) == set(real[kind]), kind
        fields = set(example["data"])
        if ELLIPSIS in fields:  # a shortened example: what it shows must exist
            assert fields - {ELLIPSIS} <= set(real[kind]["data"]), kind
        else:
            assert fields == set(real[kind]["data"]), kind
