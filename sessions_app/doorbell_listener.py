"""The supervisor's ear: its doorbell channel in the group every intent rings.

The half of :class:`~sessions_app.supervisor.Supervisor` that listens: one
channel of the channel layer joined to :data:`sessions_app.doorbell.SUPERVISORS_GROUP`
(the web side rings it after an intent commits, see :mod:`sessions_app.doorbell`).
A ring for a session this supervisor runs pokes that session's runner; any other
ring wakes the claim pass. A receive that fails is retried with backoff (0.5 s
doubling, at most 30 s); the periodic reconcile repairs what a lost ring missed.

A mixin: its state (``layer``, ``_channel``, ``_listening``) is the supervisor's;
the reconcile loop waits for ``_listening`` before its first pass, so no ring
falls between joining and claiming.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from channels.layers import BaseChannelLayer

from sessions_app import doorbell

if TYPE_CHECKING:
    from sessions_app.runner import SessionRunner

logger = logging.getLogger(__name__)


class DoorbellListenerMixin:
    """The doorbell loop and :meth:`ring`."""

    layer: BaseChannelLayer | None
    runners: dict[int, SessionRunner]
    _channel: str | None
    _listening: asyncio.Event
    _stop: asyncio.Event
    _wake: asyncio.Event
    _rung: set[int]
    _rung_while_claiming: set[int]
    _claiming: int
    _census_due: bool

    def _extra(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _doorbell_loop(self) -> None:
        if self.layer is None:
            self._listening.set()
            await asyncio.Event().wait()
            return
        # The default prefix, not one of our own: channels-redis reads every
        # process-local channel through one BLPOP on one prefix, and a channel with
        # another prefix would starve the consumers' receives in the same process.
        channel = await self.layer.new_channel()
        await self.layer.group_add(doorbell.SUPERVISORS_GROUP, channel)
        self._channel = channel
        self._listening.set()
        try:
            failures = 0
            while True:
                try:
                    message = await self.layer.receive(channel)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    current = asyncio.current_task()
                    if self._stop.is_set() or (current is not None and current.cancelling()):
                        # channels-redis can turn our cancellation into a read
                        # timeout: we are being stopped, not failing.
                        return
                    failures += 1
                    logger.warning(
                        "doorbell receive failed; retrying", exc_info=True, extra=self._extra()
                    )
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                    continue
                self.ring(message)
        finally:
            await doorbell.leave_group(self.layer, doorbell.SUPERVISORS_GROUP, channel)

    def ring(self, message: dict[str, Any]) -> None:
        """Act on a doorbell message: poke the owner's runner, or look for work (a
        ring that names a session we do not run: perhaps only that one, see
        ``Supervisor.reconcile``; any other: a full pass with a census)."""
        session_id = message.get("session")
        runner = self.runners.get(session_id) if isinstance(session_id, int) else None
        if runner is not None:
            runner.poke(str(message.get("reason", "ring")))
            return
        if isinstance(session_id, int):
            self._rung.add(session_id)
            if self._claiming:
                self._rung_while_claiming.add(session_id)
        else:
            self._census_due = True
        self._wake.set()
