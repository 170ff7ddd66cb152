"""Awaiting what the supervisor does, through the same pushes a browser gets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from sessions_app import doorbell, snapshots
from sessions_app.models import WaSession

Snapshot = dict[str, Any]


@sync_to_async
def current(session_id: int) -> Snapshot | None:
    session = WaSession.objects.filter(pk=session_id).first()
    return None if session is None else snapshots.snapshot(session)


async def until(
    session_id: int, predicate: Callable[[Snapshot], bool], timeout: float = 5.0
) -> Snapshot:
    """Wait for a pushed snapshot of ``session_id`` that satisfies ``predicate``.

    Subscribes first, then checks the database, so a change that happened just
    before the call is not missed.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()  # see Supervisor._doorbell_loop on prefixes
    await layer.group_add(doorbell.session_group(session_id), channel)
    try:
        snap = await current(session_id)
        if predicate(snap):  # type: ignore[arg-type]
            return snap  # type: ignore[return-value]
        async with asyncio.timeout(timeout):
            while True:
                message = await layer.receive(channel)
                if message["type"] == "session.update" and predicate(message["snapshot"]):
                    return message["snapshot"]
                if message["type"] == "session.removed" and predicate(None):  # type: ignore[arg-type]
                    return {}
    except TimeoutError:
        raise AssertionError(
            f"session {session_id} never matched; last seen {await current(session_id)}"
        ) from None
    finally:
        await layer.group_discard(doorbell.session_group(session_id), channel)


def state_is(*states: str) -> Callable[[Snapshot], bool]:
    return lambda snap: snap is not None and snap["state"] in states


def settled(state: str) -> Callable[[Snapshot], bool]:
    """In ``state`` with no owner: the supervisor has nothing more to do."""
    return lambda snap: snap is not None and snap["state"] == state and snap["lease_owner"] == ""


def has_event(text: str) -> Callable[[Snapshot], bool]:
    """The session's recent event log (pushed with every event) mentions ``text``."""
    return lambda snap: (
        snap is not None and any(text in event["message"] for event in snap.get("events", []))
    )
