"""WebSocket edges against the real Daphne: close codes a server may send, no tracebacks.

Channels' test communicator accepts any close code; Daphne (autobahn) refuses to
send a protocol code such as 1009 and fails the socket with 1011 and a traceback,
and a path no route matches is a 500. So these are checked on the real server,
with a bare RFC 6455 client (benchmarks/wsprobe.py) and the admin's session cookie.
"""

from __future__ import annotations

import re
import socket
import struct
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from benchmarks.liveserver import LiveServer
from benchmarks.wsprobe import OP_CLOSE, OP_TEXT, FrameReader, _client_frame, upgrade_request
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


def session_cookie(page: Page, context: BrowserContext) -> str:
    log_in(page)
    return next(c["value"] for c in context.cookies() if c["name"] == "sessionid")


def open_socket(url: str, path: str, cookie: str) -> tuple[socket.socket, bytes, bytes]:
    """Open ``path`` on the server; the socket, the HTTP status line, bytes past the head."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(upgrade_request(host, port, path, cookie))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    return sock, head.split(b"\r\n", 1)[0], rest


def close_code(sock: socket.socket, data: bytes = b"") -> int | None:
    """Read frames until the server's close frame; its code (None: closed without one)."""
    reader = FrameReader()
    while True:
        data = data or sock.recv(65536)
        if not data:
            return None
        for opcode, payload in reader.feed(data):
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        data = b""


def test_an_oversized_message_closes_with_4413_and_no_traceback(
    page: Page, context: BrowserContext, waconnect_server: LiveServer
) -> None:
    cookie = session_cookie(page, context)
    sock, status, rest = open_socket(waconnect_server.url, "/ws/sessions/", cookie)
    with sock:
        assert status.startswith(b"HTTP/1.1 101")
        sock.sendall(_client_frame(OP_TEXT, b"x" * 5000))
        # The list's first frame may have come with the handshake's answer.
        assert close_code(sock, rest) == 4413
    assert "Traceback" not in waconnect_server.output()


@pytest.mark.parametrize(
    "path", ["/ws/nope/", "/ws/sessions/" + "9" * 83 + "/", "/ws/" + "A" * 300 + "/"]
)
def test_unknown_paths_close_with_4404_and_no_traceback(
    page: Page, context: BrowserContext, waconnect_server: LiveServer, path: str
) -> None:
    cookie = session_cookie(page, context)
    sock, status, rest = open_socket(waconnect_server.url, path, cookie)
    with sock:
        assert status.startswith(b"HTTP/1.1 101"), status
        assert close_code(sock, rest) == 4404
    output = waconnect_server.output()
    assert "Traceback" not in output
    assert "No route found" not in output


def test_logging_out_in_one_tab_sends_the_other_tabs_live_page_to_the_login(
    context: BrowserContext,
) -> None:
    """The socket of a page left open does not outlive the login (no more QR codes)."""
    watcher = context.new_page()
    log_in(watcher)
    watcher.goto("/sessions/")
    expect(watcher.locator("#socket-status")).to_have_attribute("data-online", "true")
    other = context.new_page()
    other.goto("/sessions/")
    other.click(".logout-form button[type=submit]")
    other.wait_for_url(re.compile(r"/accounts/login/"))
    watcher.wait_for_url(re.compile(r"/accounts/login/\?next=/sessions/"))
