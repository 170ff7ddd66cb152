"""WebSockets that keep pages live: one per watched session, one for the list.

Shape (as in Channels' own sample app): check the user, join the group, accept,
send the current snapshot from the database, then forward every push. A browser
that connects late therefore sees the current QR at once. The only messages a
browser may send are tiny pings; anything else is ignored, anything large closes
the socket.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from sessions_app import doorbell, snapshots
from sessions_app.models import WaSession

logger = logging.getLogger(__name__)

#: Close codes (4000–4999 are the application's): the page shows why.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_BIG = 1009
MAX_MESSAGE_BYTES = 1024

#: Channel-layer messages that only forward data to the browser (no database).
PUSHES = frozenset({"session.update", "session.row", "session.removed"})


class _StaffConsumer(AsyncWebsocketConsumer):
    """Accept only active staff users; everything else is closed with a reason code."""

    group: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not (user.is_active and user.is_staff):
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        # Join first, then read: a push racing the read is queued behind this
        # handler, and the page drops anything older than the snapshot's version.
        await self.channel_layer.group_add(self.group, self.channel_name)
        snapshot = await self.initial()
        await self.accept()
        if snapshot is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.send_json(snapshot)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Pushes skip Channels' per-message database clean-up.

        Since Channels 4.2 every handler is preceded by ``aclose_old_connections()``,
        a hop through the process's one thread for synchronous code; with 1,000
        sockets watching one session, that was half of a QR push's CPU (see
        docs/benchmarks.md, fan-out). Push handlers only forward what the channel
        layer brought, so they go straight through; everything else as usual.
        """
        if message.get("type") in PUSHES:
            handler = getattr(self, get_handler_name(message), None)
            if handler is not None:
                await handler(message)
                return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > MAX_MESSAGE_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        try:
            message = json.loads(text_data) if text_data is not None else None
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_json({"type": "error", "error": "unsupported message"})

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def initial(self) -> dict[str, Any] | None:
        raise NotImplementedError


class SessionConsumer(_StaffConsumer):
    """``/ws/sessions/<pk>/``: one session's snapshot, then every change."""

    async def connect(self) -> None:
        self.session_id = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = doorbell.session_group(self.session_id)
        await super().connect()

    @database_sync_to_async
    def initial(self) -> dict[str, Any] | None:
        session = WaSession.objects.filter(pk=self.session_id).first()
        if session is None:
            return None
        return {"type": "snapshot", "snapshot": snapshots.snapshot(session)}

    async def session_update(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "snapshot", "snapshot": message["snapshot"]})

    async def session_removed(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "removed", "id": message["id"]})


class SessionListConsumer(_StaffConsumer):
    """``/ws/sessions/``: every session's row, then every row change."""

    group = doorbell.LIST_GROUP

    @database_sync_to_async
    def initial(self) -> dict[str, Any] | None:
        return {"type": "rows", "rows": [snapshots.row(s) for s in WaSession.objects.all()]}

    async def session_row(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "row", "row": message["row"]})

    async def session_removed(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "removed", "id": message["id"]})
