"""Who may read the web tier's ``/metrics``: a token with ``metrics:read``, or a client
address in ``WACONNECT_METRICS_ALLOW`` (CIDRs; loopback only by default).

A request that presents a bearer token is judged by the token alone (a bad token is
refused even from an allowed address). Tokens are verified by a pluggable function:
``WACONNECT_METRICS_TOKEN_VERIFIER`` (a dotted path to ``verify(token, scope) ->
bool``), else ``api.auth.verify_token`` when the API app is installed, else none is
valid. The allow-list checks ``REMOTE_ADDR``: with Daphne's ``--proxy-headers`` (the
Procfile) that is the first ``X-Forwarded-For`` entry, so the proxy must overwrite
that header, never append to it (README, "Behind a TLS proxy").
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
from collections.abc import Callable

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.module_loading import import_string

from sessions_app import conf

logger = logging.getLogger(__name__)

SCOPE = "metrics:read"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    BAD_TOKEN = "bad token"  # 401
    NOT_ALLOWED = "address not allowed"  # 403


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)
    except ValueError as exc:
        raise ImproperlyConfigured(f"WACONNECT_METRICS_ALLOW: {exc}") from exc


def address_allowed(address: str) -> bool:
    """Whether ``address`` lies in one of the allowed networks."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _networks(tuple(conf.metrics_allow())))


def token_verifier() -> Callable[[str, str], bool] | None:
    """The function that checks a bearer token's scope, if any is configured."""
    path = conf.metrics_token_verifier()
    if path:
        return import_string(path)  # type: ignore[no-any-return]
    if apps.is_installed("api"):
        try:
            from api.auth import verify_token  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImproperlyConfigured(
                "the api app is installed but has no api.auth.verify_token(token, scope); "
                "set WACONNECT_METRICS_TOKEN_VERIFIER"
            ) from exc
        return verify_token  # type: ignore[no-any-return]
    return None


def bearer_token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check(request: HttpRequest) -> Verdict:
    """May this request read ``/metrics``? (Never logs the token.)"""
    token = bearer_token(request)
    if token is not None:
        verify = token_verifier()
        if verify is not None and verify(token, SCOPE):
            return Verdict.ALLOWED
        return Verdict.BAD_TOKEN
    if address_allowed(request.META.get("REMOTE_ADDR", "")):
        return Verdict.ALLOWED
    return Verdict.NOT_ALLOWED
