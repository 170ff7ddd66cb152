"""Fixtures shared by every tier."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import channel_layers
from django.db import connection


@pytest.fixture(autouse=True)
def simulated_driver(settings: Any) -> None:
    """Tests run the simulated driver unless they ask for neonize themselves."""
    settings.WACONNECT_DRIVER = "simulated"


@pytest.fixture(autouse=True)
def webhooks_to_loopback(settings: Any) -> None:
    """Test receivers listen on 127.0.0.1: allowed unless a test refuses it itself."""
    settings.WACONNECT_WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture(autouse=True)
def fresh_channel_layers() -> Iterator[None]:
    """A new channel-layer instance per test: its queues belong to one event loop."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


SESSION_PERMISSIONS = ["view_wasession", "add_wasession", "change_wasession", "delete_wasession"]


@pytest.fixture
def staff_user(django_user_model):  # type: ignore[no-untyped-def]
    """A staff operator with every permission on sessions (not a superuser)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(
        username="ada", password="correct horse battery", is_staff=True
    )
    user.user_permissions.set(Permission.objects.filter(codename__in=SESSION_PERMISSIONS))
    return user


@pytest.fixture
def plain_user(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user(username="bob", password="correct horse battery")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """On PostgreSQL, end the connections other threads kept (asgiref's, the
    supervisor's; connections persist there) before pytest-django drops the test
    database, which it cannot while anyone is connected."""
    yield
    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
