"""Profile a window of a benchmark process with pyinstrument: the event loop and the
database threads, each under a profiler of its own (never in production).

pyinstrument profiles the thread it was started in. The event loop's profiler
starts on the loop's thread; a pool's threads each get one by a job per thread
that waits on a barrier (so every thread of the pool takes exactly one), started
before the window and stopped after it::

    window = ProfileWindow({"messages-db": (executor, 4), "supervisor-db": (other, 1)})
    await window.start()
    ...  # the measured work
    await window.stop(Path("profile-dir"))

Each profile is written as text (``<name>.txt``) and HTML (``<name>.html``); a
pool's threads are combined into one profile. pyinstrument samples wall time (a
thread waiting for PostgreSQL or for the GIL counts); the threads also run
cProfile on their own CPU clock (``time.thread_time``), written as
``<name>.cpu.txt``: where their CPU goes.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import threading
import time
from concurrent.futures import Executor
from pathlib import Path

from pyinstrument import Profiler
from pyinstrument.session import Session

INTERVAL = 0.0005


class ProfileWindow:
    """Profilers for the event loop and for every thread of some executors."""

    def __init__(self, pools: dict[str, tuple[Executor, int]]) -> None:
        self.pools = pools
        self.loop_profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        self._local = threading.local()
        self._sessions: dict[str, list[Session]] = {name: [] for name in pools}
        self._cpu: dict[str, list[cProfile.Profile]] = {name: [] for name in pools}

    async def _on_every_thread(self, name: str, start: bool) -> None:
        executor, size = self.pools[name]
        barrier = threading.Barrier(size)

        def job() -> None:
            barrier.wait(timeout=30)  # every thread of the pool holds one job
            if start:
                self._local.profiler = Profiler(interval=INTERVAL, async_mode="disabled")
                self._local.profiler.start()
                self._local.cpu = cProfile.Profile(time.thread_time)
                self._local.cpu.enable()
            else:
                self._local.cpu.disable()
                self._cpu[name].append(self._local.cpu)
                profiler: Profiler = self._local.profiler
                session = profiler.stop()
                self._sessions[name].append(session)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(executor, job) for _ in range(size)))

    async def start(self) -> None:
        for name in self.pools:
            await self._on_every_thread(name, start=True)
        self.loop_profiler.start()

    async def stop(self, directory: Path) -> None:
        self.loop_profiler.stop()
        for name in self.pools:
            await self._on_every_thread(name, start=False)
        await asyncio.to_thread(self._write_all, directory)

    def _write_all(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._write(directory, "event-loop", self.loop_profiler.last_session)
        for name, sessions in self._sessions.items():
            combined = sessions[0]
            for session in sessions[1:]:
                combined = Session.combine(combined, session)
            self._write(directory, name, combined)
            with (directory / f"{name}.cpu.txt").open("w") as out:
                stats = pstats.Stats(*self._cpu[name], stream=out)
                stats.sort_stats("cumulative").print_stats(80)
                stats.sort_stats("tottime").print_stats(40)

    @staticmethod
    def _write(directory: Path, name: str, session: Session | None) -> None:
        if session is None:
            return
        profiler = Profiler(interval=INTERVAL)
        profiler._last_session = session
        (directory / f"{name}.txt").write_text(
            profiler.output_text(unicode=True, show_all=False, short_mode=False)
        )
        (directory / f"{name}.html").write_text(profiler.output_html())
