"""The WebSocket origin check compares scheme, host and port (sessions_app/origins.py)."""

from __future__ import annotations

from typing import Any

import pytest

from sessions_app.origins import origin_allowed


def scope(origin: str | None, host: str, scheme: str = "ws", **headers: str) -> dict[str, Any]:
    raw = [(b"host", host.encode())]
    if origin is not None:
        raw.append((b"origin", origin.encode()))
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": raw}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost:8000", "localhost:8000", "ws", True),
        ("http://localhost", "localhost", "ws", True),
        ("http://localhost:80", "localhost", "ws", True),  # default port spelled out
        ("https://localhost", "localhost", "wss", True),
        ("http://[::1]:8000", "[::1]:8000", "ws", True),
        ("http://localhost:8001", "localhost:8000", "ws", False),  # another port
        ("https://localhost:8000", "localhost:8000", "ws", False),  # another scheme
        ("http://localhost", "localhost", "wss", False),  # a plain page, a TLS socket
        ("http://127.0.0.1:8000", "localhost:8000", "ws", False),  # another host
        ("http://evil.example", "evil.example", "ws", False),  # Host not allowed
        ("http://localhost:8000/path", "localhost:8000", "ws", False),
        ("null", "localhost", "ws", False),
        (None, "localhost", "ws", False),
    ],
)
def test_own_origin(origin: str | None, host: str, scheme: str, allowed: bool) -> None:
    assert origin_allowed(scope(origin, host, scheme)) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://admin.example.com", True),
        ("https://admin.example.com:443", True),
        ("https://admin.example.com:8443", False),
        ("http://admin.example.com", False),
        ("https://ops.example.org", True),
        ("https://a.ops.example.org", True),
        ("http://a.ops.example.org", False),
        ("https://example.com", False),
    ],
)
def test_trusted_origins_match_scheme_and_port(settings: Any, origin: str, allowed: bool) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://admin.example.com", "https://*.ops.example.org"]
    assert origin_allowed(scope(origin, "backend:8000")) is allowed


def test_behind_a_tls_proxy_the_forwarded_scheme_counts(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["waconnect.example.com"]
    own = scope("https://waconnect.example.com", "waconnect.example.com", x_forwarded_proto="https")
    assert not origin_allowed(own), "no SECURE_PROXY_SSL_HEADER: the header is not trusted"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(own)
    plain = scope("https://waconnect.example.com", "waconnect.example.com")
    assert not origin_allowed(plain)
