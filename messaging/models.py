"""Messages in and out of a session, as the database holds them.

One table, :class:`Message`, for both directions. Field names are a contract (the
API, the page and the webhooks read them); keep them stable:

``session`` · ``direction`` (``in``/``out``) · ``ref`` (our id, exposed by the API) ·
``wa_id`` (WhatsApp's id) · ``chat`` · ``to`` · ``sender`` · ``sender_phone`` ·
``from_me`` · ``push_name`` · ``kind`` · ``text`` · ``status`` · ``failure_reason`` ·
``failure_detail`` · ``deadline`` · ``send_epoch`` · ``actor`` · ``created_at`` ·
``wa_timestamp`` · ``sending_at`` · ``sent_at`` · ``delivered_at`` · ``read_at`` ·
``status_changed_at`` · ``version``.

Who writes what (the same rule as sessions): the web side only *inserts* an
outbound row ``queued`` (:mod:`messaging.intents`); everything after that, and
every inbound row, is written by the session's lease holder through
:mod:`messaging.outbound` and :mod:`messaging.inbound`, fenced by its lease. The one
exception is expiry: a ``queued`` row past its ``deadline`` may be marked
``expired`` by anyone (a conditional UPDATE from ``queued``, so it races safely with
the owner taking it). The allowed status changes are :mod:`messaging.states`.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from messaging.states import Direction, Status
from sessions_app.models import WaSession


def new_ref() -> str:
    """A fresh client message id: 32 lowercase hex digits (a random UUID)."""
    return uuid.uuid4().hex


class Message(models.Model):
    """One WhatsApp message sent or received by a session."""

    session = models.ForeignKey(
        WaSession,
        on_delete=models.CASCADE,
        related_name="messages",
        help_text="The session (linked device) that sends or received it.",
    )
    direction = models.CharField(
        max_length=3,
        choices=[(d.value, d.name.title()) for d in Direction],
        help_text="out: asked for by a client, sent by the owner; in: seen on the connection.",
    )
    ref = models.CharField(
        max_length=64,
        unique=True,
        default=new_ref,
        editable=False,
        help_text=(
            "Our id for the message (32 hex digits), exposed by the API. Outbound, it is the "
            "client message id passed to the driver (a driver that can choose WhatsApp's id "
            "uses it)."
        ),
    )
    wa_id = models.CharField(
        "WhatsApp id",
        max_length=128,
        blank=True,
        help_text=(
            "WhatsApp's message id: set when an outbound message is sent (receipts name it); "
            "inbound, unique per session (whatsmeow redelivers after a reconnect)."
        ),
    )
    chat = models.CharField(
        max_length=128,
        blank=True,
        help_text="The chat's JID (the peer, or a group); outbound: the JID sent to.",
    )
    to = models.CharField(
        max_length=128,
        blank=True,
        help_text="Outbound: the recipient as asked (digits with country code, or a JID).",
    )
    sender = models.CharField(
        max_length=128, blank=True, help_text="Inbound: the sender's JID (may be an @lid)."
    )
    sender_phone = models.CharField(
        max_length=128,
        blank=True,
        help_text="Inbound: the sender's phone-number JID when WhatsApp gives one beside a LID.",
    )
    from_me = models.BooleanField(
        default=False,
        help_text="Sent by this account: every outbound row, and inbound ones from the phone.",
    )
    push_name = models.CharField(
        max_length=128, blank=True, help_text="Inbound: the sender's display name."
    )
    kind = models.CharField(
        max_length=16,
        default="text",
        help_text="text, or the media type (image, video, audio, document, sticker, …) or other.",
    )
    text = models.TextField(
        blank=True, help_text="The text, or a media message's caption. Never logged."
    )
    status = models.CharField(
        max_length=16,
        choices=[(s.value, s.value) for s in Status],
        help_text=(
            "Outbound: queued → sending → sent → delivered → read, or failed, expired, unknown "
            "(see messaging.states). Inbound: received."
        ),
    )
    failure_reason = models.CharField(
        max_length=32,
        blank=True,
        help_text=(
            "Why it failed, expired or is unknown: a SendFailed reason (not_on_whatsapp, "
            "invalid_recipient, rate_limited, not_connected, timeout, error), deadline, or "
            "owner_lost."
        ),
    )
    failure_detail = models.CharField(
        max_length=500, blank=True, help_text="More about the failure, for people; no text."
    )
    deadline = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Outbound: not sent by then, it expires (WACONNECT_MESSAGE_TTL by default).",
    )
    send_epoch = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text=(
            "The lease epoch under which sending was recorded; a later owner finding it "
            "sending under an older epoch marks it unknown and never resends it."
        ),
    )
    actor = models.CharField(
        max_length=150,
        blank=True,
        help_text="Outbound: who asked for it (a username or token:<name>).",
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="When the row was written (queued, or stored)."
    )
    wa_timestamp = models.DateTimeField(
        null=True,
        blank=True,
        help_text="WhatsApp's timestamp: its server's ack (outbound) or the peer's send (inbound).",
    )
    sending_at = models.DateTimeField(
        null=True, blank=True, help_text="When the owner took it and asked the driver."
    )
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When WhatsApp's acknowledgement was recorded."
    )
    delivered_at = models.DateTimeField(
        null=True, blank=True, help_text="The delivered receipt's time."
    )
    read_at = models.DateTimeField(null=True, blank=True, help_text="The read receipt's time.")
    status_changed_at = models.DateTimeField(
        default=timezone.now, help_text="When status last changed."
    )
    version = models.PositiveIntegerField(
        default=0, help_text="Grows with every change of the row; pages drop stale pushes."
    )

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The owner's queue: the oldest queued (or sending) message of a session.
            models.Index(fields=["session", "status", "id"], name="message_queue"),
            # A session's messages, newest first (the API's cursor pages, the panel).
            models.Index(fields=["session", "id"], name="message_by_session"),
            # Receipts name outbound messages by WhatsApp's id.
            models.Index(
                fields=["session", "wa_id"],
                name="message_out_wa_id",
                condition=Q(direction="out"),
            ),
            # The sweep of queued messages past their deadline, owned or not.
            models.Index(
                fields=["deadline"], name="message_queued_deadline", condition=Q(status="queued")
            ),
            # The outbound backlog by status and its oldest entry (the web tier's
            # /metrics, at every scrape): an index-only scan of the few unfinished rows,
            # however many sent ones the table keeps. The values of states.UNFINISHED.
            models.Index(
                fields=["status", "created_at"],
                name="message_out_unfinished",
                condition=Q(direction="out", status__in=["queued", "sending"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["session", "wa_id"],
                condition=Q(direction="in"),
                name="message_inbound_once",
            ),
        ]

    def __str__(self) -> str:  # never the text
        return f"{self.direction} {self.ref} ({self.status})"

    def __repr__(self) -> str:
        return (
            f"<Message id={self.pk} session={self.session_id} {self.direction} "
            f"ref={self.ref} status={self.status} text=<hidden>>"
        )
