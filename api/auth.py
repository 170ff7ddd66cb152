"""Bearer-token authentication: who is asking, and what they may do.

:class:`TokenBearer` (ninja's ``HttpBearer``) turns ``Authorization: Bearer
wac_<prefix>_<secret>`` into a :class:`Principal`, or answers 401. Per request
it re-reads the token and its user, so a revoked or expired token, or a user who
lost active or staff status, stops working at once. :meth:`Principal.require`
then checks the endpoint's scope *and* the user's Django permission: a token
never does more than its user may.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer
from ninja.throttling import SimpleRateThrottle

from api import scopes
from api.errors import ApiError
from api.models import ApiToken, parse_token
from sessions_app import conf

#: ``last_used_at`` is written at most this often per token (one UPDATE, not one per call).
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class Principal:
    """A verified token, its user's relevant permissions and its session list."""

    token: ApiToken
    perms: frozenset[str]
    session_ids: frozenset[int] | None  # None: every session

    @property
    def actor(self) -> str:
        return self.token.actor

    def __str__(self) -> str:  # ninja's throttles key on str(request.auth)
        return f"token:{self.token.pk}"

    def require(self, scope: str, perm: str) -> None:
        """Raise 403 unless the token has ``scope`` and its user ``perm``."""
        if scope not in self.token.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"This token lacks the {scope} scope.",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
        if perm not in self.perms:
            raise ApiError(
                403,
                "permission_denied",
                f"The token's user lacks the permission {perm}.",
            )

    def may_see(self, session_id: int) -> bool:
        return self.session_ids is None or session_id in self.session_ids


def _unauthorized(code: str, detail: str) -> ApiError:
    return ApiError(401, code, detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _permissions(user: Any) -> frozenset[str]:
    """The user's session and webhook permissions, as the pages read them: ``change``
    implies ``view`` (sessions_app.permissions.can_view, as in the Django admin)."""
    perms = {p for p in scopes.PERMISSIONS + scopes.WEBHOOK_PERMISSIONS if user.has_perm(p)}
    if scopes.CHANGE in perms:
        perms.add(scopes.VIEW)
    if scopes.WEBHOOK_CHANGE in perms:
        perms.add(scopes.WEBHOOK_VIEW)
    return frozenset(perms)


def authenticate_token(raw: str) -> Principal:
    """The principal for a presented token, or ``ApiError(401)`` saying why not."""
    parsed = parse_token(raw.strip())
    token = None
    if parsed is not None:
        token = ApiToken.objects.select_related("user").filter(prefix=parsed[0]).first()
    if token is None or parsed is None or not token.matches(parsed[1]):
        raise _unauthorized("token_invalid", "The token is not valid.")
    if token.is_revoked:
        raise _unauthorized("token_revoked", "The token was revoked.")
    if token.is_expired:
        raise _unauthorized("token_expired", "The token has expired.")
    user = token.user
    if not (user.is_active and user.is_staff):
        raise _unauthorized("user_inactive", "The token's user may no longer use waconnect.")
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    limited = None
    if not token.all_sessions:
        limited = frozenset(token.sessions.values_list("pk", flat=True))
    return Principal(
        token=token,
        perms=_permissions(user),
        session_ids=limited,
    )


def verify_token(raw: str, scope: str) -> bool:
    """Whether ``raw`` is a live token of an active staff user that has ``scope``
    (for endpoints outside the API, such as ``/metrics`` with ``metrics:read``)."""
    try:
        principal = authenticate_token(raw)
    except ApiError:
        return False
    needed = scopes.SCOPE_PERMISSIONS.get(scope, scopes.VIEW)
    return scope in principal.token.scopes and needed in principal.perms


class TokenBearer(HttpBearer):
    """``Authorization: Bearer <token>``; the principal becomes ``request.auth``."""

    def __call__(self, request: HttpRequest) -> Principal | None:
        # ninja's HttpBearer logs an unexpected header in DEBUG, token included: not here.
        value = request.headers.get(self.header, "")
        if not value:
            raise ApiError(
                401, "token_missing", "Send a token: Authorization: Bearer wac_<prefix>_<secret>."
            )
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("token_invalid", "Use the Bearer scheme.")
        return self.authenticate(request, token)

    def authenticate(self, request: HttpRequest, token: str) -> Principal:
        return authenticate_token(token)


class TokenRateThrottle(SimpleRateThrottle):
    """At most ``WACONNECT_API_RATE`` requests per token (ninja's cache-based throttle).

    Counted in Django's cache: per process with the default local-memory cache.
    The rate is read per request (settings are never read at import time).
    """

    scope = "token"

    def __init__(self) -> None:
        super().__init__(rate="1/s")

    def allow_request(self, request: HttpRequest) -> bool:
        self.rate = conf.api_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request)

    def get_cache_key(self, request: HttpRequest) -> str | None:
        principal: Any = getattr(request, "auth", None)
        if not isinstance(principal, Principal):
            return None
        return self.cache_format % {"scope": self.scope, "ident": principal.token.pk}
