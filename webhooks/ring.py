"""Ringing the dispatchers when deliveries are due: a doorbell, not a mailbox.

:func:`ring_dispatchers` runs after an emitting transaction commits. It wakes the
dispatchers of this process directly (thread-safe, no channel layer: the
supervisor that wrote an event usually delivers it within a millisecond) and,
where none runs in this process (the web tier: a redelivery, a test event, an
endpoint enabled again), rings the others through the channel layer's
:data:`WEBHOOKS_GROUP`. A lost ring costs at most one periodic pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

WEBHOOKS_GROUP = "waconnect.webhooks"
RING = {"type": "webhooks.due"}

_lock = threading.Lock()
#: Wake-up callables of the dispatchers running in this process (thread-safe each).
_local: dict[int, Callable[[], None]] = {}


def register(key: int, wake: Callable[[], None]) -> None:
    with _lock:
        _local[key] = wake


def unregister(key: int) -> None:
    with _lock:
        _local.pop(key, None)


def ring_dispatchers() -> None:
    """Wake the dispatchers: this process's at once, else the others by the layer."""
    with _lock:
        local = list(_local.values())
    for wake in local:
        wake()
    if not local:
        ring_remote()


async def aring_remote() -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(WEBHOOKS_GROUP, RING)
    except Exception:
        logger.warning("could not ring the webhook dispatchers; their sweep will", exc_info=True)


def ring_remote() -> None:
    """Ring every dispatcher through the channel layer, from sync or async code."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:  # on_commit inside an async context: do not block it
        loop.create_task(aring_remote())
        return
    try:
        async_to_sync(aring_remote)()
    except Exception:
        logger.warning("could not ring the webhook dispatchers; their sweep will", exc_info=True)
