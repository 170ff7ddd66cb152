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
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import reverse

from messaging import live
from sessions_app import (
    doorbell,
    intents,
    messages_panel,
    permissions,
    revocation,
    service,
    snapshots,
    socket_pages,
)
from sessions_app.dbthread import socket_db
from sessions_app.forms import SessionCreateForm, errors_json
from sessions_app.models import WaSession

logger = logging.getLogger(__name__)

#: Close codes. WebSocket reserves 1000–2999 for the protocol (a server may not
#: send 1009 itself: Daphne turns it into 1011 and a traceback); 4000–4999 are the
#: application's, modelled on HTTP statuses. The page (live.js) acts on them.
CLOSE_UNAUTHENTICATED = 4401  #: not logged in, logged out, login expired, deactivated
CLOSE_FORBIDDEN = 4403  #: not staff, or without the permission to see sessions
CLOSE_NOT_FOUND = 4404  #: no such session, or no such socket path
CLOSE_TOO_BIG = 4413  #: a browser message over MAX_MESSAGE_BYTES
MAX_MESSAGE_BYTES = 1024

#: Channel-layer messages that only forward data to the browser (no database).
PUSHES = frozenset({"session.update", "session.row", "session.removed", "message.update"})


def refusal(user: Any, perms: tuple[str, ...] = ()) -> int | None:
    """The close code for a user who may not watch sessions (or lacks one of
    ``perms``), or None. Synchronous."""
    if user is None or not user.is_authenticated or not user.is_active:
        return CLOSE_UNAUTHENTICATED
    if not permissions.can_view(user) or (perms and not permissions.can(user, *perms)):
        return CLOSE_FORBIDDEN
    return None


class _OperatorConsumer(AsyncWebsocketConsumer):
    """Accept only staff who may see sessions; close with a reason code otherwise.

    The user is checked on connect, again whenever something may have taken their
    rights away (``revocation``: a message to the user's group), and on the
    browser's pings (at most once per ``RECHECK_EVERY`` seconds) — each time fresh
    from the session store and the database. Every close leaves every group.
    """

    group: str = ""
    #: Permissions needed beyond seeing sessions.
    perms: tuple[str, ...] = ()
    also_groups: tuple[str, ...] = ()  #: more groups to forward pushes from
    RECHECK_EVERY = 1.0

    async def connect(self) -> None:
        self.joined: list[str] = []
        self.user_id: int | None = None
        self.checked_at = time.monotonic()
        user = self.scope.get("user")
        code = await socket_db(refusal)(user, self.perms)
        if code is not None:
            await self.accept()
            await self.close(code=code)
            return
        self.user_id = user.pk
        session = self.scope.get("session")
        self.session_key_hash = revocation.session_key_hash(session.session_key if session else "")
        # Join first, then read: a push racing the read is queued behind this
        # handler, and the page drops anything older than the snapshot's version.
        await self.join(doorbell.user_group(user.pk))
        if self.group:
            await self.join(self.group)
        for group in self.also_groups:
            await self.join(group)
        snapshot = await self.initial()
        await self.accept()
        if snapshot is None:
            await self.close_with(CLOSE_NOT_FOUND)
            return
        await self.send_json(snapshot)

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.append(group)

    async def leave_groups(self) -> None:
        """Leave every group joined (idempotent): a closed socket gets no more pushes."""
        joined, self.joined = getattr(self, "joined", []), []
        for group in joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def close_with(self, code: int) -> None:
        """Close with an application code, leaving the groups first."""
        await self.leave_groups()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        await self.leave_groups()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Pushes skip Channels' per-message database clean-up.

        Since Channels 4.2 every handler is preceded by ``aclose_old_connections()``,
        a hop through the process's one thread for synchronous code; with 1,000
        sockets watching one session, that was half of a QR push's CPU (see
        docs/benchmarks.md, fan-out). Push handlers only forward what the channel
        layer brought, so they go straight through; everything else as usual.
        """
        if message.get("type") in PUSHES:
            if not getattr(self, "joined", None):
                return  # closed: nothing more reaches the browser
            handler = getattr(self, get_handler_name(message), None)
            if handler is not None:
                await handler(message)
                return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > MAX_MESSAGE_BYTES:
            await self.close_with(CLOSE_TOO_BIG)
            return
        try:
            message = json.loads(text_data) if text_data is not None else None
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("type") == "ping":
            if (
                time.monotonic() - self.checked_at >= self.RECHECK_EVERY
                and not await self.recheck()
            ):
                return
            await self.send_json({"type": "pong"})
        elif isinstance(message, dict):
            await self.on_message(message)
        else:
            await self.send_json({"type": "error", "error": "unsupported message"})

    async def on_message(self, message: dict[str, Any]) -> None:
        """A browser message other than a ping; none is supported here."""
        await self.send_json({"type": "error", "error": "unsupported message"})

    async def user_recheck(self, message: dict[str, Any]) -> None:
        """Something may have taken this user's rights away (``revocation``)."""
        if not self.joined:
            return  # already closed
        if message.get("logged_out") and message["logged_out"] == self.session_key_hash:
            await self.close_with(CLOSE_UNAUTHENTICATED)
            return
        await self.recheck()

    async def recheck(self) -> bool:
        """Check the user again, fresh; close and return False if they lost the right."""
        if not self.joined:
            return False
        self.checked_at = time.monotonic()
        code = await self._fresh_refusal()
        if code is None:
            return True
        await self.close_with(code)
        return False

    @socket_db
    def _fresh_refusal(self) -> int | None:
        return self._check_fresh()[1]

    def _check_fresh(self) -> tuple[Any, int | None]:
        """The socket's user fresh from the session store and the database, and the
        close code if they may no longer use this socket. Synchronous."""
        session = self.scope.get("session")
        user = revocation.fresh_user(session.session_key if session else None)
        if user.is_authenticated and user.pk != self.user_id:
            return user, CLOSE_UNAUTHENTICATED  # another user logged in under this cookie
        return user, refusal(user, self.perms)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def initial(self) -> dict[str, Any] | None:
        raise NotImplementedError


