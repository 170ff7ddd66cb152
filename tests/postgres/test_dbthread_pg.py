"""The supervisor's database threads on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError, OperationalError, connection, transaction

from sessions_app.dbthread import lease_db, supervisor_db, supervisor_threads
from sessions_app.models import WaSession
from webhooks.dispatcher import DB_THREAD

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def lock_and_freeze(
    pk: int, pids: list[int], locked: threading.Event, thaw: threading.Event
) -> None:
    """Lock the row in a transaction and stop between two statements, as a
    supervisor frozen or cut off from the database would."""
    connection.close()  # a new connection, set up as the thread's connections are
    with contextlib.suppress(DatabaseError), transaction.atomic():
        list(WaSession.objects.select_for_update().filter(pk=pk))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids.append(int(cursor.fetchone()[0]))
        locked.set()
        thaw.wait(30)
    connection.close()  # the server may have ended it


def forget_connection() -> None:
    connection.close()


@sync_to_async
def backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cursor.fetchone()[0])


@sync_to_async
def lockable(pk: int) -> bool:
    try:
        with transaction.atomic():
            list(WaSession.objects.select_for_update(nowait=True).filter(pk=pk))
    except OperationalError:
        return False
    return True


@sync_to_async
def idle_limit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        return str(cursor.fetchone()[0])


async def until_the_server_ended(pid: int, within: float = 5.0) -> None:
    """Wait until the server has ended backend ``pid``'s idle transaction."""
    deadline = time.monotonic() + within
    while await backend_alive(pid):
        assert time.monotonic() < deadline, "the idle transaction kept its locks"
        await asyncio.sleep(0.1)  # another backend's end: observed, not awaited


@pytest.mark.parametrize("thread", [supervisor_db, lease_db])
async def test_a_supervisor_transaction_left_idle_gives_its_locks_back(
    thread: Any, settings: Any
) -> None:
    """Successors claim with SKIP LOCKED: a transaction a supervisor left open would
    hide the session from all of them. The server ends it once it has been idle
    for the self-fence margin, so the row can be locked again."""
    settings.WACONNECT_SELF_FENCE_MARGIN = 0.5
    pk = (await WaSession.objects.acreate(name="frozen")).pk
    pids: list[int] = []
    locked, thaw = threading.Event(), threading.Event()
    frozen = asyncio.create_task(thread(lock_and_freeze)(pk, pids, locked, thaw))
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, locked.wait, 10)
        assert not await lockable(pk)
        await until_the_server_ended(pids[0])
        assert await lockable(pk)
    finally:
        thaw.set()
        await frozen


async def test_the_webhook_dispatchers_transaction_left_idle_gives_its_locks_back(
    settings: Any,
) -> None:
    """The dispatcher locks sessions' sequence rows; cut off mid-transaction it kept
    them, a healthy supervisor's session write waited for one holding its session
    row, and that supervisor's renewal waited for the row until it fenced itself."""
    settings.WACONNECT_SELF_FENCE_MARGIN = 0.5
    pk = (await WaSession.objects.acreate(name="frozen")).pk
    pids: list[int] = []
    locked, thaw = threading.Event(), threading.Event()
    frozen = threading.Thread(
        target=lock_and_freeze, args=(pk, pids, locked, thaw), name=f"{DB_THREAD}_0"
    )
    frozen.start()
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, locked.wait, 10)
        await until_the_server_ended(pids[0])
        assert await lockable(pk)
    finally:
        thaw.set()
        await asyncio.to_thread(frozen.join)


async def test_other_connections_keep_the_server_default(settings: Any) -> None:
    """Only the supervisor's threads: pages and tests may sit in a transaction."""
    settings.WACONNECT_SELF_FENCE_MARGIN = 0.5
    await sync_to_async(forget_connection)()
    assert await idle_limit() == "0"


@sync_to_async
def connection_parameters() -> dict[str, str]:
    connection.ensure_connection()
    return dict(connection.connection.info.get_parameters())


async def test_connections_give_up_on_an_unreachable_server() -> None:
    """A partition must not hang a thread for the kernel's retransmission timeout:
    libpq's own timeouts and keep-alives are set (the fault proxy cannot show
    them at work: the local kernel acknowledges everything it is sent)."""
    params = await connection_parameters()
    assert params["connect_timeout"] == "5"
    assert params["tcp_user_timeout"] == "10000"
    assert params["keepalives"] == "1" and params["keepalives_idle"] == "10"


def show_idle_limit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        return str(cursor.fetchone()[0])


def set_configs_by_backend() -> tuple[int, int]:
    """One database call: (this connection's backend pid, how many times the idle
    limit was set on it during the call)."""
    seen: list[str] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy), connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = int(cursor.fetchone()[0])
    return pid, sum("idle_in_transaction_session_timeout" in sql for sql in seen)


async def test_a_pooled_connection_is_given_the_idle_limit_once() -> None:
    """Each call borrows a pooled connection, and Django announces every borrow as
    a new connection; the limit is set on the first borrow only (it lasts as long
    as the connection), not with a round trip on every call."""
    calls = [await supervisor_db(set_configs_by_backend)() for _ in range(12)]
    by_backend: dict[int, int] = {}
    for pid, count in calls:
        by_backend[pid] = by_backend.get(pid, 0) + count
    assert len(by_backend) < len(calls), "the pool lends a connection more than once"
    assert all(count <= 1 for count in by_backend.values()), by_backend
    assert await supervisor_db(show_idle_limit)() != "0", "and it is set"


def meet(barrier: threading.Barrier) -> int:
    """Wait in a database thread until another call waits there too (or time out)."""
    return barrier.wait()


async def test_session_work_runs_on_several_threads_so_a_takeover_overlaps() -> None:
    """A takeover is many sessions' calls at once; with one thread each waited for
    all queued before it (45 sessions took up to 2.7 s to connect on a loaded
    machine). Two calls in flight at once meet, which one thread cannot do."""
    assert supervisor_threads() == 3
    barrier = threading.Barrier(2, timeout=5)
    async with asyncio.timeout(10):
        met = await asyncio.gather(supervisor_db(meet)(barrier), supervisor_db(meet)(barrier))
    assert sorted(met) == [0, 1]
