"""The supervisor's own database threads.

``database_sync_to_async`` runs every synchronous database call of a process in
one thread by default, so inside ``runserver`` the supervisor's writes and the
pages' queries would queue behind each other. The supervisor gets a thread of
its own instead: still one at a time (its calls stay ordered), but no longer in
the pages' way.

Lease renewal gets a second thread (and so a second connection): when hundreds
of sessions change state at once, their writes queue in the first thread, and a
renewal queued behind them would arrive too late; the supervisor would fence
itself under load, exactly when a hand-over costs most.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_executors: dict[str, ThreadPoolExecutor] = {}


def _get_executor(name: str) -> ThreadPoolExecutor:
    with _lock:
        if name not in _executors:
            _executors[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return _executors[name]


def _in_thread(name: str, func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        runner = DatabaseSyncToAsync(func, thread_sensitive=False, executor=_get_executor(name))
        return await runner(*args, **kwargs)

    return call


def supervisor_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the supervisor's database thread (closing stale connections)."""
    return _in_thread("waconnect-db", func)


def lease_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the lease thread: renewals never wait behind session writes."""
    return _in_thread("waconnect-lease-db", func)
