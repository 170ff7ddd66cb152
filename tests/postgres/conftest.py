"""The PostgreSQL tier: run with DATABASE_URL pointing at PostgreSQL (``make test`` does).

These tests are about PostgreSQL itself (row locks, SKIP LOCKED), so on any other
database they fail instead of skipping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.db import connection


@pytest.fixture(autouse=True)
def on_postgresql() -> None:
    assert connection.vendor == "postgresql", (
        "tests/postgres need DATABASE_URL=postgres://… (make test sets it)"
    )


@pytest.fixture
def redis_layer() -> None:
    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer", "set REDIS_URL (make test does)"


@pytest.fixture(scope="session", autouse=True)
def drop_stray_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Threads (asgiref's, the supervisor's) keep their own connections to the test
    database; end them before pytest-django drops it."""
    yield
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
