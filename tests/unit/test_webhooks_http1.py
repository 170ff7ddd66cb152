"""The webhook HTTP/1.1 client against raw asyncio servers written for each case:
keep-alive, answers framed every way HTTP/1.1 allows, bounded reads, receivers that
close connections, the SSRF guard before any connection, and TLS verification."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from webhooks import http1, ssrf

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """Counts connections; each is served by ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.url = ""
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(reader, writer)
        writer.close()


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/hook?x=1"
    try:
        yield server
    finally:
        listener.close()
        if server.tasks:  # each ends when the client closes its connection
            _, stuck = await asyncio.wait(server.tasks, timeout=5)
            assert not stuck, "a connection the client should have closed is still open"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Answer the requests with ``answers`` in turn, on whichever connection they
    come; ``then_close``: close each connection after its first answer."""
    left = collections.deque(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while left:
            await read_request(reader)
            writer.write(left.popleft())
            await writer.drain()
            if then_close:
                return
        await reader.read()  # keep it open until the client closes it

    return handler


def client(**kwargs: object) -> http1.Client:
    return http1.Client(connect_timeout=2.0, allow_private=True, **kwargs)  # type: ignore[arg-type]


NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


async def test_requests_share_a_kept_alive_connection_and_carry_host_target_and_body() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(NO_CONTENT)

    async with serve(handler) as server:
        c = client(user_agent="ua/1")
        for i in range(3):
            assert await c.post(server.url, b'{"n":%d}' % i, {"webhook-id": "evt_1"}, 4096) == (
                204,
                b"",
            )
        await c.aclose()
    assert server.connections == 1
    head, body = seen[2]
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\n") and body == b'{"n":2}'
    assert b"host: 127.0.0.1:" in head and b"webhook-id: evt_1" in head and b"ua/1" in head


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 500 Oops\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\ncontent-length: 5\r\n\r\nhello",
    ],
    ids=["length", "chunked", "informational-first"],
)
async def test_answers_are_read_however_they_are_framed(answer: bytes) -> None:
    async with serve(answering(answer, NO_CONTENT)) as server:
        c = client()
        assert await c.post(server.url, b"{}", {}, 4096) == (500, b"hello")
        assert await c.post(server.url, b"{}", {}, 4096) == (204, b"")
        await c.aclose()
    assert server.connections == 1


async def test_an_answer_ended_by_closing_is_read_and_the_connection_not_kept() -> None:
    answer = b"HTTP/1.0 200 OK\r\n\r\nall of it"
    async with serve(answering(answer, answer, then_close=True)) as server:
        c = client()
        assert await c.post(server.url, b"{}", {}, 4096) == (200, b"all of it")
        assert await c.post(server.url, b"{}", {}, 4096) == (200, b"all of it")
        await c.aclose()
    assert server.connections == 2


async def test_a_long_answer_is_cut_at_the_limit_and_its_connection_dropped() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 100000
    async with serve(answering(big, NO_CONTENT)) as server:
        c = client()
        status, body = await c.post(server.url, b"{}", {}, 4096)
        assert (status, len(body)) == (200, 4096)
        assert await c.post(server.url, b"{}", {}, 4096) == (204, b"")
        await c.aclose()
    assert server.connections == 2


async def test_a_kept_connection_the_receiver_closed_is_replaced_without_a_failure() -> None:
    async with serve(answering(NO_CONTENT, NO_CONTENT, then_close=True)) as server:
        c = client()
        assert await c.post(server.url, b"{}", {}, 4096) == (204, b"")
        await asyncio.sleep(0)  # (closed by the receiver, maybe not yet seen by us)
        assert await c.post(server.url, b"{}", {}, 4096) == (204, b"")
        await c.aclose()
    assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_an_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serve(hang_up) as server:
        c = client()
        with pytest.raises(http1.RemoteProtocolError, match="without sending a response"):
            await c.post(server.url, b"{}", {}, 4096)
        await c.aclose()
    assert server.connections == 1


async def test_a_refused_address_is_never_connected_to() -> None:
    async with serve(answering(NO_CONTENT)) as server:
        c = http1.Client(connect_timeout=2.0, allow_private=False)
        with pytest.raises(ssrf.Refused):
            await c.post(server.url, b"{}", {}, 4096)
    assert server.connections == 0


async def test_nothing_listening_is_a_connect_error() -> None:
    async with serve(answering(NO_CONTENT)) as server:
        url = server.url
    with pytest.raises(http1.ConnectError):
        await client().post(url, b"{}", {}, 4096)


async def test_tls_verifies_the_certificate() -> None:
    """A receiver whose certificate is not trusted is refused at the handshake."""
    cert, key = _self_signed()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with serve(answering(NO_CONTENT), ssl_context=context) as server:
        with pytest.raises(http1.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client().post(server.url, b"{}", {}, 4096)
        trusting = client(ssl_context=ssl.create_default_context(cafile=cert))
        assert await trusting.post(server.url, b"{}", {}, 4096) == (204, b"")
        await trusting.aclose()


def _self_signed() -> tuple[str, str]:
    import datetime as dt
    import ipaddress
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tempfile.mkdtemp()
    cert_path, key_path = f"{folder}/cert.pem", f"{folder}/key.pem"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path
