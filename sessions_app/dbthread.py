"""The supervisor's own database threads.

``database_sync_to_async`` runs every synchronous database call of a process in
one thread by default, so inside ``runserver`` the supervisor's writes and the
pages' queries would queue behind each other. The supervisor gets threads of its
own instead, out of the pages' way: on PostgreSQL a few
(``WACONNECT_SUPERVISOR_DB_THREADS``, 3), so that the round trips of different
sessions' writes overlap; on SQLite one (one writer at a time). Order is kept
where it matters without one thread: a runner awaits each of its calls before
the next, and so does the supervisor's own sequence (census, claim, hand-over,
release). A takeover is many sessions' calls at once: with one thread each
call waited for every call queued before it, and in the chaos test on a loaded
machine a clean restart took 3.3-4.7 s until every session was back, 2.0-2.2 s
on three threads (docs/benchmarks.md, "Takeovers on several database threads").

Lease renewal gets a thread of its own (and so a connection of its own): when
hundreds of sessions change state at once, their writes queue in the others,
and a renewal queued behind them would arrive too late; the supervisor would
fence itself under load, exactly when a hand-over costs most.

On SQLite these threads keep their connection from call to call (``KeptConnectionCall``,
also used by the message pumps' and the webhook dispatcher's threads);
on PostgreSQL they borrow one from the pool for each call, and end a transaction
left idle longer than the self-fence margin (:func:`end_idle_transactions`).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import SyncToAsync
from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import close_old_connections, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from sessions_app.conf import supervisor_config

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_executors: dict[str, ThreadPoolExecutor] = {}

SUPERVISOR_THREAD = "waconnect-db"
LEASE_THREAD = "waconnect-lease-db"


#: Threads for ``supervisor_db`` calls on PostgreSQL (``WACONNECT_SUPERVISOR_DB_THREADS``):
#: each holds one pooled connection while it runs a call (see
#: :func:`waconnect.checks.database_pool_size`).
DEFAULT_SUPERVISOR_THREADS = 3


def supervisor_threads() -> int:
    """How many threads run ``supervisor_db`` calls: 1 on SQLite, else the setting."""
    if connection.vendor != "postgresql":
        return 1
    return max(
        1, int(getattr(settings, "WACONNECT_SUPERVISOR_DB_THREADS", DEFAULT_SUPERVISOR_THREADS))
    )


def _get_executor(name: str) -> ThreadPoolExecutor:
    with _lock:
        if name not in _executors:
            workers = supervisor_threads() if name == SUPERVISOR_THREAD else 1
            _executors[name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        return _executors[name]


def _keep_sqlite_connections() -> None:
    """Let this thread's SQLite connections outlive the call (``CONN_MAX_AGE`` 0 would
    close them at the next clean-up); one left broken or in a transaction is still
    closed by Django's clean-up."""
    for conn in connections.all(initialized_only=True):
        if conn.vendor == "sqlite" and conn.connection is not None:
            conn.close_at = None


class KeptConnectionCall(DatabaseSyncToAsync):
    """A call in a long-lived thread that keeps its SQLite connection.

    On SQLite the thread keeps its connection from call to call: opening one is a
    file open, two PRAGMAs and some forty SQL function registrations by Django, and
    with ``CONN_MAX_AGE`` 0 every call paid it (a scratch trace of create → QR on a
    loaded machine: 71 ms p50 with a connection per call, 27 ms with one kept; see
    docs/benchmarks.md). PostgreSQL connections are still borrowed from the pool
    and given back after each call, so no pool slot is held for good.
    """

    def thread_handler(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return SyncToAsync.thread_handler(self, loop, *args, **kwargs)
        finally:
            _keep_sqlite_connections()
            close_old_connections()


def _in_thread(name: str, func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        runner = KeptConnectionCall(func, thread_sensitive=False, executor=_get_executor(name))
        return await runner(*args, **kwargs)

    return call


def socket_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``database_sync_to_async`` for the sockets' consumers, keeping a SQLite connection.

    Consumers run their synchronous calls in asgiref's one long-lived thread for
    code outside an HTTP request; like the supervisor's, it keeps its SQLite
    connection instead of opening one per call (the create socket's two calls sit
    on the path from "create" to the QR code). PostgreSQL: borrowed per call.
    """
    return functools.wraps(func)(KeptConnectionCall(func, thread_sensitive=True))


def supervisor_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in one of the supervisor's database threads (closing stale
    connections); calls awaited one after the other run in that order."""
    return _in_thread(SUPERVISOR_THREAD, func)


def lease_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the lease thread: renewals never wait behind session writes."""
    return _in_thread(LEASE_THREAD, func)


def end_idle_transactions(
    sender: object, connection: BaseDatabaseWrapper, **kwargs: object
) -> None:
    """A supervisor's transaction never holds its row locks past its leases.

    Others claim with ``SKIP LOCKED``: a supervisor frozen (SIGSTOP, a VM pause) or
    cut off from PostgreSQL between two statements of a transaction would keep
    that session from every successor for as long as the fault lasts. Its
    transactions are a few statements in a row, never idle for long, so the
    server ends one idle for the self-fence margin: by the time the supervisor's
    leases expire, its locks are gone (and its late COMMIT fails, as it must).
    """
    if connection.vendor != "postgresql" or connection.connection is None:
        return
    raw = connection.connection
    supervisor = threading.current_thread().name.startswith((SUPERVISOR_THREAD, LEASE_THREAD))
    wanted = max(1, int(supervisor_config().self_fence_margin * 1000)) if supervisor else None
    if _idle_limits.get(raw) == wanted:
        return  # as the pooled connection was left: the setting lasts as long as it
    with connection.cursor() as cursor:
        if wanted is None:  # borrowed before by a supervisor thread: back to the default
            cursor.execute("RESET idle_in_transaction_session_timeout")
            _idle_limits.pop(raw, None)
            return
        cursor.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [str(wanted)]
        )
    _idle_limits[raw] = wanted


#: The limit each pooled (psycopg) connection was given: Django sends
#: ``connection_created`` each time a call borrows one from the pool, and a
#: ``set_config`` round trip on every borrow was a tenth of the message pumps'
#: database time (``set_config(..., false)`` in autocommit lasts for the session).
#: Another thread (a page's, a test's) that borrows one of these gets it reset.
_idle_limits: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


connection_created.connect(end_idle_transactions, dispatch_uid="waconnect-end-idle-transactions")