class SessionConsumer(_OperatorConsumer):
    """``/ws/sessions/<pk>/``: one session's snapshot, then every change.

    Its messages too (the detail page's Messages panel): it also joins the
    session's messages group (:func:`messaging.live.messages_group`); the first
    snapshot carries the last messages (``"messages": [item, ...]``, read in the
    same database hop), and each ``message.update`` push (``{"type":
    "message.update", "message": messaging.live.payload(...)}``) is forwarded as
    ``{"type": "message", "message": item}``; an item is
    :func:`sessions_app.messages_panel.panel_item`. The page drops an item older
    (by ``version``) than the one it shows.
    """

    async def connect(self) -> None:
        self.session_id = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = doorbell.session_group(self.session_id)
        self.also_groups = (live.messages_group(self.session_id),)
        await super().connect()

    @socket_db
    def initial(self) -> dict[str, Any] | None:
        session = WaSession.objects.filter(pk=self.session_id).first()
        if session is None:
            return None
        return {
            "type": "snapshot",
            "snapshot": snapshots.snapshot(session),
            "messages": messages_panel.recent(self.session_id),
        }

    async def message_update(self, message: dict[str, Any]) -> None:
        fields = message.get("message")
        if isinstance(fields, dict):
            await self.send_json({"type": "message", "message": messages_panel.panel_item(fields)})

    async def session_update(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "snapshot", "snapshot": message["snapshot"]})

    async def session_removed(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "removed", "id": message["id"]})


