"""SQL compiled once from the ORM: kept per database, one table only, clocks read right."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from sessions_app import compiled_sql
from sessions_app.models import SessionEvent, WaSession

pytestmark = pytest.mark.django_db


def test_the_where_is_compiled_once_and_kept() -> None:
    built = []

    def build() -> object:
        built.append(1)
        return WaSession.objects.filter(state="connected", pair_request__gt=2)

    first = compiled_sql.where("test-kept", build)
    assert compiled_sql.where("test-kept", build) == first
    assert built == [1]
    sql, params = first
    assert "state" in sql and "pair_request" in sql
    assert sorted(params, key=str) == [2, "connected"]


def test_a_filter_that_joins_another_table_is_refused() -> None:
    with pytest.raises(ValueError, match="one table"):
        compiled_sql.where("test-join", lambda: SessionEvent.objects.filter(session__state="x"))


@pytest.mark.parametrize("stored", ["2030-01-01 00:00:10.5", "2030-01-01 00:00:10.500000+00:00"])
def test_sqlite_timestamps_are_read_naive_or_not(stored: str) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert compiled_sql.seconds_between(now, stored) == pytest.approx(10.5)
    with pytest.raises(ValueError, match="not a timestamp"):
        compiled_sql.seconds_between(now, "soon")


def test_until_and_seconds_left_measure_from_the_database_clock() -> None:
    from django.db import connection

    soon = timezone.now() + dt.timedelta(seconds=30)
    WaSession.objects.create(name="clock", lease_owner="a", lease_expires_at=soon)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {compiled_sql.until('lease_expires_at')} FROM sessions_app_wasession"
        )
        (value,) = cursor.fetchone()
    assert 29 < compiled_sql.seconds_left(value) <= 30  # type: ignore[operator]
    assert compiled_sql.seconds_left(None) is None


def test_a_filter_with_a_time_among_its_parameters_is_refused() -> None:
    """Kept, it would judge every later call by the moment it was compiled."""
    with pytest.raises(ValueError, match="use Now"):
        compiled_sql.where(
            "test-clock", lambda: WaSession.objects.filter(banned_until__gt=timezone.now())
        )
