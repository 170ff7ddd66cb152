"""The long poll: ``GET /sessions/{id}?after_version=N&wait=S`` answers from the push.

Runs on the in-memory layer here and on channels-redis + PostgreSQL in make
test's second pass. A wrapper around the layer's ``receive`` tells the test when
the view is waiting, so the push is known to arrive while it waits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import AsyncClient

from api.issuing import create_token
from api.routers import sessions as sessions_router
from sessions_app import doorbell, snapshots
from sessions_app.models import WaSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


@sync_to_async
def setup(user: Any) -> tuple[WaSession, str]:
    session = WaSession.objects.create(name="polled", state="connecting", version=3)
    _, text = create_token(user=user, name="poller", scopes=["sessions:read"])
    return session, text


class Poller:
    """Django's AsyncClient (the ASGI handler, in this event loop) with a token."""

    def __init__(self, token: str) -> None:
        self.client = AsyncClient()
        self.headers = {"Authorization": f"Bearer {token}"}

    async def get(self, path: str) -> Any:
        return await self.client.get(path, headers=self.headers)


@pytest.fixture
async def polled(api_user: Any) -> tuple[WaSession, Poller]:
    session, text = await setup(api_user)
    return session, Poller(text)


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once the view waits on the channel layer."""
    event = asyncio.Event()
    layer = get_channel_layer()
    receive = layer.receive

    async def watched(channel: str) -> Any:
        event.set()
        return await receive(channel)

    monkeypatch.setattr(layer, "receive", watched)
    return event


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every database read of the session by the view."""
    seen: list[int] = []
    read = sessions_router._read_visible

    async def counted(request: Any, session_id: int, *args: Any, **kwargs: Any) -> Any:
        seen.append(session_id)
        return await read(request, session_id, *args, **kwargs)

    monkeypatch.setattr(sessions_router, "_read_visible", counted)
    return seen


@sync_to_async
def change(session: WaSession, **fields: Any) -> dict[str, Any]:
    """What a supervisor does: write the row, then build the snapshot to push."""
    WaSession.objects.filter(pk=session.pk).update(**fields)
    return snapshots.snapshot(WaSession.objects.get(pk=session.pk), with_events=False)


async def test_a_newer_version_answers_at_once(
    polled: tuple[WaSession, Poller], reads: list[int]
) -> None:
    session, client = polled
    response = await client.get(f"/api/v1/sessions/{session.pk}?after_version=2&wait=25")
    assert response.status_code == 200
    assert response.json()["version"] == 3
    assert reads == [session.pk]


async def test_the_push_answers_a_waiting_poll_without_reading_again(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event, reads: list[int]
) -> None:
    session, client = polled
    poll = asyncio.create_task(client.get(f"/api/v1/sessions/{session.pk}?after_version=3&wait=25"))
    await waiting.wait()
    snapshot = await change(session, state="qr_required", qr_code="https://wa.me/x#1", version=4)
    await doorbell.publish(snapshot, None)
    response = await poll
    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["state"], body["qr_available"]) == (4, "qr_required", True)
    assert reads == [session.pk]  # one read before waiting; the rest came by push
    assert response["Cache-Control"] == "no-store"


async def test_pushes_at_or_below_the_version_keep_it_waiting(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event
) -> None:
    session, client = polled
    poll = asyncio.create_task(client.get(f"/api/v1/sessions/{session.pk}?after_version=3&wait=25"))
    await waiting.wait()
    stale = await change(session)
    await doorbell.publish(stale, None)  # version 3: not news
    await doorbell.publish({**stale, "id": session.pk + 1, "version": 9}, None)  # another session
    newer = await change(session, state="connected", version=5)
    await doorbell.publish(newer, None)
    response = await poll
    assert response.json()["version"] == 5


async def test_the_wait_runs_out_with_the_current_state(
    polled: tuple[WaSession, Poller], settings: Any
) -> None:
    session, client = polled
    settings.WACONNECT_API_MAX_WAIT = 0.2  # wait=25 is capped by the setting
    response = await client.get(f"/api/v1/sessions/{session.pk}?after_version=3&wait=25")
    assert response.status_code == 200
    assert response.json()["version"] == 3


