"""The supervisor's database threads on SQLite (this file runs in the SQLite tier only):
one connection kept per thread."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, connections, transaction

from sessions_app.dbthread import lease_db, socket_db, supervisor_db, supervisor_threads
from sessions_app.models import WaSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


def _raw_connection() -> Any:
    WaSession.objects.exists()
    return connection.connection


async def test_each_thread_keeps_its_sqlite_connection_from_call_to_call() -> None:
    """Opening a SQLite connection per call was most of a database call's cost."""
    first = await supervisor_db(_raw_connection)()
    second = await supervisor_db(_raw_connection)()
    lease = await lease_db(_raw_connection)()

    assert first is second
    assert lease is not first


def test_sqlite_has_one_thread_for_session_work(settings: Any) -> None:
    """One writer at a time: several threads would only wait for the file lock."""
    settings.WACONNECT_SUPERVISOR_DB_THREADS = 3
    assert supervisor_threads() == 1


async def test_the_sockets_thread_keeps_its_sqlite_connection_too() -> None:
    first = await socket_db(_raw_connection)()
    second = await socket_db(_raw_connection)()

    assert first is second


def _leave_a_transaction_open() -> Any:
    transaction.set_autocommit(False)
    return _raw_connection()


async def test_a_connection_left_in_a_transaction_is_not_kept() -> None:
    left = await supervisor_db(_leave_a_transaction_open)()
    after = await supervisor_db(_raw_connection)()

    assert after is not left


async def test_the_message_pumps_thread_keeps_its_sqlite_connection() -> None:
    """It opened one per call: a new session's pump start-up (three calls) cost three
    connection opens on the way from "create" to the QR code."""
    from messaging.dbthreads import message_db

    first = await message_db(_raw_connection)()
    second = await message_db(_raw_connection)()

    assert first is second


async def test_the_webhook_dispatchers_thread_keeps_its_sqlite_connection() -> None:
    from webhooks.dispatcher import Dispatcher

    dispatcher = Dispatcher(layer=None)
    try:
        first = await dispatcher._db(_raw_connection)()
        second = await dispatcher._db(_raw_connection)()
        await dispatcher._db(connections.close_all)()  # as its run() does when it stops
    finally:
        dispatcher._executor.shutdown(wait=False)

    assert first is second
