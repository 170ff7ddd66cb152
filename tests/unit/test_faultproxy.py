"""The fault proxy the cluster tests put between a supervisor and PostgreSQL/Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from benchmarks.faultproxy import FaultProxy, Mode, ProxyLoop

#: How long "nothing arrives" is watched for: an absence has no event to await.
QUIET = 0.3


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):  # the proxy resets its side too
        while data := await reader.read(1024):
            writer.write(data)
    writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    """A server that sends back what it receives."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[:2]


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    loop = ProxyLoop()
    try:
        yield loop.proxy(echo)
    finally:
        loop.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def connect_and_read(proxy: FaultProxy) -> bytes:
    reader, writer = await connect(proxy)
    try:
        return await reader.read(1)
    finally:
        writer.close()


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), QUIET)
    except TimeoutError:
        return True
    return False


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"SELECT 1")
    assert await reader.readexactly(8) == b"SELECT 1"
    writer.close()


async def test_a_blackhole_answers_nothing_then_delivers_what_waited(proxy: FaultProxy) -> None:
    """Old and new connections hang; nothing is lost: it flows on when healed."""
    old_reader, old_writer = await connect(proxy)
    old_writer.write(b"before")
    assert await old_reader.readexactly(6) == b"before"

    await asyncio.to_thread(proxy.set_mode, Mode.BLACKHOLE)
    old_writer.write(b"during")
    new_reader, new_writer = await connect(proxy)  # accepted, and held
    new_writer.write(b"fresh")
    assert await nothing_arrives(old_reader)
    assert await nothing_arrives(new_reader)

    await asyncio.to_thread(proxy.set_mode, Mode.PASS)
    assert await old_reader.readexactly(6) == b"during"
    assert await new_reader.readexactly(5) == b"fresh"
    old_writer.close()
    new_writer.close()


async def test_reset_resets_old_and_new_connections(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await asyncio.to_thread(proxy.set_mode, Mode.RESET)
    with pytest.raises(ConnectionResetError):
        await reader.read(1)
    writer.close()
    with pytest.raises(ConnectionResetError):  # at the connect, or at the first read
        await connect_and_read(proxy)
