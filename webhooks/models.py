"""Webhook endpoints, the events they hear about, and one delivery per (event, endpoint).

Invariants:

- An :class:`Event` and its :class:`Delivery` rows are written in the transaction of
  the change they report (:mod:`webhooks.outbox`): never one without the other.
- Only a lane's head is scheduled: the others of the lane have no
  ``next_attempt_at`` until the one before them is delivered or dead, so finding
  due deliveries never reads a lane's queue.
- A delivery's *lane* is ``(endpoint, session_id)``; within a lane only the pending
  or delivering delivery with the lowest ``seq`` may be attempted
  (:mod:`webhooks.delivery`), so a receiver sees a session's events in order.
- ``Event.session_id`` is a plain number, not a foreign key: a deleted session's
  events (its deletion among them) are still delivered.
- A secret is shown once (when made or rotated) and never logged: ``repr`` and
  ``str`` leave it out.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid

from django.db import models
from django.utils import timezone

#: The event types, and what each reports (docs/webhooks.md has the payloads).
EVENT_TYPES: dict[str, str] = {
    "session.status": "A session's observed state changed (with the cause)",
    "session.qr": "A new QR code to show (opt-in: only endpoints that list it)",
    "message.received": "A message arrived on a session",
    "message.status": "An outgoing message was sent, failed, delivered, read or played",
    "webhook.test": "A test event sent from the admin or the API (only to that endpoint)",
}
#: Types an endpoint hears only if it lists them (an empty list means "all the others").
OPT_IN_TYPES = frozenset({"session.qr"})
#: Types never fanned out by :func:`webhooks.outbox.emit` to endpoints by their filter.
DIRECT_TYPES = frozenset({"webhook.test"})

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_event_id() -> str:
    """A stable, unique event id; the ``webhook-id`` of every attempt."""
    return f"evt_{uuid.uuid4().hex}"


def wants(event_types: list[str], event_type: str) -> bool:
    """Whether an endpoint with this type filter hears ``event_type``.

    An empty filter means every type except the opt-in ones (``session.qr``).
    """
    if event_type in DIRECT_TYPES:
        return False
    if event_type in event_types:
        return True
    return not event_types and event_type not in OPT_IN_TYPES


class Endpoint(models.Model):
    url = models.URLField("URL", max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(
        default=list,
        blank=True,
        help_text="Event types to send; empty: all except the opt-in ones (session.qr).",
    )
    all_sessions = models.BooleanField(default=True)
    sessions = models.ManyToManyField("sessions_app.WaSession", blank=True, related_name="+")
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    secret = models.CharField(max_length=100, default=new_secret, editable=False)
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="First failure since the last success."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.description or self.url

    def __repr__(self) -> str:  # never the secrets
        return f"<Endpoint {self.pk} {self.url!r} enabled={self.enabled}>"

    def clean(self) -> None:
        """The SSRF guard and the type filter, for every form that saves an endpoint."""
        from django.core.exceptions import ValidationError

        from webhooks.endpoints import check_event_types, check_url

        try:
            if self.url:
                check_url(self.url)
        except ValidationError as exc:
            raise ValidationError({"url": exc.messages}) from None
        try:
            self.event_types = check_event_types(self.event_types or [])
        except ValidationError as exc:
            raise ValidationError({"event_types": exc.messages}) from None

    def signing_secrets(self, now: dt.datetime | None = None) -> list[str]:
        """The secrets that sign now: the current one, and the previous one during
        the overlap after a rotation."""
        now = now or timezone.now()
        keys = [self.secret]
        if self.previous_secret and (
            self.previous_secret_expires_at is not None and self.previous_secret_expires_at > now
        ):
            keys.append(self.previous_secret)
        return keys

    def rotate_secret(self, overlap: float, now: dt.datetime | None = None) -> str:
        """Make a new secret (returned, to show once); the old one also signs for
        ``overlap`` seconds. Saves the endpoint."""
        now = now or timezone.now()
        self.previous_secret = self.secret if overlap > 0 else ""
        self.previous_secret_expires_at = now + dt.timedelta(seconds=overlap) if overlap else None
        self.secret = new_secret()
        self.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
        return self.secret


class SessionSequence(models.Model):
    """The last sequence number given to a session's events (a counter row per session).

    Incremented by one UPDATE in the emitting transaction: the row lock serialises
    concurrent emitters of one session, and a rollback takes the number back, so
    the numbers of committed events have no gaps and no repeats.
    """

    session_id = models.BigIntegerField(primary_key=True)
    last = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"session {self.session_id}: {self.last}"


class Event(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_event_id, editable=False)
    type = models.CharField(max_length=40, db_index=True)
    session_id = models.BigIntegerField(null=True, blank=True)
    session_name = models.CharField(max_length=64, blank=True)
    seq = models.BigIntegerField(null=True, blank=True, help_text="Per-session sequence number.")
    payload = models.JSONField(help_text="The body sent, as JSON.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["session_id", "seq"], name="webhooks_event_session_seq")
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} ({self.id})"

    def __repr__(self) -> str:  # the payload may carry a QR code or a message text
        return f"<Event {self.id} {self.type} session={self.session_id} seq={self.seq}>"


class Delivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERING = "delivering"
        DELIVERED = "delivered"
        DEAD = "dead"

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    # The lane is (endpoint, session_id); 0 for events of no session (webhook.test).
    session_id = models.BigIntegerField(default=0)
    seq = models.BigIntegerField(default=0)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        null=True,
        blank=True,
        default=timezone.now,
        help_text="When it may be attempted; empty while an earlier one of its lane is unfinished.",
    )
    claim_owner = models.CharField(max_length=200, blank=True)
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    last_response = models.CharField(
        max_length=1000, blank=True, help_text="The start of the receiver's last answer."
    )
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["endpoint", "session_id", "seq"], name="webhooks_lane"),
            models.Index(fields=["status", "next_attempt_at"], name="webhooks_due"),
            # A lane's unfinished ones only: the claim's "nothing earlier unfinished"
            # probe and the lane's next (promote, the emitter's "busy?") read these, not
            # the lane's history. Without it a claim on a 3,000 backlog took 89 ms (the
            # planner, on fresh statistics, scanned every unfinished row per candidate).
            models.Index(
                fields=["endpoint", "session_id", "seq"],
                name="webhooks_lane_open",
                condition=models.Q(status__in=["pending", "delivering"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="webhooks_one_per_endpoint")
        ]

    def __str__(self) -> str:
        return f"{self.event_id} → endpoint {self.endpoint_id}: {self.status}"
