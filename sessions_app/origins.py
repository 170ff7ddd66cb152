"""The WebSocket origin check: scheme, host and port, like Django's CSRF check.

Channels' ``AllowedHostsOriginValidator`` compares only the host name with
``ALLOWED_HOSTS`` (patterns without a scheme match any scheme and any port), so a
page served by another program on another port of an allowed host could open
our sockets with the admin's cookies. This validator accepts a socket only when
its ``Origin`` is

- the request's own origin: the socket's scheme (``wss`` → ``https``; behind a
  proxy, ``SECURE_PROXY_SSL_HEADER`` as for ``request.is_secure()``), and its
  ``Host`` header, which must itself be in ``ALLOWED_HOSTS``; or
- one of ``CSRF_TRUSTED_ORIGINS`` (``https://host[:port]``, or
  ``https://*.example.com`` for subdomains), scheme and port included.

Own code rather than a subclass: Channels' validator only sees the parsed
``Origin``, never the request's own ``Host`` and scheme.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """``"https://Example.com"`` → ``("https", "example.com", 443)``; None if malformed."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        meta_name, secure_value = proxy
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
        forwarded = headers.get(name, b"").decode("latin1").split(",")[0].strip()
        return forwarded == secure_value
    return False


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]  # as Django's request.get_host()
    return hosts


def own_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin of the page that may open this socket: this server, as addressed."""
    headers = _headers(scope)
    host = headers.get(b"host", b"").decode("latin1").strip().lower()
    domain, port = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    scheme = "https" if _is_secure(scope, headers) else "http"
    return scheme, domain.strip("[]"), int(port) if port else DEFAULT_PORTS[scheme]


def trusted(origin: Origin) -> bool:
    """``origin`` is one of CSRF_TRUSTED_ORIGINS (scheme and port must match)."""
    scheme, host, port = origin
    for pattern in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in pattern
        allowed = parse_origin(pattern.replace("://*.", "://", 1) if wildcard else pattern)
        if allowed is None or allowed[0] != scheme or allowed[2] != port:
            continue
        if host == allowed[1] or (wildcard and is_same_domain(host, "." + allowed[1])):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    raw = _headers(scope).get(b"origin")
    if raw is None:
        return False
    origin = parse_origin(raw.decode("latin1"))
    if origin is None:
        return False
    return origin == own_origin(scope) or trusted(origin)


class OriginValidator:
    """ASGI middleware: a WebSocket from any other origin is refused (HTTP 403)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("OriginValidator is for WebSocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
