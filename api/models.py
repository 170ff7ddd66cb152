"""API tokens and remembered idempotent answers.

A token is ``wac_<prefix>_<secret>``: the prefix (8 characters, public, unique)
finds the row, the secret (32 random bytes) is checked against its SHA-256 in
constant time. A plain hash is enough, and fast enough for every request: the
secret is 256 bits of randomness, so there is nothing to guess that a slow,
salted password hash would protect; a keyed hash (HMAC with SECRET_KEY) would
only tie every token to the current SECRET_KEY. The secret itself is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from api.scopes import SCOPES, validate_scopes

TOKEN_TAG = "wac"
PREFIX_LENGTH = 8


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(prefix, secret)`` of a well-formed token, else None."""
    tag, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if tag != TOKEN_TAG or len(prefix) != PREFIX_LENGTH or not secret or len(token) > 200:
        return None
    return prefix, secret


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def live(self) -> ApiTokenQuerySet:
        """Tokens that are neither revoked nor expired."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    """A bearer token that acts for one user, narrowed by scopes and a session list."""

    name = models.CharField(max_length=100, help_text="Shown in event logs as token:<name>.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list, help_text="A list of scopes (see api/scopes.py).")
    sessions = models.ManyToManyField(
        "sessions_app.WaSession",
        blank=True,
        related_name="+",
        help_text="Limit the token to these sessions; none chosen: every session.",
    )
    all_sessions = models.BooleanField(
        default=True,
        editable=False,
        help_text="No session list (a limited token never widens to all).",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({TOKEN_TAG}_{self.prefix}_…)"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        try:
            self.scopes = validate_scopes(list(self.scopes or []))
        except (TypeError, ValueError) as exc:
            raise ValidationError({"scopes": str(exc)}) from exc

    @classmethod
    def issue(cls, **fields: object) -> tuple[ApiToken, str]:
        """A new (unsaved) token and its full text, which is shown once and never stored."""
        prefix = secrets.token_hex(PREFIX_LENGTH // 2)
        secret = secrets.token_urlsafe(32)
        token = cls(prefix=prefix, secret_hash=hash_secret(secret), **fields)
        return token, f"{TOKEN_TAG}_{prefix}_{secret}"

    def matches(self, secret: str) -> bool:
        """Constant-time check of a presented secret against the stored hash."""
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))

    @property
    def actor(self) -> str:
        """How the event log names what this token did."""
        return f"token:{self.name}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
                revoked_at=self.revoked_at
            )

    def scope_labels(self) -> str:
        return ", ".join(s for s in self.scopes if s in SCOPES)


class IdempotencyKey(models.Model):
    """The first answer to a POST sent with an ``Idempotency-Key``, kept for 24 hours.

    Keys are per token. The fingerprint (a hash of the method, path and parsed
    body) tells a retry from a different request that reuses the key.
    """

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token", "key"], name="api_idempotency_key_per_token")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status_code})"
