"""The PostgreSQL tier: run with DATABASE_URL pointing at PostgreSQL (``make test`` does).

These tests are about PostgreSQL itself (row locks, SKIP LOCKED), so on any other
database they fail instead of skipping.
"""

from __future__ import annotations

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
