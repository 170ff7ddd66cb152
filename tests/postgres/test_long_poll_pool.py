"""Waiting long polls hold no database connection (each process's pool is bounded).

A real Daphne on the test database with a pool of 4 and channels-redis: more long
polls than the pool has connections wait at once, and a plain API call still gets
one. Holding its request's connection through the wait, the fifth poll and every
request after it waited for the pool's timeout and failed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.issuing import create_token
from sessions_app import doorbell
from sessions_app.models import WaSession
from tests.daphne_server import base_env, daphne
from tests.postgres.test_connection_bound import _dsn

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]

POOL_MAX = 4
WAITERS = POOL_MAX + 3


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    env = base_env(
        {
            "DEBUG": "on",
            "DATABASE_URL": _dsn(),
            "REDIS_URL": os.environ["REDIS_URL"],
            "WACONNECT_DB_POOL_MAX": str(POOL_MAX),
            "WACONNECT_DB_POOL_MIN": "1",
            "WACONNECT_DB_POOL_TIMEOUT": "4",
            "WACONNECT_DATA_DIR": str(tmp_path / "data"),
            "WACONNECT_DRIVER": "simulated",
            "WACONNECT_INLINE_SUPERVISOR": "off",
            "LOG_LEVEL": "WARNING",
        }
    )
    with daphne(env, tmp_path / "daphne.log") as url:
        yield url


def _waiting(group: str) -> int:
    """How many channels are in the session's group on channels-redis (one per poll)."""
    with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
        return int(client.zcard(f"asgi:group:{group}"))


def _forget(group: str) -> None:
    """Drop what earlier tests or runs left in a group of the same name (same id)."""
    with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
        client.delete(f"asgi:group:{group}")


async def _polls_then_a_call(url: str, token: str, session_id: int) -> tuple[int, int]:
    headers = {"Authorization": f"Bearer {token}"}
    _forget(doorbell.session_group(session_id))
    limits = httpx.Limits(max_connections=WAITERS + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:
        path = f"/api/v1/sessions/{session_id}?after_version=3&wait=20"
        polls = [asyncio.create_task(client.get(path, timeout=30)) for _ in range(WAITERS)]
        group = doorbell.session_group(session_id)
        # Across processes the group's size in Redis is the only sign of a waiting
        # poll: look every 50 ms, for at most 10 s (the polls wait 20).
        for _ in range(200):
            waiting = _waiting(group)
            if waiting >= WAITERS:
                break
            await asyncio.sleep(0.05)
        plain = await client.get(f"/api/v1/sessions/{session_id}", timeout=15)
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    return waiting, plain.status_code


def test_more_waiting_polls_than_the_pool_has_connections(web: str, staff_user: Any) -> None:
    session = WaSession.objects.create(name="polled", state="connecting", version=3)
    _, token = create_token(user=staff_user, name="poller", scopes=["sessions:read"])
    waiting, status = asyncio.run(_polls_then_a_call(web, token, session.pk))
    assert waiting == WAITERS, "every poll waits at once, more than the pool has connections"
    assert status == 200
