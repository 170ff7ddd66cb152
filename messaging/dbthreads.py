"""The message pumps' database threads: a few, beside the supervisor's own.

Each write about a message is one short statement that commits on its own, and
on PostgreSQL a commit waits for its WAL flush: one thread doing them one after
another spends most of its time waiting for the disk, and caps a supervisor at a
few hundred messages a second whatever the number of sessions. Several threads
(several pooled connections) commit concurrently, and PostgreSQL flushes their
commits together.

Order is kept where it matters without one thread: a session's pump awaits each
of its writes before the next (take, then the answer), and the runner awaits each
event's write before the next event. Writes of different sessions, or of
different rows of one session (a receipt, a take), commute.

SQLite has one writer at a time: one thread there. The threads' names start with
the supervisor's (``waconnect-db``), so their PostgreSQL connections end idle
transactions like the supervisor's (:func:`sessions_app.dbthread.end_idle_transactions`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import connection, connections

from sessions_app.dbthread import SUPERVISOR_THREAD, KeptConnectionCall

P = ParamSpec("P")
R = TypeVar("R")

THREAD_PREFIX = f"{SUPERVISOR_THREAD}-messages"
#: Threads on PostgreSQL (``WACONNECT_MESSAGE_DB_THREADS``): each holds one pooled
#: connection while it runs a call; with the supervisor's own threads they must fit
#: in ``WACONNECT_DB_POOL_MAX`` (:func:`waconnect.checks.database_pool_size`).
DEFAULT_THREADS = 4

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def threads() -> int:
    if connection.vendor != "postgresql":
        return 1
    return max(1, int(getattr(settings, "WACONNECT_MESSAGE_DB_THREADS", DEFAULT_THREADS)))


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix=THREAD_PREFIX)
        return _executor


def message_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in one of the message pumps' database threads."""

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        runner = KeptConnectionCall(func, thread_sensitive=False, executor=_get_executor())
        return await runner(*args, **kwargs)

    return call


#: Give back the pumps' kept SQLite connection (the supervisor's shutdown); on
#: PostgreSQL each call gives its pooled connection back already.
close = message_db(connections.close_all)
