"""Session state as the database holds it: intent, observation, lease, event log.

Intent columns (``desired_state``, ``pair_request``, ``pair_phone``,
``connect_request``) are written by the web side only, through
:mod:`sessions_app.intents`; the one exception is ``pair_phone``, a round
request's payload, which the lease holder clears when that round ends
(:func:`sessions_app.event_mapping.round_ended`). Observation and lease columns
are written by the supervisor that holds the lease only, through
:mod:`sessions_app.leases`. Nothing else writes either.
"""

from __future__ import annotations

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower, Now
from django.utils import timezone

from sessions_app import names
from sessions_app.policy import ROUND_STATES
from sessions_app.states import LIVE_STATES, WAITS_FOR_ADMIN, Desired, State


class SessionQuerySet(models.QuerySet["WaSession"]):
    def needing_owner(self) -> SessionQuerySet:
        """Sessions for which an owner has something to do.

        The SQL twin of :func:`sessions_app.policy.needs_owner`; a unit test
        checks the two agree on every combination of inputs. Its only clock is the
        database's (``Now()``), so its SQL can be compiled once and kept
        (:mod:`sessions_app.compiled_sql`).
        """
        has_creds = ~Q(jid="")
        pair_pending = Q(pair_request__gt=F("pair_served"))
        connect_pending = Q(connect_request__gt=F("connect_served"))
        ban_active = Q(state=State.BANNED, banned_until__gt=Now())
        waiting = Q(state__in=list(WAITS_FOR_ADMIN))
        in_round = (
            Q(qr_round_started_at__isnull=False) & ~has_creds & Q(state__in=list(ROUND_STATES))
        )
        running = Q(desired_state=Desired.RUNNING) & (
            pair_pending
            | in_round
            | (
                ~ban_active
                & (
                    (waiting & connect_pending & has_creds)
                    | (~waiting & has_creds)
                    | (~waiting & Q(state__in=list(LIVE_STATES)))
                )
            )
        )
        stopping = Q(desired_state=Desired.STOPPED) & ~Q(state=State.STOPPED)
        deleting = Q(desired_state=Desired.DELETED)
        logging_out = Q(desired_state=Desired.LOGGED_OUT) & (has_creds | ~Q(state=State.LOGGED_OUT))
        return self.filter(running | stopping | logging_out | deleting)

    def lease_free(self) -> SessionQuerySet:
        """Sessions nobody holds a live lease on (expiry judged by the database's clock)."""
        return self.filter(Q(lease_owner="") | Q(lease_expires_at__lt=Now()))

    def claimable(self) -> SessionQuerySet:
        """Sessions a supervisor may claim now."""
        return self.needing_owner().lease_free()


