"""Profiling hooks for a benchmark server (``benchmarks/profile_create.py``); never in production.

``DJANGO_SETTINGS_MODULE=benchmarks.profiling`` is production's settings plus
:class:`ProfileMiddleware` first in the chain. A request carrying the header
``X-Waconnect-Profile: 1`` is profiled with pyinstrument twice over:

- on the event loop (``async_mode="enabled"``): the whole middleware chain and
  the view as the loop sees them, so each hop into a thread shows as an await;
- in the threads: every synchronous call made for it (``sync_to_async``: each
  synchronous middleware step and the view) under a profiler of its own.

``GET /__profile__/`` answers both as text (and resets them); ``/__profile__/?html``
writes HTML files next to the data directory.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref import sync as asgiref_sync
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware
from pyinstrument import Profiler
from pyinstrument.session import Session

from waconnect.settings import *  # noqa: F403
from waconnect.settings import MIDDLEWARE as _MIDDLEWARE

MIDDLEWARE = ["benchmarks.profiling.ProfileMiddleware", *_MIDDLEWARE]

_profiling: contextvars.ContextVar[bool] = contextvars.ContextVar("profiling", default=False)
_lock = threading.Lock()
_state: dict[str, Any] = {"loop": None, "threads": None, "walls": [], "hops": 0}
INTERVAL = 0.0001


def _add(key: str, session: Session) -> None:
    with _lock:
        old = _state[key]
        _state[key] = session if old is None else Session.combine(old, session)


_original_thread_handler = asgiref_sync.SyncToAsync.thread_handler


def _thread_handler(
    self: Any, loop: Any, exc_info: Any, task_context: Any, func: Any, child: Any
) -> Any:
    """asgiref runs ``func(child)`` in the worker thread; ``func`` enters the caller's
    context, so whether to profile is known only inside it."""

    def profiled() -> Any:
        if not _profiling.get():
            return child()
        profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        profiler.start()
        try:
            return child()
        finally:
            profiler.stop()
            _add("threads", profiler.last_session)
            with _lock:
                _state["hops"] += 1

    return _original_thread_handler(self, loop, exc_info, task_context, func, profiled)


asgiref_sync.SyncToAsync.thread_handler = _thread_handler  # type: ignore[method-assign]


def _report(request: HttpRequest) -> HttpResponse:
    with _lock:
        loop, threads, walls, hops = (
            _state["loop"],
            _state["threads"],
            _state["walls"],
            _state["hops"],
        )
        _state.update(loop=None, threads=None, walls=[], hops=0)
    parts = [f"profiled requests: {len(walls)}, thread hops: {hops}\n"]
    if walls:
        ordered = sorted(walls)
        parts.append(
            f"wall ms in the chain: p50 {ordered[len(ordered) // 2]:.2f}, "
            f"max {ordered[-1]:.2f}, mean {sum(walls) / len(walls):.2f}\n"
        )
    for title, session in (("EVENT LOOP", loop), ("THREADS", threads)):
        if session is None:
            continue
        profiler = Profiler(interval=INTERVAL)
        profiler._last_session = session
        parts.append(f"\n===== {title} =====\n")
        parts.append(profiler.output_text(unicode=True, show_all=False, short_mode=False))
        if "html" in request.GET:
            path = os.path.join(os.environ.get("WACONNECT_DATA_DIR", "/tmp"), f"{title[0]}.html")
            with open(path, "w") as fh:
                fh.write(profiler.output_html())
    return HttpResponse("".join(parts), content_type="text/plain")


@sync_and_async_middleware
def ProfileMiddleware(
    get_response: Callable[[HttpRequest], Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    async def middleware(request: HttpRequest) -> HttpResponse:
        if request.path == "/__profile__/":
            return _report(request)
        if request.headers.get("X-Waconnect-Profile") != "1":
            return await get_response(request)
        token = _profiling.set(True)
        profiler = Profiler(interval=INTERVAL, async_mode="enabled")
        started = time.perf_counter()
        profiler.start()
        try:
            return await get_response(request)
        finally:
            profiler.stop()
            _state["walls"].append((time.perf_counter() - started) * 1000)
            _add("loop", profiler.last_session)
            _profiling.reset(token)

    return middleware
