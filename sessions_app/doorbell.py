"""Channel-layer group names and the messages rung through them.

The channel layer is a doorbell, not a mailbox: a message may be lost (a process
restarting, Redis dropping a connection) and nothing breaks, because the database
holds the truth and the supervisor's periodic reconcile reads it again. So every
function here swallows a layer failure after logging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer

from ops import metrics

logger = logging.getLogger(__name__)

SUPERVISORS_GROUP = "waconnect.supervisors"
LIST_GROUP = "waconnect.sessions"


#: Seconds a doorbell's channel may take to leave its group when its listener stops.
LEAVE_TIMEOUT = 1.0


#: Leaves under way whose caller was cancelled (a reference, so none is collected early).
_leaving: set[asyncio.Task[None]] = set()


async def leave_group(layer: Any, group: str, channel: str) -> None:
    """Take ``channel`` out of ``group``, within :data:`LEAVE_TIMEOUT`, never raising
    but a cancellation of the caller, which does not cut the leave short.

    For a listener that stops (the supervisor's doorbell, the webhook dispatcher's):
    channels-redis's ``group_discard``, after the receive it waited in was
    cancelled, once waited out Redis's 30 s socket timeout and held a stop up. A
    stop cancels its listeners again until they end
    (:func:`~sessions_app.stopping.cancel_until_done`), which would cancel the
    leave in their ``finally`` too: it goes on in a task of its own (a channel
    left in the group gets every ring until the layer's ``group_expiry``, a day)."""

    async def leave() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await layer.group_discard(group, channel)

    task = asyncio.ensure_future(leave())
    _leaving.add(task)
    task.add_done_callback(_leaving.discard)
    await asyncio.shield(task)


def session_group(pk: int) -> str:
    """The group of browsers watching one session."""
    return f"waconnect.session.{int(pk)}"


def user_group(pk: int) -> str:
    """The group of one user's open sockets (told to re-check the user's rights)."""
    return f"waconnect.user.{int(pk)}"


async def recheck_users(user_ids: list[int], session_key_hash: str = "") -> None:
    """Tell every open socket of these users to re-check them against the database.

    ``session_key_hash`` (a logout) closes the sockets of that login session at
    once, without waiting for the session row to be flushed.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "user.recheck", "logged_out": session_key_hash}
    for user_id in user_ids:
        try:
            await layer.group_send(user_group(user_id), message)
        except Exception:
            logger.warning(
                "could not tell user %s's sockets to re-check; their next ping will",
                user_id,
                exc_info=True,
            )


def recheck_users_sync(user_ids: list[int], session_key_hash: str = "") -> None:
    async_to_sync(recheck_users)(user_ids, session_key_hash)


async def ring_supervisors(session_id: int, reason: str) -> None:
    """Tell every supervisor that a session's intent changed (owner acts, others claim)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(
            SUPERVISORS_GROUP,
            {"type": "intent.changed", "session": int(session_id), "reason": reason},
        )
    except Exception:
        logger.warning(
            "could not ring the supervisors; the reconcile will catch up",
            exc_info=True,
            extra={"session": session_id},
        )


async def wake_supervisors(reason: str) -> None:
    """Tell every supervisor to look for work now: one joined, left or handed over."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(SUPERVISORS_GROUP, {"type": "supervisors.wake", "reason": reason})
    except Exception:
        logger.warning("could not wake the supervisors; the reconcile will catch up", exc_info=True)


#: Rings under way from synchronous code (a reference, so none is collected early).
_ringing: set[asyncio.Task[None]] = set()


def _serving_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop this thread does synchronous work for (a request's or a
    consumer's thread under ASGI, as asgiref records it for ``async_to_sync``), or None."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or not loop.is_running() or loop.is_closed():
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return loop
    return None  # this thread runs a loop of its own


def ring_supervisors_sync(session_id: int, reason: str) -> None:
    """:func:`ring_supervisors` from synchronous code.

    In a thread working for a running event loop (a page's or an API request's, a
    socket's) the ring is handed to that loop without waiting for it: waiting held
    the request until the loop got round to it, often behind the very claim the ring
    started (a scratch trace: the create answered ~5 ms after its own ring was
    heard). Elsewhere (a management command, a test) it is sent before returning.
    """
    loop = _serving_loop()
    if loop is None:
        async_to_sync(ring_supervisors)(session_id, reason)
        return

    def start() -> None:
        task = loop.create_task(ring_supervisors(session_id, reason))
        _ringing.add(task)
        task.add_done_callback(_ringing.discard)

    loop.call_soon_threadsafe(start)


async def publish(snapshot: dict[str, Any], row: dict[str, Any] | None) -> None:
    """Push a session's new snapshot to its watchers and its row to the list page."""
    layer = get_channel_layer()
    if layer is None:
        return
    session_id = snapshot["id"]
    try:
        await layer.group_send(
            session_group(session_id), {"type": "session.update", "snapshot": snapshot}
        )
        metrics.pushed(snapshot, time.perf_counter())
        if row is not None:
            await layer.group_send(LIST_GROUP, {"type": "session.row", "row": row})
    except Exception:
        logger.warning(
            "could not push a session update; browsers will resync on reconnect",
            exc_info=True,
            extra={"session": session_id},
        )


async def publish_removed(session_id: int) -> None:
    """Tell watchers a session is gone (deleted)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "session.removed", "id": int(session_id)}
    try:
        await layer.group_send(session_group(session_id), message)
        await layer.group_send(LIST_GROUP, message)
    except Exception:
        logger.warning("could not push a removal", exc_info=True, extra={"session": session_id})