async def test_a_deleted_session_ends_the_wait_with_404(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event
) -> None:
    session, client = polled
    poll = asyncio.create_task(client.get(f"/api/v1/sessions/{session.pk}?after_version=3&wait=25"))
    await waiting.wait()
    await doorbell.publish_removed(session.pk)
    response = await poll
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize("query", ["after_version=-1&wait=1", "after_version=1&wait=31", "wait=x"])
async def test_bad_long_poll_parameters_are_422(
    polled: tuple[WaSession, Poller], query: str
) -> None:
    session, client = polled
    response = await client.get(f"/api/v1/sessions/{session.pk}?{query}")
    assert response.status_code == 422


async def test_the_group_is_left_after_the_answer(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, client = polled
    layer = get_channel_layer()
    joined: list[str] = []
    left: list[str] = []
    add, discard = layer.group_add, layer.group_discard

    async def group_add(group: str, channel: str) -> None:
        joined.append(channel)
        await add(group, channel)

    async def group_discard(group: str, channel: str) -> None:
        left.append(channel)
        await discard(group, channel)

    monkeypatch.setattr(layer, "group_add", group_add)
    monkeypatch.setattr(layer, "group_discard", group_discard)
    poll = asyncio.create_task(client.get(f"/api/v1/sessions/{session.pk}?after_version=3&wait=25"))
    await waiting.wait()
    await doorbell.publish(await change(session, version=4), None)
    await poll
    assert joined == left and len(joined) == 1
    assert group_name_is(session.pk)


def group_name_is(pk: int) -> bool:
    return doorbell.session_group(pk) == f"waconnect.session.{pk}"


# -- GET /sessions/{id}/qr?wait=S: the QR code itself, as soon as there is one ----------


async def test_the_qr_wait_answers_with_the_first_code_pushed(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event
) -> None:
    """Create, then one request: no long poll on the session, no QR fetch after it."""
    session, client = polled
    poll = asyncio.create_task(client.get(f"/api/v1/sessions/{session.pk}/qr?wait=25"))
    await waiting.wait()
    await doorbell.publish(await change(session, state="connecting", version=4), None)
    snapshot = await change(session, state="qr_required", qr_code="https://wa.me/x#1", version=5)
    await doorbell.publish(snapshot, None)
    response = await poll
    assert response.status_code == 200
    assert response.json()["code"] == "https://wa.me/x#1"
    assert response["Cache-Control"] == "no-store"


async def test_the_qr_wait_answers_at_once_when_a_code_is_shown(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event
) -> None:
    session, client = polled
    await change(session, state="qr_required", qr_code="https://wa.me/x#now", version=4)
    response = await client.get(f"/api/v1/sessions/{session.pk}/qr?wait=25")
    assert response.json()["code"] == "https://wa.me/x#now"
    assert not waiting.is_set()


async def test_the_qr_wait_runs_out_with_409(
    polled: tuple[WaSession, Poller], settings: Any
) -> None:
    session, client = polled
    settings.WACONNECT_API_MAX_WAIT = 0.2  # wait=25 is capped by the setting
    response = await client.get(f"/api/v1/sessions/{session.pk}/qr?wait=25")
    assert (response.status_code, response.json()["code"]) == (409, "no_qr")


async def test_the_qr_wait_ends_with_404_when_the_session_is_deleted(
    polled: tuple[WaSession, Poller], waiting: asyncio.Event
) -> None:
    session, client = polled
    poll = asyncio.create_task(client.get(f"/api/v1/sessions/{session.pk}/qr?wait=25"))
    await waiting.wait()
    await doorbell.publish_removed(session.pk)
    response = await poll
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_the_qr_wait_needs_the_read_scope_and_a_visible_session(
    api_user: Any, waiting: asyncio.Event
) -> None:
    @sync_to_async
    def tokens() -> tuple[WaSession, str, str]:
        session = WaSession.objects.create(name="hidden", state="connecting")
        other = WaSession.objects.create(name="other")
        _, write_only = create_token(user=api_user, name="w", scopes=["sessions:write"])
        _, limited = create_token(
            user=api_user, name="l", scopes=["sessions:read"], sessions=[other]
        )
        return session, write_only, limited

    session, write_only, limited = await tokens()
    no_scope = await Poller(write_only).get(f"/api/v1/sessions/{session.pk}/qr?wait=25")
    hidden = await Poller(limited).get(f"/api/v1/sessions/{session.pk}/qr?wait=25")
    assert no_scope.status_code == 403
    assert hidden.status_code == 404
    assert not waiting.is_set()
