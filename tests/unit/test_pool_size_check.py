"""waconnect.W010: a PostgreSQL pool too small for a supervisor's database threads."""

from __future__ import annotations

import types
from typing import Any

import pytest

from waconnect import checks


def _settings(engine: str, max_size: int, supervisor: int = 3, messages: int = 4) -> Any:
    return types.SimpleNamespace(
        DATABASES={"default": {"ENGINE": engine, "OPTIONS": {"pool": {"max_size": max_size}}}},
        WACONNECT_SUPERVISOR_DB_THREADS=supervisor,
        WACONNECT_MESSAGE_DB_THREADS=messages,
    )


@pytest.mark.parametrize(
    ("max_size", "supervisor", "warned"),
    [(12, 3, False), (10, 3, False), (9, 3, True), (12, 6, True)],
)
def test_a_pool_smaller_than_the_threads_is_reported(
    monkeypatch: pytest.MonkeyPatch, max_size: int, supervisor: int, warned: bool
) -> None:
    """Threads: session work + message pumps + renewal, dispatcher, one spare."""
    postgres = _settings("django.db.backends.postgresql", max_size, supervisor)
    monkeypatch.setattr(checks, "settings", postgres)
    assert [m.id for m in checks.database_pool_size()] == (["waconnect.W010"] if warned else [])


def test_sqlite_has_no_pool_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "settings", _settings("django.db.backends.sqlite3", 1))
    assert checks.database_pool_size() == []
