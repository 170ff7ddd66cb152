"""Waiting on the simulated WhatsApp: until sessions are connected, idle, or an
owner has let go. A mixin of :class:`~sessions_app.drivers.simulated.SimulatedWhatsApp`
(the state it reads is the world's); tests and the service's control line use it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable
from typing import Any


class WorldWaits:
    """Condition waits over the world's live connections; ``_notify`` after a change."""

    live: collections.Counter[int]
    _connections: dict[int, list[Any]]
    _changed: asyncio.Condition | None

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked after every change of the world,
        messages carried included); False if it did not within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(predicate)
                return True
        return False

    async def until_live(self, session_id: int, count: int) -> None:
        """Wait until ``session_id`` has exactly ``count`` live connections."""
        await self._until(lambda: self.live[session_id] == count)

    def connected_sessions(self, exclude_owner: str = "") -> set[int]:
        """Sessions with a live connection that WhatsApp considers logged in
        (opened by anyone but ``exclude_owner``, when given)."""
        return {
            sid
            for sid, conns in self._connections.items()
            if any(c.connected and not (exclude_owner and c.owner == exclude_owner) for c in conns)
        }

    async def until_connected(
        self, session_ids: Iterable[int], timeout: float, exclude_owner: str = ""
    ) -> set[int]:
        """Wait until every session in ``session_ids`` is connected; return the missing."""
        wanted = set(session_ids)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(lambda: wanted <= self.connected_sessions(exclude_owner))
        return wanted - self.connected_sessions(exclude_owner)

    async def until_idle(self, session_ids: Iterable[int], timeout: float) -> set[int]:
        """Wait until no session in ``session_ids`` has a live connection; return the rest."""
        wanted = set(session_ids)

        def busy() -> set[int]:
            return {sid for sid in wanted if self.live[sid]}

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(lambda: not busy())
        return busy()

    def live_of(self, owner: str) -> int:
        """How many live connections ``owner`` holds."""
        return sum(c.owner == owner for conns in self._connections.values() for c in conns)

    async def until_owner_idle(self, owner: str, timeout: float) -> int:
        """Wait until ``owner`` holds no live connection; return how many it still holds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._until(lambda: not self.live_of(owner))
        return self.live_of(owner)

    async def _until(self, predicate: Callable[[], bool]) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(predicate)

    def _notify(self) -> None:
        if self._changed is None:
            return
        changed = self._changed

        async def notify() -> None:
            async with changed:
                changed.notify_all()

        asyncio.get_running_loop().create_task(notify())
