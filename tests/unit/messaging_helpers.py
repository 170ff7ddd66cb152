"""Awaiting message changes through the same pushes a page gets; a scripted driver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from messaging import live
from messaging.models import Message
from sessions_app.drivers.base import DriverError, DriverEvent, MessageSent, SendFailed

Rows = list[dict[str, Any]]


@sync_to_async
def rows(session_id: int) -> Rows:
    return [live.payload(m) for m in Message.objects.filter(session_id=session_id).order_by("id")]


async def until_messages(
    session_id: int, predicate: Callable[[Rows], bool], timeout: float = 10.0
) -> Rows:
    """Wait until the session's messages (as the database has them) satisfy
    ``predicate``, re-reading on every push to the session's message group.

    Subscribes first, then reads, so a change just before the call is not missed.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(live.messages_group(session_id), channel)
    try:
        async with asyncio.timeout(timeout):
            while True:
                current = await rows(session_id)
                if predicate(current):
                    return current
                await layer.receive(channel)
    except TimeoutError:
        raise AssertionError(f"messages never matched: {await rows(session_id)}") from None
    finally:
        await layer.group_discard(live.messages_group(session_id), channel)


def statuses(*wanted: str) -> Callable[[Rows], bool]:
    """The session's messages, in id order, are in exactly these statuses."""
    return lambda current: [m["status"] for m in current] == list(wanted)


class ScriptedSends:
    """``send_text`` for a test driver: answers per recipient JID, through ``deliver``
    (the runner's path for the connection's events), and keeps a log by ref.

    Behaviours: ``"sent"`` (default), ``"refused:<reason>"``, ``"unknown"``,
    ``"silent"`` (never answers), ``"raise"`` (any error), ``"driver-error"``.
    """

    def __init__(self) -> None:
        self.deliver: Callable[[DriverEvent], Any] | None = None
        self.behaviour: dict[str, str] = {}
        self.sends: list[tuple[str, str]] = []  # (ref, to)
        self.overlaps = 0  # a send asked for while another was unanswered
        self._open: set[str] = set()
        self.asked = asyncio.Event()  # set at every send

    async def send_text(self, session_id: int, ref: str, to: str, text: str) -> None:
        if self._open:
            self.overlaps += 1
        self.sends.append((ref, to))
        self.asked.set()
        how = self.behaviour.get(to, "sent")
        if how == "raise":
            raise ConnectionError("broken pipe")
        if how == "driver-error":
            raise DriverError("no connection is open to send on")
        if how == "silent":
            self._open.add(ref)
            return
        if how == "sent":
            event: DriverEvent = MessageSent(session_id, ref, f"WA-{ref[:8]}", timezone.now())
        elif how == "unknown":
            event = SendFailed(session_id, ref, "unknown", "timeout", "no ack")
        else:
            event = SendFailed(session_id, ref, "refused", how.split(":", 1)[1], "refused")
        assert self.deliver is not None
        asyncio.get_running_loop().call_soon(self.deliver, event)

    def refs(self) -> list[str]:
        return [ref for ref, _ in self.sends]
