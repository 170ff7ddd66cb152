"""The supervisor's own database thread.

``database_sync_to_async`` runs every synchronous database call of a process in
one thread by default, so inside ``runserver`` the supervisor's writes and the
pages' queries would queue behind each other. The supervisor gets a thread of
its own instead: still one at a time (its calls stay ordered), but no longer in
the pages' way.
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
_executor: ThreadPoolExecutor | None = None


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="waconnect-db")
        return _executor


def supervisor_db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the supervisor's database thread (closing stale connections)."""

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        runner = DatabaseSyncToAsync(func, thread_sensitive=False, executor=_get_executor())
        return await runner(*args, **kwargs)

    return call
