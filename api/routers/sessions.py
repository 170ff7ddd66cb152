"""``/api/v1/sessions``: list, create, read (with the long poll), act, delete.

Views are thin: check the principal (scope, permission, session list), then call
:mod:`sessions_app.intents`, the web side's only writer, as the pages do.
Sessions outside a token's session list answer 404, exactly like sessions that
do not exist, so a limited token cannot probe which others exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema
from ninja.responses import Status
from pydantic import Field

from api import idempotency, scopes
from api.auth import Principal
from api.errors import ApiError, not_found
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, paginate
from api.routers.session_schemas import (
    EventOut,
    PairPhoneIn,
    SessionIn,
    SessionOut,
    StateName,
    session_out,
)
from api.validation import clean_session_name
from sessions_app import conf, doorbell, intents, snapshots
from sessions_app.forms import PairPhoneForm
from sessions_app.models import SessionEvent, WaSession
from sessions_app.states import Desired

router = Router(tags=["sessions"])


def principal(request: HttpRequest) -> Principal:
    return request.auth  # type: ignore[attr-defined,no-any-return]


def get_session(request: HttpRequest, session_id: int) -> WaSession:
    """The session, if it exists and the token may see it; else 404."""
    if not principal(request).may_see(session_id):
        raise not_found()
    session = WaSession.objects.filter(pk=session_id).first()
    if session is None:
        raise not_found()
    return session


def _out(session: WaSession) -> dict[str, Any]:
    return session_out(snapshots.snapshot(session, with_events=False))


def _fresh(session_id: int) -> dict[str, Any]:
    """The row as it is now; 404 if a supervisor removed it meanwhile."""
    session = WaSession.objects.filter(pk=session_id).first()
    if session is None:
        raise not_found()
    return _out(session)


class SessionFilters(Schema):
    state: StateName | None = Field(None, description="Only sessions in this observed state.")
    name: str | None = Field(None, description="Only the session with this name (any case).")
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


@router.get("", response=Page[SessionOut], summary="List sessions")
def list_sessions(request: HttpRequest, filters: Query[SessionFilters]) -> dict[str, Any]:
    """Sessions the token may see, oldest first, filtered by ``state`` and ``name``."""
    who = principal(request)
    who.require(scopes.SESSIONS_READ, scopes.VIEW)
    queryset = WaSession.objects.all()
    if who.session_ids is not None:
        queryset = queryset.filter(pk__in=who.session_ids)
    if filters.state:
        queryset = queryset.filter(state=filters.state)
    if filters.name is not None:
        queryset = queryset.filter(name__iexact=filters.name)
    rows, links = paginate(queryset, cursor=filters.cursor, limit=filters.limit)
    return {"data": [_out(s) for s in rows], **links}


@router.post(
    "",
    response={201: SessionOut},
    summary="Create a session",
    openapi_extra={
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Repeat a request safely: the same key returns the first answer.",
            }
        ]
    },
)
def create_session(request: HttpRequest, body: SessionIn) -> HttpResponse:
    """A new session that should run; its QR round starts at once (``version`` tells when)."""
    who = principal(request)
    who.require(scopes.SESSIONS_WRITE, scopes.ADD)
    if who.session_ids is not None:
        raise ApiError(
            403, "session_limited", "A token limited to some sessions cannot create sessions."
        )

    def work() -> tuple[int, dict[str, Any]]:
        name = clean_session_name(body.name)
        # A name taken concurrently is refused by intents (IntentRefused name_taken: 409).
        session = intents.create_session(name, who.actor)
        return 201, SessionOut.model_validate(_out(session)).model_dump(mode="json")

    return idempotency.once(request, body.model_dump(), work)


@sync_to_async
def _read_visible(
    request: HttpRequest,
    session_id: int,
    release_unless: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """The visible session's snapshot. With ``release_unless``: when the snapshot does
    not satisfy it (the caller is about to wait), the connections of this request's
    thread are closed (with a pool: given back) in the same thread hop."""
    snapshot = snapshots.snapshot(get_session(request, session_id), with_events=False)
    if release_unless is not None and not release_unless(snapshot):
        connections.close_all()
    return snapshot


@router.get("/{session_id}", response=SessionOut, summary="Read a session (long poll)")
async def read_session(
    request: HttpRequest,
    session_id: int,
    after_version: int | None = Query(
        None, ge=0, description="Answer only once the session's version is above this."
    ),
    wait: float = Query(
        0, ge=0, le=30, description="Seconds to wait for a newer version (capped at 30)."
    ),
) -> dict[str, Any]:
    """The session now; with ``after_version`` and ``wait``, as soon as it changes.

    The wait is fed by the channel-layer push the pages get (a new QR code, a
    state change), not by reading the database in a loop: the view joins the
    session's group *before* it reads the row, so a change between the two is
    not missed, then answers with the first pushed snapshot past the version, or
    with the current one when ``wait`` runs out.
    """
    principal(request).require(scopes.SESSIONS_READ, scopes.VIEW)
    wait = min(wait, conf.api_max_wait())
    if after_version is None or wait <= 0:
        return session_out(await _read_visible(request, session_id))
    snapshot = await wait_for_snapshot(
        request, session_id, wait, lambda snap: snap["version"] > after_version
    )
    return session_out(snapshot)


async def wait_for_snapshot(
    request: HttpRequest,
    session_id: int,
    wait: float,
    done: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """The session's snapshot as soon as ``done(snapshot)`` holds, or the latest one
    once ``wait`` seconds (at most ``WACONNECT_API_MAX_WAIT``) have passed; 404 if it
    is removed meanwhile (or the token may not see it).

    Fed by the channel-layer push the pages get, not by reading the database in a
    loop: joins the session's group *before* it reads the row, so a change between
    the two is not missed, then takes pushed snapshots (newer versions only) until
    one is done. Without a channel layer: the row as it is now.
    """
    wait = min(wait, conf.api_max_wait())
    layer = get_channel_layer()
    if layer is None or wait <= 0:  # no layer configured: no push to wait for
        return await _read_visible(request, session_id)
    group = doorbell.session_group(session_id)
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    latest: dict[str, Any] | None = None
    try:
        # Unless it is done, this request's database connection is handed back
        # before waiting (in the read's own hop): the wait needs none, and held for
        # up to 30 s it would empty the process's pool (WACONNECT_DB_POOL_MAX) with
        # a handful of waiting clients.
        latest = await _read_visible(request, session_id, release_unless=done)
        if done(latest):
            return latest
        async with asyncio.timeout(wait):
            while True:
                message = await layer.receive(channel)
                if message.get("type") == "session.removed":
                    raise not_found()
                if message.get("type") != "session.update":
                    continue
                snapshot = message["snapshot"]
                if snapshot["version"] > latest["version"]:
                    latest = snapshot
                if done(latest):
                    return latest
    except TimeoutError:
        assert latest is not None
        return latest
    finally:
        await layer.group_discard(group, channel)


@router.delete("/{session_id}", response={202: SessionOut}, summary="Delete a session")
def delete_session(request: HttpRequest, session_id: int) -> Status:
    """Ask for deletion: a supervisor unlinks the device, then the row goes (then 404)."""
    who = principal(request)
    who.require(scopes.SESSIONS_WRITE, scopes.DELETE)
    session = get_session(request, session_id)
    if session.desired_state != Desired.DELETED:
        intents.delete(session, who.actor)
    now = WaSession.objects.filter(pk=session_id).first()
    if now is None:  # the supervisor finished the deletion before this answer
        session.desired_state = Desired.DELETED
        now = session
    return Status(202, _out(now))


def _act(request: HttpRequest, session_id: int, action: Callable[[WaSession, str], None]) -> Status:
    who = principal(request)
    who.require(scopes.SESSIONS_WRITE, scopes.CHANGE)
    session = get_session(request, session_id)
    action(session, who.actor)  # a row being deleted: IntentRefused("deleting"), 409
    return Status(202, _fresh(session_id))


@router.post("/{session_id}/start", response={202: SessionOut}, summary="Start")
def start(request: HttpRequest, session_id: int) -> Status:
    """Run the session: resume its device, or start a QR round if it has none."""
    return _act(request, session_id, intents.start)


@router.post("/{session_id}/stop", response={202: SessionOut}, summary="Stop")
def stop(request: HttpRequest, session_id: int) -> Status:
    """Close the connection and keep it closed; the device stays linked."""
    return _act(request, session_id, intents.stop)


@router.post("/{session_id}/new-qr", response={202: SessionOut}, summary="New QR code")
def new_qr(request: HttpRequest, session_id: int) -> Status:
    """Start a new QR round (pair a new device)."""
    return _act(request, session_id, intents.new_qr)


@router.post("/{session_id}/logout", response={202: SessionOut}, summary="Log out")
def logout(request: HttpRequest, session_id: int) -> Status:
    """Unlink the device from WhatsApp and forget its credentials."""
    return _act(request, session_id, intents.logout)


@router.post("/{session_id}/pair-phone", response={202: SessionOut}, summary="Pair by phone number")
def pair_phone(request: HttpRequest, session_id: int, body: PairPhoneIn) -> Status:
    """Start a pairing round that links by phone number: ``pairing_code`` appears."""
    form = PairPhoneForm({"phone": body.phone})  # the page's validator, not a copy
    if not form.is_valid():
        raise ApiError(
            422,
            "validation_error",
            "The request is not valid; see errors.",
            errors=[
                {"field": "phone", "in": "body", "message": m, "type": "value_error"}
                for m in form.errors["phone"]
            ],
        )
    phone = form.cleaned_data["phone"]
    return _act(request, session_id, lambda s, actor: intents.pair_by_phone(s, phone, actor))


class EventQuery(Schema):
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


@router.get("/{session_id}/events", response=Page[EventOut], summary="Event log")
def events(request: HttpRequest, session_id: int, query: Query[EventQuery]) -> dict[str, Any]:
    """The session's event log, newest first: what happened, when, and who asked."""
    principal(request).require(scopes.SESSIONS_READ, scopes.VIEW)
    session = get_session(request, session_id)
    rows, links = paginate(
        SessionEvent.objects.filter(session=session),
        cursor=query.cursor,
        limit=query.limit,
        newest_first=True,
    )
    return {"data": rows, **links}