class WaSession(models.Model):
    """One WhatsApp linked device that waconnect keeps connected."""

    # Unique in any case: a database constraint (Meta), so every writer is held to it.
    name = models.CharField(
        max_length=names.MAX_LENGTH,
        validators=[names.validate_session_name],
        help_text=names.HELP_TEXT,
    )

    # Intent: written by pages, the admin and management commands only.
    desired_state = models.CharField(
        max_length=16,
        choices=[(d.value, d.name.title()) for d in Desired],
        default=Desired.RUNNING,
    )
    pair_request = models.PositiveIntegerField(
        default=0, help_text="Bumped each time an admin asks for a QR round."
    )
    connect_request = models.PositiveIntegerField(
        default=0, help_text="Bumped each time an admin presses start or reconnect."
    )
    pair_phone = models.CharField(
        max_length=16,
        blank=True,
        help_text=(
            "Link by phone number instead of QR (E.164): the payload of the pending QR "
            "round request; the owner clears it when the round that used it ends."
        ),
    )

    # Observation: written by the lease holder only.
    state = models.CharField(
        max_length=16,
        choices=[(s.value, s.value.replace("_", " ")) for s in State],
        default=State.STOPPED,
        db_index=True,
    )
    state_changed_at = models.DateTimeField(default=timezone.now)
    pair_served = models.PositiveIntegerField(
        default=0, help_text="The QR round request last started (or dropped)."
    )
    connect_served = models.PositiveIntegerField(
        default=0, help_text="The start request last served (or dropped)."
    )
    qr_round_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When the QR round under way began; empty: none."
    )
    recent_connects = models.JSONField(
        default=list,
        blank=True,
        help_text="When the last connection attempts were made (epoch seconds): the ceiling.",
    )
    qr_code = models.TextField(blank=True)
    qr_issued_at = models.DateTimeField(null=True, blank=True)
    qr_expires_at = models.DateTimeField(null=True, blank=True)
    pairing_code = models.CharField(max_length=16, blank=True)
    jid = models.CharField("JID", max_length=128, blank=True)
    push_name = models.CharField(max_length=128, blank=True)
    last_error = models.TextField(blank=True)
    retry_count = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    banned_until = models.DateTimeField(null=True, blank=True)
    version = models.PositiveBigIntegerField(
        default=0, help_text="Grows with every observed change; browsers drop stale pushes."
    )

    # Lease: written by supervisors through sessions_app.leases only.
    lease_owner = models.CharField(max_length=128, blank=True, db_index=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_epoch = models.PositiveBigIntegerField(
        default=0, help_text="Fencing number: grows with every claim."
    )

    created_at = models.DateTimeField(auto_now_add=True)

    objects = SessionQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "WhatsApp session"
        constraints = [
            models.UniqueConstraint(
                Lower("name"),
                name="wasession_name_ci_unique",
                violation_error_code=names.TAKEN_CODE,
                violation_error_message=names.TAKEN_MESSAGE,
            )
        ]

    def __str__(self) -> str:
        return self.name

    def validate_constraints(self, exclude: set[str] | None = None) -> None:
        """As Django's, but a taken name is reported on the ``name`` field (forms show it there)."""
        try:
            super().validate_constraints(exclude)
        except ValidationError as error:
            errors = error.update_error_dict({})
            general = errors.get(NON_FIELD_ERRORS, [])
            taken = [e for e in general if getattr(e, "code", None) == names.TAKEN_CODE]
            if taken:
                errors[NON_FIELD_ERRORS] = [e for e in general if e not in taken]
                if not errors[NON_FIELD_ERRORS]:
                    del errors[NON_FIELD_ERRORS]
                errors.setdefault("name", []).extend(taken)
            raise ValidationError(errors) from None

    @property
    def pair_pending(self) -> bool:
        return self.pair_request > self.pair_served

    @property
    def connect_pending(self) -> bool:
        return self.connect_request > self.connect_served


class SessionEvent(models.Model):
    """One line of a session's append-only history: what happened, why, who asked."""

    class Kind(models.TextChoices):
        INTENT = "intent", "Intent"
        STATE = "state", "State change"
        ERROR = "error", "Error"
        LEASE = "lease", "Lease"
        INFO = "info", "Info"

    session = models.ForeignKey(WaSession, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16, blank=True)
    message = models.CharField(max_length=500)
    actor = models.CharField(
        max_length=150, help_text="Who caused it: a username, or supervisor:<owner>."
    )
    epoch = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="The lease (fencing number) a supervisor wrote this under; empty for people.",
    )

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["session", "-at"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind}: {self.message}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValueError("session events are append-only")
        super().save(*args, **kwargs)


class PhoneAction(models.Model):
    """A gesture of the simulated phone (scan, log out, …) waiting for the supervisor.

    Exists only for the simulated driver: the web page and the ``simulate_phone``
    command may run in another process than the supervisor, so the gesture is a
    row (truth) plus a ring (doorbell), like every other request.
    """

    class Gesture(models.TextChoices):
        SCAN = "scan", "Scan the QR code"
        LOGOUT = "logout", "Log out from the phone"
        DISCONNECT = "disconnect", "Drop the network connection"
        REPLACE = "replace", "Connect the device somewhere else"
        MESSAGE = "message", "A peer sends a message"

    session = models.ForeignKey(WaSession, on_delete=models.CASCADE, related_name="+")
    gesture = models.CharField(max_length=16, choices=Gesture.choices)
    payload = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "What the gesture needs: for 'message', the peer's number ('from'), the "
            "text and the peer's push name. Never logged; deleted once applied."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.gesture} on {self.session_id}"


class SupervisorPresence(models.Model):
    """A running supervisor, renewed with its leases: who is there to share the work.

    Each supervisor claims no more than its fair share of the sessions that need an
    owner, counted over the supervisors whose presence has not expired, and hands
    over what it holds beyond that share when another one joins.
    """

    owner = models.CharField(max_length=128, unique=True)
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(help_text="Gone unless renewed by then (database clock).")
    max_sessions = models.PositiveIntegerField(help_text="This supervisor's cap.")
    sessions = models.PositiveIntegerField(default=0, help_text="Leases held at the last renewal.")

    class Meta:
        ordering = ["started_at"]
        verbose_name = "supervisor"

    def __str__(self) -> str:
        return self.owner