class SessionCreateConsumer(SessionConsumer):
    """``/ws/sessions/new/``: the create page's socket, open before "create" is pressed.

    Needs seeing and adding sessions (as the create page). It first sends
    ``{"type": "ready"}``. The page then sends ``{"type": "create", "name": N}``:
    the user is checked again, fresh (as a POST would be), the name goes through the
    create form (the one validator per rule) and ``intents.create_session``; a
    refused name answers ``{"type": "invalid", "errors": {field: [message]}}`` and
    the socket waits for another try. A created session's group is joined, then the
    row read, and the answer is ``{"type": "created", id, url, ws, html}`` (``html``:
    the detail page as a GET would render it now, so it shows anything pushed before
    the join; ``null`` without a CSRF cookie). From then on this is that session's
    socket: every push follows, as on ``/ws/sessions/<pk>/``. This takes the create
    POST (Django's middleware chain, a thread hop per step) and the detail socket's
    handshake off the path from "create" to the QR code.
    """

    perms = (permissions.ADD,)

    async def connect(self) -> None:
        self.session_id = None  # type: ignore[assignment]
        self.group = ""
        await _OperatorConsumer.connect(self)

    async def initial(self) -> dict[str, Any] | None:
        return {"type": "ready"}

    async def on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "create" or self.session_id is not None:
            await super().on_message(message)
            return
        name = message.get("name")
        self.checked_at = time.monotonic()
        # With the supervisor in this process (runserver's), the create's ring waits
        # for the answer's render: the two shared one GIL, and the render slowed the
        # supervisor's way to the first code more than it saved (docs/benchmarks.md,
        # eleventh stop); the page shows the two together anyway (create.js). A
        # supervisor in a process of its own is rung at once.
        ring_late = service.inline_running()
        outcome = await self._create(name if isinstance(name, str) else "", ring=not ring_late)
        if isinstance(outcome, int):
            await self.close_with(outcome)
        elif isinstance(outcome, dict):
            await self.send_json({"type": "invalid", "errors": outcome})
        else:
            self.session_id = outcome[0]
            self.perms = ()  # a watcher of the session from now on: seeing is enough
            self.group = doorbell.session_group(self.session_id)
            try:
                await self.join(self.group)  # join, then read: nothing pushed is missed
                await self.join(live.messages_group(self.session_id))  # the Messages panel's
                answer = await self._created(outcome[1])
            finally:  # rung whatever befell the join or the render: the session must start
                # (a consumer cancelled inside _create, at a shutdown, leaves it to the
                # supervisors' census: a full pass every reconcile_interval, 10 s)
                if ring_late:
                    await doorbell.ring_supervisors(self.session_id, "created")
            await self.send_json(answer)

    @socket_db
    def _create(self, name: str, ring: bool = True) -> int | dict[str, list[str]] | tuple[int, Any]:
        """A close code, the form's errors, or (the new session's id, the fresh user).
        ``ring``: as :func:`intents.create_session`'s."""
        user, code = self._check_fresh()
        if code is not None:
            return code
        form = SessionCreateForm(data={"name": name})
        if not form.is_valid():
            return errors_json(form)
        try:
            session = intents.create_session(
                form.cleaned_data["name"], user.get_username(), ring=ring
            )
        except intents.IntentRefused as refused:  # the name was taken a moment ago
            return {"name": [refused.message]}
        return session.pk, user

    @socket_db
    def _created(self, user: Any) -> dict[str, Any]:
        pk = self.session_id
        session = WaSession.objects.filter(pk=pk).first()
        return {
            "type": "created",
            "id": pk,
            "url": reverse("sessions:detail", args=[pk]),
            "ws": f"/ws/sessions/{pk}/",
            "html": None
            if session is None
            else socket_pages.detail_html(self.scope, user, session),
        }


class SessionListConsumer(_OperatorConsumer):
    """``/ws/sessions/``: every session's row, then every row change."""

    group = doorbell.LIST_GROUP

    @socket_db
    def initial(self) -> dict[str, Any] | None:
        return {"type": "rows", "rows": [snapshots.row(s) for s in WaSession.objects.all()]}

    async def session_row(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "row", "row": message["row"]})

    async def session_removed(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "removed", "id": message["id"]})


class NotFoundConsumer(AsyncWebsocketConsumer):
    """Every other ``/ws/...`` path: accepted and closed with 4404, nothing echoed.

    Without it Channels' router raises for an unknown path, and Daphne answers
    500 with a traceback that repeats the path in the log.
    """

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
